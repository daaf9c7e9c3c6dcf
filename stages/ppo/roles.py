"""The four PPO roles, each a Ray actor holding one model (OpenRLHF's layout): the policy
(generates rollouts and is trained), the critic (per-token values, trained), the frozen
reference (SFT) and the frozen reward model. They exchange padded numpy batches:
``input_ids``/``attention_mask`` [B, T] and ``action_mask`` [B, T-1], where index i
stands for the token at position i+1 (the response tokens)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages.alignment import lora
from stages.core import storage
from stages.alignment.objectives import k3_kl, masked_mean, policy_loss, value_loss


def _threads(num_cpus: float) -> int:
    threads = max(1, int(num_cpus))
    torch.set_num_threads(threads)
    return threads


def _t(array: np.ndarray) -> torch.Tensor:
    """A tensor of its own: arrays from Ray's object store are read-only views."""
    return torch.from_numpy(np.array(array))


def _inputs(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {"input_ids": _t(batch["input_ids"]), "attention_mask": _t(batch["attention_mask"])}


def answer_logits(model, inputs: dict[str, torch.Tensor], action_mask: torch.Tensor) -> torch.Tensor:
    """Logits at the answer positions only, [N, vocab]: the LM head (vocab x hidden, most of
    a small model's FLOPs) runs on the few answer tokens, not on every prompt token."""
    core = model.get_base_model() if lora.is_adapted(model) else model  # a LoRA model's layers carry its adapters
    hidden = core.model(**inputs).last_hidden_state[:, :-1]
    return core.lm_head(hidden[action_mask.bool()]).float()


def answer_logprobs(model, inputs: dict[str, torch.Tensor], action_mask: torch.Tensor, temperature: float,
                    with_entropy: bool = False):
    """log p(token t+1) at every answer position of ``action_mask`` [B, T-1] (0 elsewhere),
    and optionally the mean entropy over those positions."""
    logits = answer_logits(model, inputs, action_mask) / temperature
    logp = torch.log_softmax(logits, dim=-1)
    targets = inputs["input_ids"][:, 1:][action_mask.bool()]
    out = torch.zeros(action_mask.shape, dtype=logp.dtype)
    out[action_mask.bool()] = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
    if not with_entropy:
        return out
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1).mean()
    return out, entropy


