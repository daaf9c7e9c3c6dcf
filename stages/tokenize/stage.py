"""tokenize on Ray: train (or take) a BPE tokenizer, then actors that hold it encode
shards in batches, split and weight documents, and pack them into ``.bin``/``.idx``
shards; the driver packs the shards' unfinished tails last, so only one row per split
is padded."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from stages.core import names, storage
from stages.core.contract import Dashboard, Figure, FunnelStep, Stage, StageContext, StageInput, StageResult
from stages.core.errors import StageError
from stages.core.ray_runtime import ensure_ray
from stages.core.shards import drop_repeated_ids, iter_shard, shard_input
from stages.core.tracking import register_artifact
from stages.tokenize import bpe
from stages.tokenize.config import TokenizeConfig
from stages.tokenize.mixture import copies, split_of, unit_hash
from stages.tokenize.packed import ShardHeader, token_dtype, write_shard
from stages.tokenize.packing import Packer, packing_efficiency

SPLITS = ("train", "val")
TOKENS_DIR = "tokens"
TOKENIZER_DIR = "tokenizer"


def registry_name(pipeline: str) -> str:
    return names.registered_model(pipeline, "tokenizer")


def write_rows(prefix: str | Path, packed, real_tokens: int, split: str, seq_len: int, meta: dict[str, Any]) -> int:
    """Write a packed split's whole rows as one ``.bin``/``.idx`` shard; returns the row count."""
    rows = packed.tokens.size // seq_len
    if rows:
        header = ShardHeader(dtype=meta["dtype"], vocab_size=meta["vocab_size"], seq_len=seq_len,
                             tokenizer_sha256=meta["digest"], num_sequences=rows,
                             num_documents=int(packed.doc_ends.size), real_tokens=real_tokens,
                             pad_id=meta["pad"], eos_id=meta["eos"], split=split)
        write_shard(prefix, packed.tokens, packed.doc_ends, header)
    return rows


class TokenizerActor:
    """Holds one tokenizer; encodes, splits, weights and packs one shard per call.

    Started before the tokenizer exists (its process start overlaps BPE training in the
    driver), then handed the tokenizer with ``load``.
    """

    def __init__(self, cfg: TokenizeConfig, seed: int):
        threads = str(max(1, math.floor(cfg.actor_cpus)))
        os.environ["RAYON_NUM_THREADS"] = threads  # before tokenizers starts its thread pool
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        import tokenizers  # noqa: F401 - the import cost is paid while the driver trains BPE

        self.cfg, self.seed = cfg, seed
        self.loaded: str | None = None

    def load(self, tokenizer_dir: str, meta: dict[str, Any]) -> None:
        if self.loaded != tokenizer_dir:  # also after a restart, which reruns only __init__
            # fetched when it is on object storage: this node may share no disk with the driver
            self.tokenizer = bpe.load_fast(storage.fetched(tokenizer_dir))
            self.encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
            self.meta, self.loaded = meta, tokenizer_dir

    def run_shard(self, shard: str, index: int, out_dir: str, tokenizer_dir: str,
                  meta: dict[str, Any]) -> dict[str, Any]:
        self.load(tokenizer_dir, meta)
        cfg = self.cfg
        packers = {split: Packer(cfg.seq_len) for split in SPLITS}
        repeats: list[np.ndarray] = []  # extra copies of up-weighted docs, packed after the shard's own
        stats: dict[str, Any] = {"docs": Counter(), "chars": Counter(), "tokens_by_source": Counter(),
                                 "text_tokens": Counter(),
                                 "tokens": Counter(), "unigram_val": np.zeros(meta["vocab_size"], np.int64),
                                 "dropped_by_mixture": 0}
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            encoded = self.encode([d["text"] for d in batch], add_special_tokens=False)
            for doc, enc in zip(batch, encoded):
                ids = np.fromiter(enc.ids, dtype=np.int64, count=len(enc.ids))
                tokens = np.append(ids, meta["eos"])
                split = split_of(self.seed, doc["id"], cfg.validation_fraction)
                source = str(doc.get("source") or "unknown")
                stats["docs"][split] += 1
                stats["chars"][split] += len(doc["text"])
                stats["text_tokens"][split] += ids.size
                if split == "val":
                    packers["val"].add(tokens)
                    stats["tokens"]["val"] += tokens.size
                    stats["unigram_val"] += np.bincount(tokens, minlength=meta["vocab_size"])
                    continue
                n = copies(self.seed, doc["id"], cfg.mixture.get(source, 1.0))
                if n == 0:
                    stats["dropped_by_mixture"] += 1
                    continue
                packers["train"].add(tokens)
                repeats.extend([tokens] * (n - 1))
                stats["tokens"]["train"] += tokens.size * n
                stats["tokens_by_source"][source] += tokens.size * n
            batch.clear()

        for doc in iter_shard(shard):
            if not isinstance(doc.get("text"), str):
                continue
            batch.append(doc)
            if len(batch) >= cfg.batch_docs:
                flush()
        if batch:
            flush()
        for tokens in repeats:
            packers["train"].add(tokens)

        tails = {}
        for split, packer in packers.items():
            packed = packer.finish()
            stats[f"rows.{split}"] = write_rows(storage.join(out_dir, f"{split}-{index:05d}"), packed,
                                                int(packed.tokens.size), split, cfg.seq_len, meta)
            tails[split] = (packed.tail.astype(np.uint32), packed.tail_doc_ends)
        stats["tails"] = tails
        return stats


