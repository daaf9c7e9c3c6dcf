"""quality on Ray: (T) each shard's labeled examples written to work files by a Ray task, and
the classifier trained by one more task on them, single-threaded and seeded (the driver sees only
counts); (Q) every shard masked, language-tagged, filtered and scored by a Ray task that writes its
kept/removed parts. Tasks share nothing with the driver but the work location (``stages.core.storage``):
the classifier goes there, and the driver copies it into the outputs."""

from __future__ import annotations

import functools
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from stages.core import names, storage
from stages.core.contract import Dashboard, Figure, FunnelStep, Stage, StageContext, StageInput, StageResult
from stages.core.digests import sha256_file
from stages.core.document_shards import ShardedDocuments
from stages.core.docio import append_jsonl
from stages.core.errors import StageError
from stages.core.ray_runtime import run_tasks
from stages.core.shards import concatenate, iter_shard, read_shard
from stages.core.tracking import find_registered, register_artifact
from stages.quality import classifier as clf
from stages.quality import langid
from stages.quality.config import ClassifierConfig, QualityConfig
from stages.quality.core import SCORE_BINS, ShardStats, funnel_steps, process
from stages.quality.plots import write_plots


TRAIN_PART = "classifier-train-{:05d}.txt"
TEST_PART = "classifier-test-{:05d}.jsonl"


def registry_name(pipeline: str) -> str:
    return names.registered_model(pipeline, "quality")


def task_examples(shard: str, index: int, work: str, cfg: QualityConfig) -> dict[str, int]:
    """Write the shard's labeled documents as classifier lines (training lines, and held-out
    [label, line] rows); returns how many of each split and label."""
    counts: Counter = Counter()
    with storage.open_output(storage.join(work, TRAIN_PART.format(index))) as train, \
            storage.open_output(storage.join(work, TEST_PART.format(index))) as test:
        for doc in iter_shard(shard):
            labeled = clf.label_of(doc, cfg.classifier.rules)
            if labeled:
                label, split = labeled
                line = clf.as_line(doc["text"], cfg.classifier.max_chars)
                counts[f"{split}.{label}"] += 1
                if split == "train":
                    train.write(clf.training_line(label, line))
                else:
                    append_jsonl(test, [label, line])
    return dict(counts)


def task_train_classifier(work: str, shards: int, cfg: ClassifierConfig, model_location: str) -> dict[str, Any]:
    """Train on every shard's training lines in shard order (fastText reads a local file, so they are
    gathered into one on this worker), put the model at ``model_location``, and score it on the held-out
    rows."""
    with tempfile.TemporaryDirectory(prefix="lmforge-classifier-") as scratch:
        train_path = Path(scratch) / "classifier-train.txt"
        concatenate([storage.join(work, TRAIN_PART.format(i)) for i in range(shards)], train_path)
        model = clf.train_file(train_path, cfg, Path(scratch) / clf.MODEL_FILE)
        storage.upload(Path(scratch) / clf.MODEL_FILE, model_location)
    labels, lines = [], []
    for i in range(shards):
        for label, line in iter_shard(storage.join(work, TEST_PART.format(i))):
            labels.append(1 if label == "hq" else 0)
            lines.append(line)
        storage.remove(storage.join(work, TEST_PART.format(i)))
    return clf.evaluate(np.array(labels), clf.scores(model, lines))


@functools.lru_cache(maxsize=1)
def _classifier_model(location: str):
    """The classifier at a work location, loaded once per worker process (fetched first if it is remote)."""
    if not storage.is_remote(location):
        return clf.load(Path(location))
    local = Path(tempfile.mkdtemp(prefix="lmforge-classifier-")) / clf.MODEL_FILE
    return clf.load(storage.download(location, local))


def quality_shard(shard: str, index: int, work: str, cfg: QualityConfig, model_location: str | None) -> ShardStats:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model = _classifier_model(model_location) if model_location else None
    kept, removed, stats = process(read_shard(shard), cfg, model)
    for name, records in (("kept", kept), ("removed", removed)):
        with storage.open_output(storage.join(work, f"{name}-{index:05d}.jsonl")) as handle:
            for record in records:
                append_jsonl(handle, record)
    if cfg.output_format == "parquet" and kept:
        from stages.core.docio import write_parquet

        write_parquet(storage.join(work, f"kept-{index:05d}.parquet"), kept)
    return stats


