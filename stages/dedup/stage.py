"""dedup on Ray: every pass is a wave of Ray tasks, one per shard or per hash partition, that
hand their rows to the next wave through partitioned work tables.

Passes: (A) exact keys -> exact groups; (B) unit counts -> boilerplate set; (C) strip
boilerplate, MinHash signatures, LSH band keys -> bucket pairs; (V) shingles exchanged between
the shards of each candidate pair -> verified pairs -> connected components in large-star /
small-star rounds -> each component's kept member; (D) write kept/removed parts in shard order.
The driver holds per-shard counts and the boilerplate set, never a per-document array.

The stage's declarations; what it does is in ``passes.py``, imported when it runs (so listing
the stages, building the config and checking ``--until`` stay fast).
"""

from __future__ import annotations

from stages.core.contract import Dashboard, Figure, FunnelStep, Stage, StageContext, StageResult
from stages.dedup.config import DedupConfig


class DedupStage(Stage[DedupConfig]):
    name = "dedup"
    config_model = DedupConfig
    summary = "Exact, boilerplate and MinHash near-duplicate removal on Ray."
    figures = (Figure("chars_kept", key=True), Figure("chars_in"), Figure("signature_docs_per_s", "higher"),
               Figure("time.*", "lower"), Figure("*_removed"), Figure("boilerplate_chars*"))
    dashboard = Dashboard(quarantines=True, funnel=FunnelStep(mb="chars_kept", mb_per_unit=1e-6),
                          removed={"exact_removed": "exact duplicate", "near_removed": "near duplicate",
                                   "boilerplate_removed": "only boilerplate"})
    inputs = {"docs": "ingest:docs"}
    document_stage = True

    def run(self, ctx: StageContext[DedupConfig]) -> StageResult:
        from stages.dedup.passes import DedupPasses

        return DedupPasses().run(ctx)