class TokenizeStage(Stage[TokenizeConfig]):
    name = "tokenize"
    config_model = TokenizeConfig
    summary = "Train a BPE tokenizer, tokenize and pack sequences (train/val split, mixture weights)."
    figures = (Figure("train_tokens", key=True), Figure("packing_efficiency", "higher", key=True),
               Figure("tokens_per_s", "higher"), Figure("time.*", "lower"), Figure("quarantined", "lower"),
               Figure("quarantined.*", "lower"), Figure("token_share.*"))
    model_kinds = ("tokenizer",)
    dashboard = Dashboard(quarantines=True,
                          funnel=FunnelStep(docs=("train_docs", "val_docs"), tokens="train_tokens"))
    # an imported base model's tokenizer when import_model runs (pipeline.base: import); else trained here
    inputs = {"docs": "quality:docs", "tokenizer": "import_model:tokenizer?"}

    def config_inputs(self, config: TokenizeConfig, seed: int) -> dict[str, StageInput]:
        if config.tokenizer.path is None:
            return {}
        from stages.core.runner import input_from_path

        return {"tokenizer": input_from_path("tokenizer", Path(config.tokenizer.path))}

    def run(self, ctx: StageContext[TokenizeConfig]) -> StageResult:
        import ray
        from ray.util import ActorPool

        from stages.core.progress import stage_progress

        cfg = ctx.config
        out = ctx.output_dir
        work = ctx.work_location()
        tokens_dir = out / TOKENS_DIR
        tokens_dir.mkdir(parents=True)
        timings: dict[str, float] = {}
        sharded = shard_input(ctx.inputs["docs"].path, work, cfg.shard_docs, cfg.max_doc_chars,
                              out / "quarantined.jsonl")
        if not sharded.shards:
            raise StageError("tokenize: the input has no documents to tokenize")

        ensure_ray(ctx.ray_address, ctx.ray_num_cpus)
        sharded = drop_repeated_ids(sharded, work, out / "quarantined.jsonl",
                                    {"num_cpus": cfg.actor_cpus, "max_retries": 3}, "tokenize")
        shards = [str(s) for s in sharded.shards]
        cpus = ray.available_resources().get("CPU", 1.0)
        n_actors = cfg.num_actors or max(1, min(len(shards), int(cpus // cfg.actor_cpus)))
        actor_cls = ray.remote(TokenizerActor).options(num_cpus=cfg.actor_cpus, max_restarts=1, max_task_retries=2)
        actors = [actor_cls.remote(cfg, ctx.seed) for _ in range(n_actors)]

        t0 = time.time()
        tok_dir = out / TOKENIZER_DIR
        if "tokenizer" in ctx.inputs:
            shutil.copytree(ctx.inputs["tokenizer"].path, tok_dir)
            tokenizer_source = f"given: {ctx.inputs['tokenizer'].path}"
        else:
            self._train_tokenizer(cfg, ctx.seed, shards, tok_dir, ctx)
            tokenizer_source = "trained in this run"
        timings["tokenizer_s"] = time.time() - t0
        ids = bpe.special_ids(tok_dir)
        meta = {**ids, "digest": bpe.tokenizer_digest(tok_dir), "dtype": token_dtype(ids["vocab_size"]).str}

        t0 = time.time()
        # the actors read the tokenizer and write their token shards where every node reaches
        tokenizer_at = ctx.for_workers(tok_dir, TOKENIZER_DIR)
        tokens_at = str(tokens_dir) if ctx.storage is None else storage.join(work, TOKENS_DIR)
        ray.get([actor.load.remote(tokenizer_at, meta) for actor in actors])
        pool = ActorPool(actors)
        for i, shard in enumerate(shards):
            pool.submit(lambda actor, args: actor.run_shard.remote(*args), (shard, i, tokens_at, tokenizer_at, meta))
        results = []
        with stage_progress(f"tokenize: {n_actors} actors", total=len(shards), unit="shards") as advance:
            while pool.has_next():
                results.append(pool.get_next())  # submission order: deterministic tails
                advance(1)
        timings["tokenize_s"] = time.time() - t0
        for actor in actors:
            ray.kill(actor)
        if tokens_at != str(tokens_dir):
            for item in storage.list_files(tokens_at):
                storage.move_to_local(item, tokens_dir / storage.name_of(item))

        totals = _merge(results)
        for split in SPLITS:
            packer = Packer(cfg.seq_len)
            for r in results:
                packer.add_run(*r["tails"][split])
            packed = packer.finish(pad_to_full_row=ids["pad"])
            totals["rows"][split] += write_rows(tokens_dir / f"{split}-tail", packed, packer.size, split,
                                                cfg.seq_len, meta)
        storage.remove_tree(work)
        if totals["rows"]["train"] == 0:
            raise StageError(f"tokenize: no training tokens (validation_fraction={cfg.validation_fraction}, "
                             f"mixture={cfg.mixture})")

        metrics, details = self._figures(cfg, totals, timings, sharded.documents, tokenizer_source, ids)
        metrics.update(sharded.quarantine_metrics())
        details["tokenizer_sha256"] = meta["digest"]
        (tokens_dir / "stats.json").write_text(json.dumps(details, indent=2, sort_keys=True))
        ctx.log.info("tokenize: %d docs -> %d train + %d val tokens (%.2f chars/token), packing %.4f, "
                     "%.0f tokens/s, validation unigram entropy %.3f nats",
                     sharded.documents, totals["tokens"]["train"], totals["tokens"]["val"],
                     metrics["chars_per_token"], metrics["packing_efficiency"], metrics["tokens_per_s"],
                     metrics["val_unigram_entropy"])
        return StageResult(
            counts={"in": sharded.documents + sharded.quarantined, "train_docs": totals["docs"]["train"],
                    "val_docs": totals["docs"]["val"], "quarantined": sharded.quarantined},
            metrics=metrics, details=details,
            outputs={"tokens": f"{TOKENS_DIR}/", "tokenizer": f"{TOKENIZER_DIR}/",
                     "quarantined": "quarantined.jsonl"},
        )

    def _train_tokenizer(self, cfg: TokenizeConfig, seed: int, shards: list[str], folder: Path,
                         ctx: StageContext) -> None:
        """BPE on a seeded sample (about ``train_mb``) of training-split text, streamed from the shards."""
        total = sum(storage.size(s) for s in shards)
        keep = min(1.0, cfg.tokenizer.train_mb * 1e6 / max(total, 1))

        def texts():
            for shard in shards:
                for doc in iter_shard(shard):
                    text = doc.get("text")
                    if (isinstance(text, str) and split_of(seed, doc["id"], cfg.validation_fraction) == "train"
                            and unit_hash(seed, "bpe", doc["id"]) < keep):
                        yield text

        tokenizer = bpe.train_bpe(texts(), cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
        bpe.save_hf_folder(tokenizer, folder, cfg.seq_len)
        ctx.log.info("tokenize: trained a %d-token byte-level BPE on %.0f%% of the training text",
                     tokenizer.get_vocab_size(), keep * 100)

    @staticmethod
    def _figures(cfg, totals, timings, documents, tokenizer_source, ids):
        train_tokens, val_tokens = totals["tokens"]["train"], totals["tokens"]["val"]
        real = train_tokens + val_tokens
        rows = totals["rows"]["train"] + totals["rows"]["val"]
        chars = totals["chars"]["train"] + totals["chars"]["val"]
        counts = totals["unigram_val"]
        p = counts[counts > 0] / max(counts.sum(), 1)
        entropy = float(-(p * np.log(p)).sum()) if p.size else 0.0
        share = {s: n / max(train_tokens, 1) for s, n in sorted(totals["tokens_by_source"].items())}
        # tokens/s over the whole actor phase (read, encode, pack, write), not the encode call alone
        metrics = {
            "docs_in": documents, "train_docs": totals["docs"]["train"], "val_docs": totals["docs"]["val"],
            "train_tokens": train_tokens, "val_tokens": val_tokens, "train_sequences": totals["rows"]["train"],
            "val_sequences": totals["rows"]["val"],
            "chars_per_token": chars / max(sum(totals["text_tokens"].values()), 1),
            "packing_efficiency": packing_efficiency(real, rows, cfg.seq_len),
            "tokens_per_s": real / max(timings["tokenize_s"], 1e-9),
            "val_unigram_entropy": entropy, "vocab_size": ids["vocab_size"],
            "dropped_by_mixture": totals["dropped_by_mixture"],
            **{f"time.{k}": round(v, 3) for k, v in timings.items()},
            **{f"token_share.{s}": v for s, v in share.items()},
        }
        details = {"tokenizer": tokenizer_source, "seq_len": cfg.seq_len, "token_share": share,
                   "tokens_by_source": dict(totals["tokens_by_source"]),
                   "val_unigram_entropy_nats": entropy, "packing_efficiency": metrics["packing_efficiency"],
                   "docs": dict(totals["docs"]), "tokens": dict(totals["tokens"]), "sequences": dict(totals["rows"]),
                   "pad_id": ids["pad"], "eos_id": ids["eos"], "vocab_size": ids["vocab_size"]}
        return metrics, details

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        name = registry_name(pipeline_name)
        version = register_artifact(tracker, name, run_id, TOKENIZER_DIR, "latest")
        return {names.TAG_REGISTERED_TOKENIZER: f"{name}/{version}"}


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {"docs": Counter(), "chars": Counter(), "tokens": Counter(), "text_tokens": Counter(),
                              "tokens_by_source": Counter(), "rows": Counter(), "dropped_by_mixture": 0,
                              "unigram_val": None}
    for r in results:
        for key in ("docs", "chars", "tokens", "tokens_by_source", "text_tokens"):
            totals[key].update(r[key])
        for split in SPLITS:
            totals["rows"][split] += r[f"rows.{split}"]
        totals["dropped_by_mixture"] += r["dropped_by_mixture"]
        totals["unigram_val"] = r["unigram_val"] if totals["unigram_val"] is None else totals["unigram_val"] + r["unigram_val"]
    return totals
