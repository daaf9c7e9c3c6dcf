"""What differs between SFT, reward-model and DPO training: the model class, how rows
become batches, and the loss. The loop in ``trainer`` is shared."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stages.alignment import data
from stages.alignment.objectives import bradley_terry_loss, chosen_nll, dpo_loss, sequence_logprob, tied_head_nll


def _tensors(batch: dict[str, np.ndarray], device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


class SFTRecipe:
    """Next-token loss on response tokens only (prompt labels are -100)."""

    model_kind = "causal"

    def __init__(self, cfg):
        self.cfg = cfg

    def encode(self, rows, tokenizer, train: bool):
        items = data.encode_sft(rows, tokenizer, self.cfg.max_seq_len)
        return data.pack_sft(items, self.cfg.max_seq_len) if train and self.cfg.packing else items

    def prepare(self, model, items, device, micro):  # nothing precomputed
        return None

    def loss(self, engine, items, indices, pad_id, device, extra) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = _tensors(data.sft_batch([items[i] for i in indices], pad_id), device)
        out = engine(**batch)
        tokens = (batch["labels"][:, 1:] != data.IGNORE).sum()
        return out.loss, {"loss": out.loss.detach(), "weight": tokens.float()}


class RewardRecipe:
    """A scalar head on the SFT backbone, trained on pairs with the Bradley-Terry loss; with
    ``lm_coef`` > 0, plus the chosen answers' next-token loss through the tied LM head."""

    model_kind = "score"

    def __init__(self, cfg):
        self.cfg = cfg

    def encode(self, rows, tokenizer, train: bool):
        return data.encode_pairs(rows, tokenizer, self.cfg.max_seq_len)

    def prepare(self, model, items, device, micro):
        if self.cfg.lm_coef and not model.config.tie_word_embeddings:
            raise ValueError("reward.lm_coef needs a backbone whose LM head is its embedding (tie_word_embeddings); "
                             "this one has its own head, which the reward model does not load: set lm_coef: 0")
        return None

    def loss(self, engine, items, indices, pad_id, device, extra):
        batch = _tensors(data.pair_batch([items[i] for i in indices], pad_id), device)
        lm_coef = self.cfg.lm_coef
        out = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     output_hidden_states=bool(lm_coef))
        chosen, rejected = out.logits.squeeze(-1).float().chunk(2)
        loss = bradley_terry_loss(chosen, rejected)
        figures = {"accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).mean().detach(),
                   "weight": torch.tensor(float(len(indices)))}
        if lm_coef:
            n = len(indices)  # the chosen rows come first
            embedding = getattr(engine, "module", engine).get_input_embeddings().weight
            nll = tied_head_nll(out.hidden_states[-1][:n], embedding, batch["input_ids"][:n],
                                batch["response_mask"][:n])
            figures["bt_loss"], figures["chosen_nll"] = loss.detach(), nll.detach()
            loss = loss + lm_coef * nll
        return loss, {"loss": loss.detach(), **figures}


class DPORecipe:
    """DPO against the frozen starting model, whose log-probs are computed once up front."""

    model_kind = "causal"

    def __init__(self, cfg):
        self.cfg = cfg

    def encode(self, rows, tokenizer, train: bool):
        return data.encode_pairs(rows, tokenizer, self.cfg.max_seq_len)

    @torch.no_grad()
    def prepare(self, model, items, device, micro) -> np.ndarray:
        """Reference log-probs (chosen, rejected) of every pair, from the model before any update."""
        model.eval()
        out = np.zeros((len(items), 2), dtype=np.float64)
        pad = model.config.pad_token_id
        for start in range(0, len(items), micro * 2):
            chunk = list(range(start, min(len(items), start + micro * 2)))
            batch = _tensors(data.pair_batch([items[i] for i in chunk], pad), device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logp = sequence_logprob(logits, batch["input_ids"], batch["response_mask"]).double().cpu().numpy()
            out[chunk, 0], out[chunk, 1] = logp[:len(chunk)], logp[len(chunk):]
        model.train()
        return out

    def loss(self, engine, items, indices, pad_id, device, extra):
        batch = _tensors(data.pair_batch([items[i] for i in indices], pad_id), device)
        logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = sequence_logprob(logits, batch["input_ids"], batch["response_mask"])
        chosen, rejected = logp.chunk(2)
        ref = torch.from_numpy(extra[np.asarray(indices)]).to(device=device, dtype=chosen.dtype)
        loss, margin = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], self.cfg.beta)
        figures = {"accuracy": (margin > 0).float().mean(), "margin": margin.mean(),
                   "weight": torch.tensor(float(len(indices)))}
        if self.cfg.rpo_alpha:
            nll = chosen_nll(chosen, batch["response_mask"][:, 1:].sum(-1).chunk(2)[0].to(chosen.dtype))
            figures["dpo_loss"], figures["chosen_nll"] = loss.detach(), nll.detach()
            loss = loss + self.cfg.rpo_alpha * nll
        return loss, {"loss": loss.detach(), **figures}


RECIPES: dict[str, Any] = {"sft": SFTRecipe, "reward": RewardRecipe, "dpo": DPORecipe}
