"""reward: the SFT backbone with a scalar head (``AutoModelForSequenceClassification``,
one label) trained with the Bradley-Terry loss on align_data's preference pairs, on Ray
Train; then checked on held-out pairs (pairwise accuracy, per family) and on answers
sampled from the SFT model (Spearman correlation of reward with the checker's verdict).

The stage's declarations; what it does is in ``trainer.py``, imported when it runs (so listing
the stages, building the config and checking ``--until`` stay fast).
"""

from __future__ import annotations

from stages.core import names
from stages.core.contract import Dashboard, Figure, Stage, StageContext, StageResult
from stages.reward.config import RewardConfig


class RewardStage(Stage[RewardConfig]):
    name = "reward"
    config_model = RewardConfig
    summary = "Reward model: the SFT backbone with a scalar head, Bradley-Terry loss on preference pairs."
    figures = (Figure("pairwise_accuracy", "higher", key=True), Figure("spearman_reward_vs_checker", "higher", key=True),
               Figure("pairwise_accuracy.*", "higher"), Figure("spearman.*", "higher"), Figure("heldout_loss", "lower"),
               Figure("sampled_pass_rate", "higher"), Figure("goal.*", "higher"))
    model_kinds = ("reward",)
    runs_when = {"alignment": "ppo|grpo"}
    dashboard = Dashboard(curves={"Reward model: pairwise accuracy": ("accuracy", "heldout_accuracy")})
    inputs = {"model": "sft:model", "train": "align_data:pref_train", "heldout": "align_data:pref_heldout",
              "prompts": "align_data:sft_heldout", "train_prompts": "align_data:sft_train"}
    registered_defaults = {"model": ("lm", names.latest_of("sft"))}

    @classmethod
    def check_pipeline(cls, config) -> None:
        from stages.alignment.lora import check_pipeline_targets

        check_pipeline_targets(cls, config)
        pretrained_here = getattr(config.pipeline, "base", "pretrain") == "pretrain"  # an import's head is its own
        if config.reward.lm_coef and pretrained_here and not config.pretrain.model.tie_embeddings:
            raise ValueError("reward.lm_coef trains the backbone's tied LM head, but pretrain.model.tie_embeddings is "
                             "false: set one of them (reward.lm_coef: 0 or tie_embeddings: true)")

    def run(self, ctx: StageContext[RewardConfig]) -> StageResult:
        from stages.reward.trainer import RewardTrainer

        return RewardTrainer().run(ctx)

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        from stages.reward.trainer import RewardTrainer

        return RewardTrainer().after_logged(tracker, run_id, output_dir, result, pipeline_name)
