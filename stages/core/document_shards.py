"""The skeleton every sharded document stage shares: its input cut into work shards (records
that cannot be documents and repeated ids quarantined on the way), per-shard steps fanned
out over Ray, the parts stitched back into ``kept``/``removed`` in shard order, and the
counts that must add up (in = kept + removed + quarantined).

A step is a plain function of one shard (``step(shard_path, index, *args)``): it knows
nothing of Ray, so it runs the same in a test, in one process, or on a cluster's worker
(datatrove's shape). dedup chains several steps with driver-side merges between them;
quality maps one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stages.core import storage
from stages.core.contract import StageContext
from stages.core.ray_runtime import ensure_ray, run_tasks
from stages.core.shards import Sharded, assemble_outputs, drop_repeated_ids, shard_input

QUARANTINED = "quarantined.jsonl"
REMOVED = "removed.jsonl"


@dataclass
class ShardedDocuments:
    ctx: StageContext
    work: str  # the work location: a local folder, or object storage every node reaches
    sharded: Sharded
    options: dict[str, Any]  # Ray options of every step's tasks (num_cpus, max_retries)

    @classmethod
    def open(cls, ctx: StageContext, *, shard_docs: int, max_doc_chars: int, task_cpus: float,
             max_retries: int = 3, **options: Any) -> ShardedDocuments:
        """Shard ``ctx.inputs["docs"]`` into the stage's work dir and start (or attach to) Ray."""
        out = ctx.output_dir
        work = ctx.work_location()
        sharded = shard_input(ctx.inputs["docs"].path, work, shard_docs, max_doc_chars, out / QUARANTINED)
        ensure_ray(ctx.ray_address, ctx.ray_num_cpus)
        options = {"num_cpus": task_cpus, "max_retries": max_retries, **options}
        sharded = drop_repeated_ids(sharded, work, out / QUARANTINED, options, ctx.stage)
        return cls(ctx, work, sharded, options)

    @property
    def shards(self) -> list[str]:
        return list(self.sharded.shards)

    @property
    def documents(self) -> int:
        """Documents that reached the steps (quarantined records excluded)."""
        return self.sharded.documents

    def map(self, label: str, step: Callable[..., Any], args_of: Callable[[int], tuple] = lambda i: (),
            indices: list[int] | None = None) -> list[Any]:
        """``step(shard, index, *args_of(index))`` for every shard (or those of ``indices``) as Ray tasks, with a
        progress bar; results in that order."""
        shards = self.shards
        chosen = range(len(shards)) if indices is None else indices
        return run_tasks(f"{self.ctx.stage}: {label}", step, [(shards[i], i, *args_of(i)) for i in chosen],
                         self.options)

    def finish(self, output_format: str) -> None:
        """Stitch the steps' part files into the outputs, in shard order, and drop the work dir."""
        assemble_outputs(self.ctx.output_dir, self.work, len(self.shards), output_format)
        storage.remove_tree(self.work)

    def counts(self, removed: int) -> dict[str, int]:
        quarantined = self.sharded.quarantined
        return {"in": self.documents + quarantined, "kept": self.documents - removed, "removed": removed,
                "quarantined": quarantined}

    @staticmethod
    def outputs(output_format: str) -> dict[str, str]:
        return {"docs": "kept.jsonl" if output_format == "jsonl" else "kept/", "removed": REMOVED,
                "quarantined": QUARANTINED}