class QualityStage(Stage[QualityConfig]):
    name = "quality"
    config_model = QualityConfig
    summary = "Heuristic filters, language ID, PII masking and a fastText quality classifier."
    figures = (Figure("chars_kept", key=True), Figure("chars_in"), Figure("docs_per_s", "higher"),
               Figure("classifier.auc", "higher"), Figure("classifier.f1", "higher"),
               Figure("classifier.precision", "higher"), Figure("classifier.recall", "higher"),
               Figure("classifier.model_mb", "lower"), Figure("time.*", "lower"), Figure("funnel.*"),
               Figure("lang.*"), Figure("pii.*"))
    model_kinds = ("quality",)
    dashboard = Dashboard(quarantines=True, funnel=FunnelStep(mb="chars_kept", mb_per_unit=1e-6),
                          removed={"funnel.*.removed": "*"})
    inputs = {"docs": "dedup:docs"}
    optional_inputs = frozenset({"classifier"})
    document_stage = True

    def config_inputs(self, config: QualityConfig, seed: int) -> dict[str, StageInput]:
        """The language-ID model is an input: its digest is in the cache key and the manifest."""
        path = langid.model_path(config.langid_model)
        return {"langid_model": StageInput("langid_model", path, sha256_file(path))}

    def run(self, ctx: StageContext[QualityConfig]) -> StageResult:
        # the tasks load the file the driver resolved (a worker's data dir need not be this one's)
        cfg = ctx.config.model_copy(update={"langid_model": str(ctx.inputs["langid_model"].path)})
        out = ctx.output_dir
        docs = ShardedDocuments.open(ctx, shard_docs=cfg.shard_docs, max_doc_chars=cfg.max_doc_chars,
                                     task_cpus=cfg.task_cpus)
        sharded = docs.sharded
        metrics: dict[str, float] = {}
        details: dict[str, Any] = {}
        model_path, source = self._classifier(ctx, cfg, docs, metrics, details)
        model_location = None
        if model_path is not None:  # the tasks read it from the work location, which every node reaches
            model_location = storage.join(docs.work, clf.MODEL_FILE)
            if not storage.exists(model_location):  # given or registered (one trained here is there already)
                storage.upload(model_path, model_location)
        if model_path is None:
            message = ("quality: no quality classifier (none registered as "
                       f"{registry_name(ctx.pipeline_name)}@latest, none given with --input classifier=PATH): "
                       "running language ID and heuristics only")
            ctx.log.warning(message)
            details["classifier"] = "none: " + message
        else:
            details["classifier"] = source

        started = time.time()
        stats = ShardStats()
        for shard_stats in docs.map("filtering", quality_shard, lambda i: (docs.work, cfg, model_location)):
            stats.merge(shard_stats)
        metrics["time.filter_s"] = time.time() - started
        metrics["docs_per_s"] = sharded.documents / max(metrics["time.filter_s"], 1e-9)
        docs.finish(cfg.output_format)

        removed = sum(stats.removed.values())
        kept = sharded.documents - removed
        steps = funnel_steps(cfg, model_path is not None)
        funnel = []
        for step in steps:
            funnel.append({"step": step, "docs_in": stats.docs_in[step], "chars_in": stats.chars_in[step],
                           "docs_removed": stats.removed[step], "chars_removed": stats.removed_chars[step]})
            metrics[f"funnel.{step}.docs_in"] = stats.docs_in[step]
            metrics[f"funnel.{step}.removed"] = stats.removed[step]
            metrics[f"funnel.{step}.chars_removed"] = stats.removed_chars[step]
        for key, value in stats.pii.items():
            metrics[f"pii.{key}"] = value
        metrics["pii.emails"] = sum(v for k, v in stats.pii.items() if k.endswith(".emails"))
        metrics["pii.ips"] = sum(v for k, v in stats.pii.items() if k.endswith(".ips"))
        for lang, n in stats.langs.most_common(30):
            metrics[f"lang.{lang}"] = n
        metrics.update(sharded.quarantine_metrics())
        metrics.update({"docs_in": sharded.documents, "kept": kept, "removed": removed,
                        "chars_in": stats.chars_in["language"],
                        "chars_kept": stats.chars_in["language"] - sum(stats.removed_chars.values())})
        write_plots(out, funnel, stats.score_hist, stats.kept_score_hist, SCORE_BINS)
        details.update({"funnel": funnel, "languages": dict(stats.langs.most_common()),
                        "score_histogram": {"bins": SCORE_BINS.tolist(), "all": stats.score_hist.tolist(),
                                            "kept": stats.kept_score_hist.tolist()}})
        ctx.log.info("quality: %d in -> %d kept, %d removed (%s), %d quarantined; PII: %d e-mails, %d IPs",
                     sharded.documents, kept, removed, dict(stats.removed.most_common(6)), sharded.quarantined,
                     metrics["pii.emails"], metrics["pii.ips"])
        outputs = {**docs.outputs(cfg.output_format), "plot": "quality.png"}
        if (out / clf.MODEL_FILE).exists():
            outputs["classifier"] = clf.MODEL_FILE
        return StageResult(counts=docs.counts(removed), metrics=metrics, details=details, outputs=outputs)

    def _classifier(self, ctx: StageContext, cfg: QualityConfig, docs: ShardedDocuments,
                    metrics: dict[str, float], details: dict[str, Any]) -> tuple[Path | None, str]:
        if "classifier" in ctx.inputs:
            path = ctx.inputs["classifier"].path
            path = path / clf.MODEL_FILE if path.is_dir() else path
            return path, f"given: {path}"
        mode = cfg.classifier.mode
        if mode == "auto":
            mode = "train" if ctx.tracker is not None else "registered"
        if mode == "none":
            return None, ""
        if mode == "registered":
            found = find_registered(registry_name(ctx.pipeline_name), "latest")
            if found is None:
                return None, ""
            path = found / clf.MODEL_FILE if found.is_dir() else found
            return path, f"registered: {registry_name(ctx.pipeline_name)}@latest"
        return self._train(ctx, cfg, docs, metrics, details), "trained in this run"

    def _train(self, ctx: StageContext, cfg: QualityConfig, docs: ShardedDocuments, metrics: dict[str, float],
               details: dict[str, Any]) -> Path:
        started = time.time()
        found: Counter = Counter()
        for part in docs.map("classifier examples", task_examples, lambda i: (docs.work, cfg)):
            found.update(part)
        counts = {f"{split}.{label}": found.get(f"{split}.{label}", 0)
                  for split in ("train", "test") for label in ("hq", "lq")}
        details["classifier_examples"] = counts
        short = {k: v for k, v in counts.items() if v < cfg.classifier.min_examples}
        if short:
            raise StageError(
                f"quality: too few labeled documents to train the classifier {short} (need "
                f"{cfg.classifier.min_examples} each; rules: quality.classifier.rules). Set "
                "quality.classifier.mode=none or registered, or give --input classifier=PATH")
        path = ctx.output_dir / clf.MODEL_FILE
        location = storage.join(docs.work, clf.MODEL_FILE)
        evaluation = run_tasks(f"{ctx.stage}: classifier", task_train_classifier,
                               [(docs.work, len(docs.shards), cfg.classifier, location)], docs.options)[0]
        storage.download(location, path)
        train_docs = counts["train.hq"] + counts["train.lq"]
        details["classifier_eval"] = evaluation
        metrics.update({f"classifier.{k}": v for k, v in evaluation.items()})
        metrics["classifier.train_docs"] = train_docs
        metrics["classifier.model_mb"] = path.stat().st_size / 1e6
        metrics["time.classifier_s"] = time.time() - started
        ctx.log.info("quality: classifier trained on %d docs; held-out (other sources) precision %.3f recall %.3f "
                     "AUC %.3f; %.1f MB", train_docs, evaluation["precision"], evaluation["recall"],
                     evaluation["auc"], metrics["classifier.model_mb"])
        return path

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        if "classifier" not in result.outputs or result.details.get("classifier") != "trained in this run":
            return {}
        version = register_artifact(tracker, registry_name(pipeline_name), run_id, clf.MODEL_FILE, "latest")
        return {names.TAG_REGISTERED_MODEL: f"{registry_name(pipeline_name)}/{version}"}


