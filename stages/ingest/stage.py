"""ingest on Ray: files are extracted by Ray tasks, each writing one output shard.

The driver only plans, schedules and sums small per-task stats; document text never
passes through it while tasks run, so memory stays flat as the corpus grows. Tasks write
their shards, quarantine parts and file rows to the work location (local, or object storage
that nodes without a shared disk reach: ``stages.core.storage``); the driver then moves the
shards into the outputs, streaming.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from stages.core import storage
from stages.core.contract import Dashboard, Figure, FunnelStep, Stage, StageContext, StageInput, StageResult
from stages.core.docio import Quarantined, append_jsonl, read_documents, write_parquet
from stages.core.progress import stage_progress
from stages.core.ray_runtime import ensure_ray, run_tasks
from stages.core.shards import concatenate
from stages.core.unique_ids import DUPLICATE_ID, IdLog, find_repeats, quarantine_record, remove_logs, repeated_rows
from stages.ingest.config import IngestConfig
from stages.ingest.extract import FileTask, extract
from stages.ingest.plan import UNLISTABLE, plan_digest, plan_files

KEPT_DIR = "kept"
QUARANTINE_PARTS = "_quarantine"
MAX_LISTED_EMPTY = 100  # empty files named in the manifest; files.jsonl has them all


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


FILES_PARTS = "_files"
FILES_TABLE = "files.jsonl"


def _part(work: str, folder: str, index: int, suffix: str = "jsonl") -> str:
    return storage.join(work, folder, f"part-{index:05d}.{suffix}")


def extract_batch(index: int, batch: list[FileTask], work: str, output_format: str,
                  max_chars: int, max_file_bytes: int) -> dict[str, Any]:
    """Extract one batch into shard ``index``; return per-source stats and the files that gave no document
    (never the text). Each file's row goes to the per-file table; each document's id to the id log."""
    docs: list[dict[str, Any]] = []
    stats: dict[str, Counter] = defaultdict(Counter)
    empty: list[str] = []
    ids = IdLog(work, index)
    with storage.open_output(_part(work, QUARANTINE_PARTS, index)) as quarantine, \
            storage.open_output(_part(work, FILES_PARTS, index)) as files:
        for task in batch:
            source_stats = stats[task.source]
            source_stats["files"] += 1
            source_stats["bytes_in"] += task.size
            items = _file_items(task, max_chars, max_file_bytes)
            row = {"source": task.source, "path": task.relpath, "url": task.url, "bytes": task.size, "docs": 0,
                   "quarantined": 0, "reasons": Counter()}
            for item in items:
                if isinstance(item, Quarantined):
                    source_stats["quarantined"] += 1
                    source_stats[f"quarantined.{item.reason}"] += 1
                    row["quarantined"] += 1
                    row["reasons"][item.reason] += 1
                    append_jsonl(quarantine, item.to_record())
                else:
                    source_stats["docs"] += 1
                    source_stats["chars"] += len(item["text"])
                    source_stats["text_bytes"] += len(item["text"].encode("utf-8"))
                    row["docs"] += 1
                    ids.add(item["id"], len(docs), f"{task.url} document {row['docs']}", [task.source, task.url])
                    docs.append(item)
            if not row["docs"] and not row["quarantined"]:
                source_stats["empty_files"] += 1
                empty.append(task.url)
            append_jsonl(files, row)
    ids.close()
    if docs:
        _write_kept(_part(work, KEPT_DIR, index, _suffix(output_format)), docs, output_format)
    return {"per_source": {source: dict(counter) for source, counter in stats.items()}, "empty": empty}


def _file_items(task: FileTask, max_chars: int, max_file_bytes: int):
    if task.kind == UNLISTABLE:  # a folder that could not be listed: extract says so
        return extract(task, b"", max_chars)
    try:
        data = read_file(task, max_file_bytes)
    except OSError as exc:
        return [Quarantined("unreadable", f"cannot read: {exc.strerror or exc}", task.url,
                            id=f"{task.source}:{task.relpath}", source=task.source)]
    if len(data) > max_file_bytes:
        return [Quarantined("too_large", f"file larger than {max_file_bytes} bytes", task.url,
                            id=f"{task.source}:{task.relpath}", source=task.source)]
    return extract(task, data, max_chars)


def _suffix(output_format: str) -> str:
    return "parquet" if output_format == "parquet" else "jsonl"


def _write_kept(location: str, docs: list[dict[str, Any]], output_format: str) -> None:
    if output_format == "parquet":
        write_parquet(location, docs)
        return
    with storage.open_output(location) as handle:
        for doc in docs:
            append_jsonl(handle, doc)


def task_drop_repeats(index: int, work: str, output_format: str) -> dict[str, dict[str, Any]]:
    """Rewrite kept shard ``index`` without its repeated ids (quarantined as duplicate_id, after the shard's
    other quarantined records); the counts that moved from kept to quarantined, per source and per file."""
    repeats = repeated_rows(work, index)
    part = _part(work, KEPT_DIR, index, _suffix(output_format))
    with tempfile.TemporaryDirectory(prefix="lmforge-ingest-") as scratch:
        local = storage.download(part, Path(scratch) / storage.name_of(part))
        docs = [d for d in read_documents(local) if isinstance(d, dict)]
    moved: dict[str, Counter] = defaultdict(Counter)
    per_file: Counter = Counter()
    kept = []
    quarantine_part = _part(work, QUARANTINE_PARTS, index)
    earlier = storage.read_bytes(quarantine_part).decode("utf-8")
    with storage.open_output(quarantine_part) as quarantine:
        quarantine.write(earlier)
        for row, doc in enumerate(docs):
            if row not in repeats:
                kept.append(doc)
                continue
            append_jsonl(quarantine, quarantine_record(doc, repeats[row]))
            source, url = repeats[row].tag
            per_file[url] += 1
            counter = moved[source]
            counter["docs"] += 1
            counter["chars"] += len(doc["text"])
            counter["text_bytes"] += len(doc["text"].encode("utf-8"))
    storage.remove(part)
    if kept:
        _write_kept(part, kept, output_format)
    return {"per_source": {source: dict(counter) for source, counter in moved.items()}, "per_file": dict(per_file)}


class IngestStage(Stage[IngestConfig]):
    name = "ingest"
    config_model = IngestConfig
    summary = "Read raw files (text, gz, bz2, JSONL, HTML) into Parquet documents; broken ones quarantined."
    figures = (Figure("text_mb", key=True), Figure("input_mb"), Figure("files"), Figure("files_empty"),
               Figure("extract_mb_per_s", "higher"), Figure("extract_wall_s", "lower"), Figure("source.*"))
    dashboard = Dashboard(quarantines=True, funnel=FunnelStep(mb="text_mb"))
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

    def run(self, ctx: StageContext[IngestConfig]) -> StageResult:
        import ray

        config = ctx.config
        tasks = self.plan(config, ctx.seed)
        batches = batch_tasks(tasks, config.task_mb)
        out = ctx.output_dir
        work = ctx.work_location()
        ensure_ray(ctx.ray_address, ctx.ray_num_cpus)
        remote = ray.remote(extract_batch).options(num_cpus=config.task_cpus, max_retries=2)
        total_bytes = sum(task.size for task in tasks)
        ctx.log.info("ingest: %d files (%.1f MB) from %d sources in %d Ray tasks",
                     len(tasks), total_bytes / 1e6, len({t.source for t in tasks}), len(batches))
        started = time.time()
        pending = {
            remote.remote(i, batch, work, config.output_format, config.max_doc_chars,
                          int(config.max_file_mb * 1e6)): batch
            for i, batch in enumerate(batches)
        }
        per_source: dict[str, Counter] = defaultdict(Counter)
        empty: list[str] = []
        with stage_progress("ingest: extracting", total=total_bytes, unit="B") as advance:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    batch = pending.pop(ref)
                    result = ray.get(ref)
                    for source, stats in result["per_source"].items():
                        per_source[source].update(stats)
                    if len(empty) < MAX_LISTED_EMPTY:
                        empty += result["empty"][:MAX_LISTED_EMPTY - len(empty)]
                    advance(sum(task.size for task in batch))
        elapsed = max(time.time() - started, 1e-9)
        repeated = self._drop_repeated_ids(work, len(batches), config, per_source)

        self._finish_outputs(out, work, config.output_format, len(batches), repeated)
        kept = sum(c["docs"] for c in per_source.values())
        quarantined = sum(c["quarantined"] for c in per_source.values())
        reasons = Counter()
        for counter in per_source.values():
            reasons.update({k.split(".", 1)[1]: v for k, v in counter.items() if k.startswith("quarantined.")})
        text_bytes = sum(c["text_bytes"] for c in per_source.values())
        metrics: dict[str, float] = {
            "files": len(tasks),
            "files_empty": sum(c["empty_files"] for c in per_source.values()),
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
                     "quarantine_reasons": dict(reasons),
                     "files": {"read": len(tasks), "table": FILES_TABLE,
                               "empty": sum(c["empty_files"] for c in per_source.values()),
                               "empty_listed": empty}},
            outputs={"docs": kept_name, "removed": "removed.jsonl", "quarantined": "quarantined.jsonl",
                     "files": FILES_TABLE},
        )

    @staticmethod
    def _drop_repeated_ids(work: str, parts: int, config: IngestConfig, per_source: dict[str, Counter]) -> Counter:
        """The second and later documents with one id are quarantined (``duplicate_id``), across all files;
        returns how many each file lost that way."""
        options = {"num_cpus": config.task_cpus, "max_retries": 2}
        repeats = find_repeats(work, parts, options, "ingest")
        per_file: Counter = Counter()
        if repeats:
            moved = run_tasks("ingest: drop repeated ids", task_drop_repeats,
                              [(i, work, config.output_format) for i in sorted(repeats)], options)
            for result in moved:
                per_file.update(result["per_file"])
                for source, counter in result["per_source"].items():
                    stats = per_source[source]
                    stats.subtract(counter)
                    stats["quarantined"] += counter["docs"]
                    stats[f"quarantined.{DUPLICATE_ID}"] += counter["docs"]
        remove_logs(work)
        return per_file

    @staticmethod
    def _finish_outputs(out: Path, work: str, output_format: str, parts: int, repeated: Counter) -> None:
        """Concatenate per-task quarantine parts, file tables (and JSONL shards) in shard order, move Parquet
        shards into ``kept/``, and drop the work location; a file's row counts the documents it lost to a
        repeated id as quarantined."""
        concatenate([_part(work, QUARANTINE_PARTS, i) for i in range(parts)], out / "quarantined.jsonl")
        with open(out / FILES_TABLE, "w", encoding="utf-8") as table:
            for i in range(parts):
                part = _part(work, FILES_PARTS, i)
                with storage.open_text(part) as handle:
                    for line in handle:
                        row = json.loads(line)
                        lost = repeated.get(row["url"], 0)
                        if lost:
                            row["docs"] -= lost
                            row["quarantined"] += lost
                            row["reasons"][DUPLICATE_ID] = row["reasons"].get(DUPLICATE_ID, 0) + lost
                        append_jsonl(table, row)
        (out / "removed.jsonl").write_text("", encoding="utf-8")
        kept = [_part(work, KEPT_DIR, i, _suffix(output_format)) for i in range(parts)]
        if output_format == "jsonl":
            concatenate(kept, out / "kept.jsonl")
        else:
            (out / KEPT_DIR).mkdir()
            for i, part in enumerate(kept):
                if storage.exists(part):
                    storage.move_to_local(part, out / KEPT_DIR / f"part-{i:05d}.parquet")
        storage.remove_tree(work)
