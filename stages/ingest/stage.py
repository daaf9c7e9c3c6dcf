"""ingest on Ray: files are extracted by Ray tasks, each writing one output shard.

The driver only plans, schedules and sums small per-task stats; document text never
passes through it, so memory stays flat as the corpus grows.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from stages.core.contract import Stage, StageContext, StageInput, StageResult
from stages.core.docio import Quarantined, append_jsonl, write_parquet
from stages.core.progress import stage_progress
from stages.core.ray_runtime import ensure_ray
from stages.core.shards import concatenate
from stages.ingest.config import IngestConfig
from stages.ingest.extract import FileTask, extract
from stages.ingest.plan import plan_digest, plan_files

KEPT_DIR = "kept"
QUARANTINE_PARTS = "_quarantine"


def batch_tasks(tasks: list[FileTask], task_mb: float) -> list[list[FileTask]]:
    """Group files (in plan order) into batches of about ``task_mb`` raw MB."""
    batches: list[list[FileTask]] = []
    current: list[FileTask] = []
    size = 0
    for task in tasks:
        if current and size + task.size > task_mb * 1e6:
            batches.append(current)
            current, size = [], 0
        current.append(task)
        size += task.size
    if current:
        batches.append(current)
    return batches


def read_file(task: FileTask, max_bytes: int) -> bytes:
    if "://" in task.url:
        import fsspec

        with fsspec.open(task.url, "rb") as handle:
            return handle.read(max_bytes + 1)
    with open(task.url, "rb") as handle:
        return handle.read(max_bytes + 1)


def extract_batch(index: int, batch: list[FileTask], out_dir: str, output_format: str,
                  max_chars: int, max_file_bytes: int) -> dict[str, Any]:
    """Extract one batch into shard ``index``; return per-source stats (never the text)."""
    docs: list[dict[str, Any]] = []
    stats: dict[str, Counter] = defaultdict(Counter)
    quarantine_path = Path(out_dir) / QUARANTINE_PARTS / f"part-{index:05d}.jsonl"
    quarantine_path.parent.mkdir(parents=True, exist_ok=True)
    with open(quarantine_path, "w", encoding="utf-8") as quarantine:
        for task in batch:
            source_stats = stats[task.source]
            source_stats["files"] += 1
            source_stats["bytes_in"] += task.size
            try:
                data = read_file(task, max_file_bytes)
            except OSError as exc:
                items: Any = [Quarantined("unreadable", f"cannot read: {exc.strerror or exc}", task.url,
                                          id=f"{task.source}:{task.relpath}", source=task.source)]
            else:
                if len(data) > max_file_bytes:
                    items = [Quarantined("too_large", f"file larger than {max_file_bytes} bytes", task.url,
                                         id=f"{task.source}:{task.relpath}", source=task.source)]
                else:
                    items = extract(task, data, max_chars)
            for item in items:
                if isinstance(item, Quarantined):
                    source_stats["quarantined"] += 1
                    source_stats[f"quarantined.{item.reason}"] += 1
                    append_jsonl(quarantine, item.to_record())
                else:
                    source_stats["docs"] += 1
                    source_stats["chars"] += len(item["text"])
                    source_stats["text_bytes"] += len(item["text"].encode("utf-8"))
                    docs.append(item)
    if docs:
        if output_format == "parquet":
            write_parquet(Path(out_dir) / KEPT_DIR / f"part-{index:05d}.parquet", docs)
        else:
            with open(Path(out_dir) / KEPT_DIR / f"part-{index:05d}.jsonl", "w", encoding="utf-8") as handle:
                for doc in docs:
                    append_jsonl(handle, doc)
    return {source: dict(counter) for source, counter in stats.items()}


class IngestStage(Stage):
    name = "ingest"
    config_model = IngestConfig
    document_stage = True

    def __init__(self) -> None:
        self._plans: dict[tuple[str, int], list[FileTask]] = {}

    def plan(self, config: IngestConfig, seed: int) -> list[FileTask]:
        key = (config.model_dump_json(), seed)
        if key not in self._plans:
            self._plans[key] = plan_files(config, seed)
        return self._plans[key]

    def config_inputs(self, config: IngestConfig, seed: int) -> dict[str, StageInput]:
        tasks = self.plan(config, seed)
        label = (config.data_dir or "demo-corpus") if config.sources else ",".join(config.paths)
        return {"sources": StageInput("sources", Path(label), plan_digest(tasks))}

    def standalone_inputs(self, config: IngestConfig, paths: dict[str, list[str]]):
        """``--input PATH`` names the user's corpus; it replaces the demo sources."""
        from stages.core.errors import ConfigError

        unknown = sorted(set(paths) - {"docs"})
        if unknown:
            raise ConfigError(f"ingest takes plain --input PATH (its corpus), not named inputs {unknown}")
        if paths.get("docs"):
            config = config.model_copy(update={"paths": paths["docs"], "sources": []})
        return config, {}

    def run(self, ctx: StageContext) -> StageResult:
        import ray

        config: IngestConfig = ctx.config  # type: ignore[assignment]
        tasks = self.plan(config, ctx.seed)
        batches = batch_tasks(tasks, config.task_mb)
        out = ctx.output_dir
        (out / KEPT_DIR).mkdir()
        ensure_ray(ctx.ray_address, ctx.ray_num_cpus)
        remote = ray.remote(extract_batch).options(num_cpus=config.task_cpus, max_retries=2)
        total_bytes = sum(task.size for task in tasks)
        ctx.log.info("ingest: %d files (%.1f MB) from %d sources in %d Ray tasks",
                     len(tasks), total_bytes / 1e6, len({t.source for t in tasks}), len(batches))
        started = time.time()
        pending = {
            remote.remote(i, batch, str(out), config.output_format, config.max_doc_chars,
                          int(config.max_file_mb * 1e6)): batch
            for i, batch in enumerate(batches)
        }
        per_source: dict[str, Counter] = defaultdict(Counter)
        with stage_progress("ingest: extracting", total=total_bytes, unit="B") as advance:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    batch = pending.pop(ref)
                    for source, stats in ray.get(ref).items():
                        per_source[source].update(stats)
                    advance(sum(task.size for task in batch))
        elapsed = max(time.time() - started, 1e-9)

        self._finish_outputs(out, config.output_format)
        kept = sum(c["docs"] for c in per_source.values())
        quarantined = sum(c["quarantined"] for c in per_source.values())
        reasons = Counter()
        for counter in per_source.values():
            reasons.update({k.split(".", 1)[1]: v for k, v in counter.items() if k.startswith("quarantined.")})
        text_bytes = sum(c["text_bytes"] for c in per_source.values())
        metrics: dict[str, float] = {
            "files": len(tasks),
            "input_mb": total_bytes / 1e6,
            "text_mb": text_bytes / 1e6,
            "extract_mb_per_s": total_bytes / 1e6 / elapsed,
            "extract_wall_s": elapsed,
            **{f"quarantined.{reason}": n for reason, n in reasons.items()},
        }
        for source, counter in sorted(per_source.items()):
            metrics[f"source.{source}.docs"] = counter["docs"]
            metrics[f"source.{source}.text_mb"] = counter["text_bytes"] / 1e6
        ctx.log.info("ingest: %d docs, %.1f MB text, %d quarantined %s, %.2f MB/s extraction",
                     kept, text_bytes / 1e6, quarantined, dict(reasons), metrics["extract_mb_per_s"])
        kept_name = f"{KEPT_DIR}/" if config.output_format == "parquet" else "kept.jsonl"
        return StageResult(
            counts={"in": kept + quarantined, "kept": kept, "removed": 0, "quarantined": quarantined},
            metrics=metrics,
            details={"per_source": {s: dict(c) for s, c in sorted(per_source.items())},
                     "quarantine_reasons": dict(reasons)},
            outputs={"docs": kept_name, "removed": "removed.jsonl", "quarantined": "quarantined.jsonl"},
        )

    @staticmethod
    def _finish_outputs(out: Path, output_format: str) -> None:
        """Concatenate per-task quarantine parts (and JSONL shards) in shard order."""
        concatenate(sorted((out / QUARANTINE_PARTS).glob("part-*.jsonl")), out / "quarantined.jsonl")
        if (out / QUARANTINE_PARTS).exists():
            (out / QUARANTINE_PARTS).rmdir()
        (out / "removed.jsonl").write_text("", encoding="utf-8")
        if output_format == "jsonl":
            concatenate(sorted((out / KEPT_DIR).glob("part-*.jsonl")), out / "kept.jsonl")
            (out / KEPT_DIR).rmdir()