class PolicyRole:
    """SFT weights, trained by PPO; it also generates the rollouts (KV-cache ``generate``)."""

    def __init__(self, model_dir: str, *, num_cpus: float, lr: float, grad_clip: float, temperature: float, seed: int,
                 rollout_engine: str = "hf", lora_settings: dict | None = None):
        from stages.alignment.generate import load_policy

        self.threads = _threads(num_cpus)
        torch.manual_seed(seed)
        model_dir = str(storage.fetched(model_dir))  # the driver's, fetched when it is on object storage
        self.model, self.tokenizer = load_policy(Path(model_dir))
        if lora_settings is not None:  # only the adapter trains; adapters off, the model is its own reference
            self.model = lora.wrap(self.model, lora.LoraSettings(**lora_settings), "causal")
        self.rollouts = None  # vLLM, when it generates: it holds the weights of the last sync
        self.synced = True
        if rollout_engine == "vllm":
            from stages.ppo.vllm_rollouts import VLLMRollouts

            self.rollouts = VLLMRollouts(Path(model_dir), self.tokenizer, seed=seed)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=lr,
                                           weight_decay=0.0, foreach=False)
        self.grad_clip = grad_clip
        self.temperature = temperature
        self.frozen = None  # the starting weights, for the anchor term (see train_step)

    def generate(self, prompts: list[str], *, max_new_tokens: int, batch_size: int, do_sample: bool, seed: int,
                 top_p: float = 1.0, temperature: float | None = None) -> list:
        from stages.alignment.generate import generate

        self.model.eval()
        if self.rollouts is not None:
            if not self.synced:
                self.rollouts.load_weights(lora.plain_state_dict(self.model))
                self.synced = True
            return self.rollouts.generate(prompts, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                          temperature=temperature or self.temperature, top_p=top_p, seed=seed)
        return generate(self.model, self.tokenizer, prompts, max_new_tokens, batch_size, do_sample=do_sample,
                        temperature=temperature or self.temperature, top_p=top_p, seed=seed)

    @torch.no_grad()
    def logprobs(self, batch: dict[str, np.ndarray], temperature: float | None = None) -> np.ndarray:
        self.model.eval()
        return answer_logprobs(self.model, _inputs(batch), _t(batch["action_mask"]),
                               temperature or self.temperature).numpy()

    @torch.no_grad()
    def reference_logprobs(self, batch: dict[str, np.ndarray], temperature: float | None = None) -> np.ndarray:
        """The reference's log-probs when the policy is a LoRA model: the same weights with the adapters off."""
        self.model.eval()
        with lora.reference(self.model):
            return answer_logprobs(self.model, _inputs(batch), _t(batch["action_mask"]),
                                   temperature or self.temperature).numpy()

    def train_step(self, batch: dict[str, np.ndarray], clip: float, anchor: dict[str, np.ndarray] | None = None,
                   anchor_coef: float = 0.0, kl_coef: float = 0.0) -> dict[str, float]:
        """One clipped-surrogate step on ``batch`` (with ``kl_coef``: plus the k3 KL to ``ref_logprobs`` in the
        loss, GRPO's form; PPO puts its KL into the rewards instead)."""
        self.model.train()
        inputs = _inputs(batch)
        mask = _t(batch["action_mask"])
        logprobs, entropy = answer_logprobs(self.model, inputs, mask, self.temperature, with_entropy=True)
        loss, clip_frac, approx_kl = policy_loss(logprobs, _t(batch["old_logprobs"]),
                                                 _t(batch["advantages"]), mask, clip)
        out = {"policy_loss": float(loss.detach()), "ppo_clip_ratio": float(clip_frac), "ppo_kl": float(approx_kl),
               "entropy": float(entropy)}
        if kl_coef > 0:
            kl = masked_mean(k3_kl(logprobs, _t(batch["ref_logprobs"])), mask)
            loss = loss + kl_coef * kl
            out["kl_loss"] = float(kl.detach())
        if anchor is not None and anchor_coef > 0:
            anchor_kl = self._anchor_kl(anchor)
            loss = loss + anchor_coef * anchor_kl
            out["anchor_kl"] = float(anchor_kl.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        out["policy_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], self.grad_clip or float("inf")))
        self.optimizer.step()
        self.synced = False  # vLLM gets the new weights before it generates again
        return out

    def _anchor_kl(self, anchor: dict[str, np.ndarray]) -> torch.Tensor:
        """KL(starting model || policy) per answer token of teacher-forced SFT examples, over the
        whole vocabulary. The starting weights stay in this actor (a frozen copy, the model's
        size) rather than in the reference actor: shipping full-vocabulary distributions
        between actors every mini-batch would cost more than the copy."""
        import copy

        import torch.nn.functional as F

        if self.frozen is None:
            self.frozen = copy.deepcopy(self.model).eval().requires_grad_(False)
        inputs, mask = _inputs(anchor), _t(anchor["action_mask"])
        logits = answer_logits(self.model, inputs, mask)
        with torch.no_grad():
            target = torch.log_softmax(answer_logits(self.frozen, inputs, mask), dim=-1)
        return F.kl_div(torch.log_softmax(logits, dim=-1), target, log_target=True, reduction="batchmean")

    def parameter_counts(self) -> dict[str, float]:
        trained, total = lora.trainable(self.model)
        return {"trainable_parameters": float(trained), "parameters": float(total)}

    def adapter_files(self) -> dict[str, bytes]:
        """A LoRA policy's adapter as peft saves it (file name -> content; empty for full fine-tuning)."""
        import tempfile

        if not lora.is_adapted(self.model):
            return {}
        with tempfile.TemporaryDirectory() as folder:
            self.model.save_pretrained(folder)
            return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The plain model's weights (a LoRA policy's adapters folded in)."""
        return {k: v.clone() for k, v in lora.plain_state_dict(self.model).items()}


class ReferenceRole:
    """The frozen SFT model: log-probs for the per-token KL penalty."""

    def __init__(self, model_dir: str, *, num_cpus: float, temperature: float):
        from transformers import AutoModelForCausalLM

        _threads(num_cpus)
        self.model = AutoModelForCausalLM.from_pretrained(storage.fetched(model_dir), attn_implementation="sdpa",
                                                          dtype="auto").eval()
        self.temperature = temperature

    @torch.no_grad()
    def logprobs(self, batch: dict[str, np.ndarray], temperature: float | None = None) -> np.ndarray:
        return answer_logprobs(self.model, _inputs(batch), _t(batch["action_mask"]),
                               temperature or self.temperature).numpy()


class RewardRole:
    """The frozen reward model: one score per answer, read at its last token."""

    def __init__(self, model_dir: str, *, num_cpus: float):
        from stages.alignment.scoring import load_reward_model

        _threads(num_cpus)
        self.model, _ = load_reward_model(storage.fetched(model_dir))

    @torch.no_grad()
    def score(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        return self.model(**_inputs(batch)).logits.squeeze(-1).float().numpy()


class CriticRole:
    """Per-token values: a backbone plus a scalar head applied at every position (the
    reward model's, or SFT's with a fresh head), trained on GAE returns."""

    def __init__(self, model_dir: str, *, num_cpus: float, lr: float, grad_clip: float, pad_id: int, seed: int):
        from transformers import AutoModelForSequenceClassification

        _threads(num_cpus)
        torch.manual_seed(seed)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            storage.fetched(model_dir), num_labels=1, pad_token_id=pad_id, attn_implementation="sdpa", dtype="float32")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.0, foreach=False)
        self.grad_clip = grad_clip

    def _values(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        hidden = self.model.model(**_inputs(batch)).last_hidden_state
        return self.model.score(hidden).squeeze(-1)[:, :-1].float()  # value of the state before each token

    @torch.no_grad()
    def values(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        self.model.eval()
        return self._values(batch).numpy()

    def train_step(self, batch: dict[str, np.ndarray], clip: float) -> dict[str, float]:
        self.model.train()
        values = self._values(batch)
        loss = value_loss(values, _t(batch["old_values"]), _t(batch["returns"]),
                          _t(batch["action_mask"]), clip)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip or float("inf"))
        self.optimizer.step()
        return {"critic_loss": float(loss.detach())}
