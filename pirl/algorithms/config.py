"""Typed, frozen configurations of the RL algorithms (defaults: MATH.md reference values)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

Estimator = Literal["gae", "grpo", "rloo"]


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")


@dataclass(frozen=True)
class AdvantageConfig:
    """How a rollout's rewards become advantages."""

    estimator: Estimator = "gae"
    """gae: PPO with a critic; grpo: group-normalised return; rloo: LOOP's leave-one-out baseline."""
    gamma: float = 0.99
    """Discount per chunk step (MATH.md reference 0.99)."""
    lam: float = 0.95
    """GAE lambda per chunk step (MATH.md reference 0.95)."""
    grpo_eps: float = 1e-6
    """GRPO: eps in (R - mean) / (std + eps)."""

    def __post_init__(self) -> None:
        if self.estimator not in ("gae", "grpo", "rloo"):
            raise ValueError(f"estimator must be 'gae', 'grpo' or 'rloo', got {self.estimator!r}")
        for name in ("gamma", "lam"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"{name} must lie in [0, 1], got {v!r}")
        _positive("grpo_eps", self.grpo_eps)

    @property
    def needs_critic(self) -> bool:
        return self.estimator == "gae"


@dataclass(frozen=True)
class PPOConfig:
    """The clipped-surrogate loss and the update loop around it."""

    clip_low: float = 0.2
    """eps_low: the ratio is clipped below at 1 - clip_low (reference 0.2)."""
    clip_high: float = 0.2
    """eps_high: the ratio is clipped above at 1 + clip_high (reference 0.2; DAPO-style > clip_low widens exploration)."""
    dual_clip: Optional[float] = None
    """Dual clip c > 1: for negative advantages the loss is capped at -c * A; None disables."""
    ratio_level: Literal["chunk", "element"] = "chunk"
    """chunk: one ratio per action chunk (log-probs [B]); element: one per element of log-probs [B, M], averaged."""
    value_loss: Literal["mse", "huber"] = "mse"
    """Critic loss: 0.5 (V - R)^2 or Huber."""
    huber_delta: float = 1.0
    """Huber threshold."""
    value_clip: Optional[float] = None
    """Clip the new value to old_value +- value_clip and take the worse loss; None disables."""
    value_coef: float = 0.5
    """Weight of the value loss."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (Flow-Noise only: policies without entropy ignore it)."""
    kl_coef: float = 0.0
    """Weight of the KL penalty to the rollout policy (k3 estimator)."""
    normalize_advantages: bool = True
    """Standardise advantages over the batch (PPO); GRPO is already normalised, LOOP is not."""
    epochs: int = 4
    """Passes over each rollout batch."""
    minibatch_size: int = 256
    """Samples per optimiser step."""
    micro_batch_size: Optional[int] = None
    """Samples per forward/backward (gradient accumulation); None = the whole minibatch."""
    max_grad_norm: Optional[float] = 1.0
    """Gradient clipping by global norm; None disables."""
    target_kl: Optional[float] = None
    """Stop the remaining minibatches of this update once a minibatch's approx KL of the chain (summed log-ratio,
    whatever the aggregation) exceeds this; None disables."""
    chain_clip: bool = True
    """The clip bounds the chain's (summed) log-ratio: when the policy averages its log-prob over n terms
    (``reduce="mean"``) the bounds become (1 +- eps)^(1/n), i.e. eps / (K + 1) in log space. False clips the
    averaged log-prob as reported: the πRL reference's trust region, about K + 1 times looser on the chain."""
    ratio_check_tol: float = 1e-5
    """Before the first step of every update, re-scoring the first minibatch under unchanged parameters must give
    back the rollout's log-probs: |log pi - log pi_old| <= ratio_check_tol + ratio_check_factor x round-off, where
    round-off is the float32 scale of the summed terms (EvalOutput.roundoff). This is the absolute floor."""
    ratio_check_factor: float = 8.0
    """Multiple of the log-prob's float32 round-off the ratio-1 check tolerates (batched inference and minibatch
    re-scoring sum in different orders). Measured on a MetaWorld MLP: round-off deviations reach ~1.2x the scale,
    a time grid shifted by 0.01 gives a median of ~15x and an off-by-one grid or changed inputs 300x and more.
    Raise it for reduced-precision compute (bf16 weights, TF32 matmuls)."""

    def __post_init__(self) -> None:
        _positive("clip_low", self.clip_low)
        _positive("clip_high", self.clip_high)
        if self.clip_low >= 1:
            raise ValueError(f"clip_low must be < 1 (ratio floor 1 - clip_low > 0), got {self.clip_low}")
        if self.dual_clip is not None and not self.dual_clip > 1:
            raise ValueError(f"dual_clip must be > 1 or None, got {self.dual_clip!r}")
        if self.ratio_level not in ("chunk", "element"):
            raise ValueError(f"ratio_level must be 'chunk' or 'element', got {self.ratio_level!r}")
        if self.value_loss not in ("mse", "huber"):
            raise ValueError(f"value_loss must be 'mse' or 'huber', got {self.value_loss!r}")
        _positive("huber_delta", self.huber_delta)
        if self.value_clip is not None:
            _positive("value_clip", self.value_clip)
        for name in ("value_coef", "entropy_coef", "kl_coef"):
            _positive(name, getattr(self, name), allow_zero=True)
        for name in ("epochs", "minibatch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.micro_batch_size is not None and not (isinstance(self.micro_batch_size, int) and self.micro_batch_size >= 1):
            raise ValueError(f"micro_batch_size must be an integer >= 1 or None, got {self.micro_batch_size!r}")
        if self.max_grad_norm is not None:
            _positive("max_grad_norm", self.max_grad_norm)
        if self.target_kl is not None:
            _positive("target_kl", self.target_kl)
        _positive("ratio_check_tol", self.ratio_check_tol)
        _positive("ratio_check_factor", self.ratio_check_factor, allow_zero=True)


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with a separate learning rate for the value head."""

    lr: float = 3e-4
    """Learning rate of the policy (velocity network, noise head)."""
    value_lr: float = 1e-3
    """Learning rate of the value head (the critic usually learns faster than the actor)."""
    prior_lr: float = 3e-3
    """Learning rate of a learned x^0 prior's head (``learned_prior``), a fresh zero-initialised head. Measured on the
    small π0 (bench/results/learning_pi0-small_flow_noise.md): at 2e-5 mu moved 0.002 in 3 updates, at 3e-4 ~0.13 in
    25 min with no lift, at 3e-3 ~0.4 and Flow-Noise lifted +22.5 in an hour."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""

    def __post_init__(self) -> None:
        _positive("lr", self.lr)
        _positive("value_lr", self.value_lr)
        _positive("prior_lr", self.prior_lr)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _positive("eps", self.eps)


@dataclass(frozen=True)
class AlgorithmConfig:
    """One algorithm: its advantage estimator, loss and optimiser."""

    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    """Advantage estimator."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """Loss and update loop."""
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimiser."""


PRESETS = ("ppo", "grpo", "loop")


def preset(name: str) -> AlgorithmConfig:
    """Named reference settings: 'ppo' (critic + GAE), 'grpo', 'loop' (RIPT-VLA)."""
    if name == "ppo":
        return AlgorithmConfig(AdvantageConfig("gae"), PPOConfig(normalize_advantages=True))
    if name == "grpo":
        return AlgorithmConfig(AdvantageConfig("grpo"), PPOConfig(normalize_advantages=False, value_coef=0.0))
    if name == "loop":
        return AlgorithmConfig(AdvantageConfig("rloo"), PPOConfig(normalize_advantages=False, value_coef=0.0))
    import difflib

    close = difflib.get_close_matches(name, PRESETS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown algorithm preset {name!r}; choose one of {PRESETS}{hint}")
