"""grpo: Group Relative Policy Optimization (DeepSeekMath) on align_data's prompts, with
verifiable rewards from the checkers (and optionally the reward model and a format term).

The stage's declarations; what it does is in ``trainer.py``, imported when it runs.
"""

from __future__ import annotations

from stages.core import names
from stages.core.contract import Dashboard, Figure, Stage, StageContext, StageResult
from stages.grpo.config import GRPOConfig


class GRPOStage(Stage[GRPOConfig]):
    name = "grpo"
    config_model = GRPOConfig
    summary = "GRPO: sampled groups per prompt, rewards from the checkers (and reward model), no critic."
    figures = (Figure("grpo.pass_rate", "higher", key=True), Figure("grpo.sampled_pass_rate", "higher", key=True),
               Figure("grpo.kl_to_sft", "lower", key=True), Figure("*.pass_rate*", "higher"),
               Figure("*.sampled_pass_rate*", "higher"), Figure("*mean_reward", "higher"),
               Figure("*.kl_to_sft", "lower"), Figure("grpo_minus_sft.*", "higher"), Figure("mean_time_*", "lower"))
    model_kinds = ("lm",)
    runs_when = {"alignment": "grpo"}
    dashboard = Dashboard(curves={"GRPO: reward, its spread within groups, KL": ("reward", "reward_std", "kl")},
                          pass_rates=("grpo",))
    inputs = {"model": "sft:model", "prompts": "align_data:sft_train", "heldout": "align_data:sft_heldout",
              "reward_model": "reward:model?"}
    registered_defaults = {"model": ("lm", names.latest_of("sft"))}

    @classmethod
    def check_pipeline(cls, config) -> None:
        from stages.alignment.lora import check_pipeline_targets

        check_pipeline_targets(cls, config)

    def run(self, ctx: StageContext[GRPOConfig]) -> StageResult:
        from stages.grpo.trainer import GRPOTrainer

        return GRPOTrainer().run(ctx)

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        from stages.grpo.trainer import GRPOTrainer

        return GRPOTrainer().after_logged(tracker, run_id, output_dir, result, pipeline_name)
