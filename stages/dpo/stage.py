"""dpo: Direct Preference Optimization of the SFT model on
align_data's preference pairs, on Ray Train with the shared trainer (reference
log-probs computed once from the starting model); evaluated like ppo on the same
held-out prompts (checker pass rate, KL to SFT, and mean reward when a reward model is
given) so MLflow shows the two side by side.

The stage's declarations; what it does is in ``trainer.py``, imported when it runs (so listing
the stages, building the config and checking ``--until`` stay fast).
"""

from __future__ import annotations

from stages.core import names
from stages.core.contract import Dashboard, Figure, Stage, StageContext, StageResult
from stages.dpo.config import DPOConfig


class DPOStage(Stage[DPOConfig]):
    name = "dpo"
    config_model = DPOConfig
    summary = "Direct preference optimisation from the SFT policy (instead of reward + PPO)."
    figures = (Figure("dpo.pass_rate", "higher", key=True), Figure("dpo.sampled_pass_rate", "higher", key=True),
               Figure("dpo.mean_reward", "higher", key=True), Figure("dpo.kl_to_sft", "lower", key=True),
               Figure("*.pass_rate*", "higher"), Figure("*.sampled_pass_rate*", "higher"),
               Figure("*mean_reward", "higher"), Figure("*.kl_to_sft", "lower"), Figure("dpo_minus_sft.*", "higher"),
               Figure("heldout_loss", "lower"), Figure("*accuracy*", "higher"))
    model_kinds = ("lm",)
    runs_when = {"alignment": "dpo"}
    dashboard = Dashboard(curves={"SFT / DPO: loss on responses": ("loss",)}, pass_rates=("dpo",))
    inputs = {"model": "sft:model", "train": "align_data:pref_train", "heldout": "align_data:pref_heldout",
              "prompts": "align_data:sft_heldout"}
    optional_inputs = frozenset({"reward_model"})
    registered_defaults = {"model": ("lm", names.latest_of("sft"))}

    @classmethod
    def check_pipeline(cls, config) -> None:
        from stages.alignment.lora import check_pipeline_targets

        check_pipeline_targets(cls, config)

    def run(self, ctx: StageContext[DPOConfig]) -> StageResult:
        from stages.dpo.trainer import DPOTrainer

        return DPOTrainer().run(ctx)

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        from stages.dpo.trainer import DPOTrainer

        return DPOTrainer().after_logged(tracker, run_id, output_dir, result, pipeline_name)
