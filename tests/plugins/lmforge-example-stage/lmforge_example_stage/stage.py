"""doc_lengths: how long the documents ingest produced are, as a fixed histogram.

One streaming pass over the documents; it keeps counts per bucket, never the documents,
so it works the same on a corpus of any size. It registers no model and reads one input.
"""

from __future__ import annotations

import bisect
import json

from pydantic import Field

from stages.core.contract import Figure, Stage, StageConfig, StageContext, StageResult
from stages.core.docio import Quarantined, read_documents


class DocLengthsConfig(StageConfig):
    buckets: list[int] = Field([100, 1_000, 10_000], min_length=1,
                               description="Upper bounds (characters) of the histogram's buckets; one more takes the rest.")
    short_chars: int = Field(200, gt=0, description="Documents shorter than this count as short.")


class DocLengthsStage(Stage[DocLengthsConfig]):
    name = "doc_lengths"
    config_model = DocLengthsConfig
    summary = "A histogram of document lengths after ingest (the example plugin stage)."
    inputs = {"docs": "ingest:docs"}
    figures = (Figure("mean_chars", key=True), Figure("short_share", "lower", key=True), Figure("bucket.*"))

    def run(self, ctx: StageContext[DocLengthsConfig]) -> StageResult:
        bounds = sorted(ctx.config.buckets)
        counts = [0] * (len(bounds) + 1)
        docs = chars = short = unreadable = 0
        for item in read_documents(ctx.inputs["docs"].path):
            if isinstance(item, Quarantined):
                unreadable += 1
                continue
            length = len(item["text"])
            docs += 1
            chars += length
            short += length < ctx.config.short_chars
            counts[bisect.bisect_left(bounds, length)] += 1
        labels = [f"le_{b}" for b in bounds] + [f"gt_{bounds[-1]}"]
        histogram = dict(zip(labels, counts))
        (ctx.output_dir / "lengths.json").write_text(json.dumps({"docs": docs, "histogram": histogram}, indent=1))
        ctx.log.info("doc_lengths: %d documents, histogram %s", docs, histogram)
        return StageResult(
            counts={"docs": docs, "unreadable": unreadable},
            metrics={"mean_chars": chars / docs if docs else 0.0, "short_share": short / docs if docs else 0.0,
                     **{f"bucket.{k}": v for k, v in histogram.items()}},
            outputs={"lengths": "lengths.json"},
        )
