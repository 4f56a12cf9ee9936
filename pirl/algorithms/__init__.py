"""RL algorithms on rollout batches: advantages (GAE, GRPO, RLOO/LOOP), PPO loss, update loop. No simulator or model code."""

from pirl.algorithms.advantages import (
    episode_returns,
    explained_variance,
    filter_groups_by_success,
    filter_uniform_groups,
    gae,
    grpo_advantages,
    normalize,
    rloo_advantages,
)
from pirl.algorithms.buffer import RolloutBatch, RolloutBuffer, build_batch, per_sample_bytes
from pirl.algorithms.config import (
    PRESETS,
    AdvantageConfig,
    AlgorithmConfig,
    OptimizerConfig,
    PPOConfig,
    preset,
)
from pirl.algorithms.ppo import PPOUpdater, RatioCheckError, make_optimizer, ppo_loss

__all__ = [
    "PRESETS",
    "AdvantageConfig",
    "AlgorithmConfig",
    "OptimizerConfig",
    "PPOConfig",
    "PPOUpdater",
    "RatioCheckError",
    "RolloutBatch",
    "RolloutBuffer",
    "build_batch",
    "episode_returns",
    "explained_variance",
    "filter_groups_by_success",
    "filter_uniform_groups",
    "gae",
    "grpo_advantages",
    "make_optimizer",
    "normalize",
    "per_sample_bytes",
    "ppo_loss",
    "preset",
    "rloo_advantages",
]
