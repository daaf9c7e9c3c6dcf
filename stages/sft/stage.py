"""sft: supervised fine-tuning of the pretrained model on align_data's examples (loss on
response tokens only), on Ray Train with pretraining's distribution code; then greedy
decoding of the held-out prompts by the base and the SFT model, scored by the checkers.

The stage's declarations; what it does is in ``trainer.py``, imported when it runs (so listing
the stages, building the config and checking ``--until`` stay fast).
"""

from __future__ import annotations

from stages.core import names
from stages.core.contract import Dashboard, Figure, Stage, StageContext, StageResult
from stages.sft.config import SFTConfig


class SFTStage(Stage[SFTConfig]):
    name = "sft"
    config_model = SFTConfig
    summary = "Supervised fine-tuning on chat-formatted answers; pass rate before and after."
    figures = (Figure("base.pass_rate", "higher", key=True), Figure("sft.pass_rate", "higher", key=True),
               Figure("heldout_loss", "lower", key=True), Figure("heldout_loss_start", "lower"),
               Figure("*.pass_rate*", "higher"), Figure("sft_minus_base.*", "higher"))
    model_kinds = ("lm",)
    dashboard = Dashboard(curves={"SFT / DPO: loss on responses": ("loss", "heldout_loss")},
                          pass_rates=("base", "sft"))
    inputs = {"model": "pretrain|import_model:model", "train": "align_data:sft_train", "heldout": "align_data:sft_heldout"}
    registered_defaults = {"model": ("lm", names.latest_of("pretrain"))}

    @classmethod
    def check_pipeline(cls, config) -> None:
        from stages.alignment.lora import check_pipeline_targets

        check_pipeline_targets(cls, config)

    def run(self, ctx: StageContext[SFTConfig]) -> StageResult:
        from stages.sft.trainer import SFTTrainer

        return SFTTrainer().run(ctx)

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        from stages.sft.trainer import SFTTrainer

        return SFTTrainer().after_logged(tracker, run_id, output_dir, result, pipeline_name)
