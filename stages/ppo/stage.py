"""ppo: the driver coordinating four Ray actors (policy, critic, reference, reward).

Each step: the policy samples answers to a batch of training prompts; reference, reward
model, critic and the policy itself score them in parallel; the driver turns scores
into per-token rewards (KL penalty on every token, the reward model's score on the
last), advantages (GAE, whitened) and returns; then several epochs of mini-batch
updates run on the policy and the critic at the same time. Held-out prompts are
evaluated before and after: checker pass rate, mean reward, KL to the SFT model.

The stage's declarations; what it does is in ``trainer.py``, imported when it runs (so listing
the stages, building the config and checking ``--until`` stay fast).
"""

from __future__ import annotations

from stages.core import names
from stages.core.contract import Dashboard, Figure, Stage, StageContext, StageResult
from stages.ppo.config import PPOConfig


class PPOStage(Stage[PPOConfig]):
    name = "ppo"
    config_model = PPOConfig
    summary = "PPO against the reward model with a KL penalty to the SFT policy."
    figures = (Figure("ppo.pass_rate", "higher", key=True), Figure("ppo.sampled_pass_rate", "higher", key=True),
               Figure("ppo.mean_reward", "higher", key=True), Figure("ppo.kl_to_sft", "lower", key=True),
               Figure("*.pass_rate*", "higher"), Figure("*.sampled_pass_rate*", "higher"),
               Figure("*mean_reward", "higher"), Figure("*.kl_to_sft", "lower"), Figure("ppo_minus_sft.*", "higher"),
               Figure("mean_time_*", "lower"))
    model_kinds = ("lm",)
    runs_when = {"alignment": "ppo"}
    dashboard = Dashboard(curves={"PPO: reward, KL to SFT, rollout pass rate": ("reward", "kl", "rollout_pass_rate")},
                          pass_rates=("ppo",))
    inputs = {"model": "sft:model", "reward_model": "reward:model", "prompts": "align_data:sft_train",
              "heldout": "align_data:sft_heldout"}
    registered_defaults = {"model": ("lm", names.latest_of("sft")), "reward_model": ("reward", names.latest_of("reward"))}

    @classmethod
    def check_pipeline(cls, config) -> None:
        from stages.alignment.lora import check_pipeline_targets

        check_pipeline_targets(cls, config)

    def run(self, ctx: StageContext[PPOConfig]) -> StageResult:
        from stages.ppo.trainer import PPOTrainer

        return PPOTrainer().run(ctx)

    def after_logged(self, tracker, run_id, output_dir, result, pipeline_name) -> dict[str, str]:
        from stages.ppo.trainer import PPOTrainer

        return PPOTrainer().after_logged(tracker, run_id, output_dir, result, pipeline_name)
