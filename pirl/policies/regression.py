"""Regression action head (L1 / MSE, like OpenVLA-OFT) with a light scale head (RIPT-VLA).

The mean head is trained by SFT with L1 or MSE in the normalised action space. A regression
head gives no probability, so after SFT a scale head is fitted by negative log-likelihood on
the same demonstrations (a few hundred steps, mean frozen), turning the prediction into a
factorised Laplace (L1) or Gaussian (MSE) policy with closed-form log-probs:

    Laplace:  log p(x) = -log 2b - |x - mu| / b
    Gaussian: log p(x) = -log sigma - 1/2 log 2 pi - 1/2 ((x - mu) / sigma)^2

The scale head is one linear layer on the trunk's features, detached, so fitting (and RL
shaping) the scale never moves the mean's representation; its bias starts low and its
log-scale is clipped to [log scale_min, log scale_max]. Sampling may widen the scale by
``HeadSamplerConfig.widen``; whether the ratio uses the widened density is
``HeadSamplerConfig.ratio_density`` (see :mod:`pirl.policies.heads`).

With ``HeadSamplerConfig.correlation = c > 0`` the rollouts draw each chunk from a Gaussian whose
elements have the head's standard deviation (sigma, or sqrt(2) b for a Laplace head) and, per action
dimension, correlation c between any two actions of the chunk: e_t = sqrt(c) z + sqrt(1 - c) eps_t.
Its log-density is written as a product of conditionals along the chunk, which is exact, keeps one
term per element (so per-element ratios still apply), and stays exact when later actions are dropped.
For the standardised residuals e_t = (x_t - mu_t) / s_t and k = t earlier actions with sum S_t,

    e_t | e_<t ~ N(c S_t / (1 - c + k c), (1 - c)(1 + k c) / (1 - c + k c)).

``loss="flow"`` trains the mean network as a flow's denoiser instead: the trunk also reads a noisy chunk
x_t = t eps + (1 - t) a and the time t, and SFT regresses its output on a - eps with the flow-matching loss
(t ~ Beta(1.5, 1), as the flow policies). The policy's mean is that output at x = 0, t = 1, an estimate of
E[a | s]; it is a Gaussian of fixed std :data:`FLOW_STD` (the scale is pinned, not fitted). Same distribution
as ``loss="mse"`` with a pinned scale, different weights, whose updates carry across states (a gradient at one
state moves the action at the task's other states ~20x as far). Under LOOP on MetaWorld reach + push, heads with
flow-trained networks lifted +9 on average over 7 runs (+2 / +8 / +17 / +2 from this SFT; +18 / +8 / +18 / +13 with
chunk-correlated noise, `pirl train`'s default for this head), regression-trained networks +1 over 8 runs of the
same distribution (bench/results/heads_metaworld.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from pirl.policies.base import Obs
from pirl.policies.heads import (FLOW_STD, ActionSample, HeadPolicy, HeadPolicyConfig, HeadSamplerConfig,
                                 conditional_log_var, conditional_mean, masked_mean)

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG2 = math.log(2.0)


@dataclass(frozen=True)
class RegressionPolicyConfig(HeadPolicyConfig):
    """A state-MLP regression head and its scale head."""

    loss: Literal["l1", "mse", "flow"] = "l1"
    """SFT loss; l1 makes the policy Laplace, mse Gaussian, flow a Gaussian whose mean is a flow denoiser's
    one-step estimate (see the module's docstring)."""
    scale_init: float = 0.05
    """Initial scale (normalised units): the scale head's bias starts at log(scale_init), low."""
    scale_min: float = 1e-3
    """Lower clip of the scale (normalised units)."""
    scale_max: float = 2.0
    """Upper clip of the scale (normalised units)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in ("l1", "mse", "flow"):
            raise ValueError(f"loss must be 'l1', 'mse' or 'flow', got {self.loss!r}")
        if not 0 < self.scale_min <= self.scale_init <= self.scale_max:
            raise ValueError(
                f"need 0 < scale_min <= scale_init <= scale_max, got {self.scale_min}, {self.scale_init}, {self.scale_max}"
            )

    @property
    def family(self) -> str:
        return "laplace" if self.loss == "l1" else "gaussian"


class RegressionPolicy(HeadPolicy):
    """Mean [B, H, D] by regression; scale [B, H, D] by a light NLL-fitted head."""

    def __init__(self, cfg: RegressionPolicyConfig) -> None:
        super().__init__(cfg)
        self.cfg: RegressionPolicyConfig = cfg
        n = cfg.action_horizon * cfg.action_dim
        if cfg.denoiser_inputs and cfg.loss != "flow":
            raise ValueError(f"denoiser_inputs is for loss='flow', not {cfg.loss!r}")
        self.mean_head = nn.Linear(cfg.hidden, n)
        self.scale_head = nn.Linear(cfg.hidden, n)
        # Starts state-independent and low: exploration grows only as far as the NLL fit asks.
        nn.init.zeros_(self.scale_head.weight)
        nn.init.constant_(self.scale_head.bias, math.log(cfg.scale_init))

    def set_scale_floor(self, floor: float) -> None:
        """Sets the scale's lower clip (``cfg.scale_min``, normalised units) to ``floor``, for sampling and log-probs
        alike (a pinned scale at or above ``floor`` is left as it is). Call it before a rollout, never between a
        rollout and its update (the ratio-1 check would fail)."""
        if not (isinstance(floor, (int, float)) and 0 < floor):
            raise ValueError(f"scale floor must be a number > 0, got {floor!r}")
        c, floor = self.cfg, float(floor)
        if self.scale_pinned and floor <= c.scale_min:
            return  # a pinned scale (loss=flow) at or above the floor stays as it is
        self.cfg = replace(c, scale_min=floor, scale_init=max(c.scale_init, floor), scale_max=max(c.scale_max, floor))

    def set_scale_ceiling(self, ceiling: float) -> None:
        """Lowers the scale's upper clip (``cfg.scale_max``, normalised units) to ``ceiling``, for sampling and log-probs
        alike (same timing rule as :meth:`set_scale_floor`). Off the demonstrations the NLL-fitted scale head
        extrapolates: in the few-shot MetaWorld rollouts 1 % of its scales sat at the 2.0 clip."""
        if not (isinstance(ceiling, (int, float)) and ceiling >= self.cfg.scale_min):
            raise ValueError(f"scale ceiling must be a number >= the scale floor {self.cfg.scale_min:g}, got {ceiling!r}")
        c = self.cfg
        self.cfg = replace(c, scale_max=float(ceiling), scale_init=min(c.scale_init, float(ceiling)))

    @property
    def scale_pinned(self) -> bool:
        """Whether the scale is one fixed value (its lower and upper clips equal)."""
        return self.cfg.scale_min == self.cfg.scale_max

    @property
    def output_layer(self) -> nn.Module:
        return self.mean_head

    def head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log_scale), each [B, H, D] in normalised units."""
        B = features.shape[0]
        mean = self.mean_head(features).view(B, *self.action_shape).float()
        raw = self.scale_head(features.detach()).view(B, *self.action_shape).float()
        log_scale = raw.clamp(math.log(self.cfg.scale_min), math.log(self.cfg.scale_max))
        return mean, log_scale

    @staticmethod
    def log_density(x: Tensor, mean: Tensor, log_scale: Tensor, family: str) -> Tensor:
        """Element-wise closed-form log-density of a Laplace (scale b) or Gaussian (std sigma)."""
        z = (x.float() - mean) * torch.exp(-log_scale)
        if family == "laplace":
            return -_LOG2 - log_scale - z.abs()
        return -log_scale - _LOG_SQRT_2PI - 0.5 * z.square()

    def element_log_prob(self, params: tuple[Tensor, Tensor], sample: ActionSample) -> Tensor:
        mean, log_scale = params
        log_scale = log_scale + math.log(sample.density_widen)
        if sample.correlation:
            return self._correlated_log_density(sample.actions, mean, self._log_std(log_scale), sample.correlation)
        return self.log_density(sample.actions, mean, log_scale, self.cfg.family)

    def element_entropy(self, params: tuple[Tensor, Tensor], sample: ActionSample) -> Tensor:
        log_scale = params[1] + math.log(sample.density_widen)
        if sample.correlation:
            log_var = conditional_log_var(sample.correlation, self.action_horizon, log_scale.device)
            return 0.5 + _LOG_SQRT_2PI + self._log_std(log_scale) + 0.5 * log_var.view(1, -1, 1)
        if self.cfg.family == "laplace":
            return 1.0 + _LOG2 + log_scale
        return 0.5 + _LOG_SQRT_2PI + log_scale

    def _log_std(self, log_scale: Tensor) -> Tensor:
        """Log standard deviation of an element: a Laplace of scale b has std sqrt(2) b."""
        return log_scale + 0.5 * _LOG2 if self.cfg.family == "laplace" else log_scale

    @staticmethod
    def _correlated_log_density(x: Tensor, mean: Tensor, log_std: Tensor, c: float) -> Tensor:
        """[B, H, D] log p(x_t | x_<t) of a chunk whose elements are equicorrelated (c) along H, per dimension."""
        e = (x.float() - mean) * torch.exp(-log_std)
        cond_mean = conditional_mean(e, c)
        log_var = conditional_log_var(c, e.shape[1], e.device).view(1, -1, 1)
        return -log_std - _LOG_SQRT_2PI - 0.5 * log_var - 0.5 * (e - cond_mean).square() * torch.exp(-log_var)

    def draw(self, params: tuple[Tensor, Tensor], cfg: HeadSamplerConfig,
             generator: Optional[torch.Generator]) -> ActionSample:
        mean, log_scale = params
        correlation = 0.0 if cfg.greedy else cfg.correlation
        if cfg.greedy:
            x = mean
        elif correlation:
            std = torch.exp(self._log_std(log_scale)) * cfg.widen
            shared = torch.randn((mean.shape[0], 1, mean.shape[2]), generator=generator, device=mean.device)
            own = torch.randn(mean.shape, generator=generator, device=mean.device)
            x = mean + std * (math.sqrt(correlation) * shared + math.sqrt(1.0 - correlation) * own)
        else:
            scale = torch.exp(log_scale) * cfg.widen
            if self.cfg.family == "laplace":
                # difference of two Exp(1) draws is Laplace(0, 1); 1 - U in (0, 1] keeps log finite
                u = 1.0 - torch.rand((2, *mean.shape), generator=generator, device=mean.device)
                noise = torch.log(u[1]) - torch.log(u[0])
            else:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device)
            x = mean + scale * noise
        return ActionSample(x, None, cfg.density_widen, cfg.logp_steps, cfg.log_prob_level, correlation)

    # -- supervised losses ------------------------------------------------------------------
    def sft_loss(self, obs: Obs, actions: Tensor, *, generator: Optional[torch.Generator] = None,
                 mask: Optional[Tensor] = None) -> Tensor:
        """L1 or MSE between the predicted mean and the normalised demonstration chunk [B, H, D]; loss=flow: the
        flow-matching loss of the denoiser, whose target is a - eps."""
        self._check_actions(actions)
        if self.cfg.loss == "flow":
            return self.flow_matching_loss(obs, actions, self.mean_head, generator=generator, mask=mask)
        mean, _ = self.params(self.encode(obs))
        diff = mean - self.normalize_actions(actions)
        return masked_mean(diff.abs() if self.cfg.loss == "l1" else diff.square(), mask)

    def nll(self, obs: Obs, actions: Tensor, *, mask: Optional[Tensor] = None) -> Tensor:
        """Mean negative log-likelihood per element of demonstration chunks (unwidened density)."""
        self._check_actions(actions)
        mean, log_scale = self.params(self.encode(obs))
        lp = self.log_density(self.normalize_actions(actions), mean, log_scale, self.cfg.family)
        return masked_mean(-lp, mask)


def fit_scale_head(
    policy: RegressionPolicy,
    states: Tensor,
    actions: Tensor,
    *,
    steps: int = 300,
    lr: float = 1e-2,
    batch_size: int = 256,
    tasks: Optional[Tensor] = None,
    seed: int = 0,
) -> list[float]:
    """Fits only the scale head by NLL on demonstrations (states [N, S], chunks [N, H, D]).

    The mean head and the encoder stay frozen (their gradients are never computed). Returns
    the NLL per step.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    states, actions = torch.as_tensor(states).float(), torch.as_tensor(actions).float()
    if len(states) != len(actions):
        raise ValueError(f"{len(states)} states for {len(actions)} action chunks")
    opt = torch.optim.Adam(policy.scale_head.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # the features are fixed during the fit: compute them once
        obs = {"state": states} if tasks is None else {"state": states, "task": tasks}
        features = policy.features(policy.encode(obs))
        mean = policy.mean_head(features).view(len(states), *policy.action_shape)
        target = policy.normalize_actions(actions)
    lo, hi = math.log(policy.cfg.scale_min), math.log(policy.cfg.scale_max)
    history = []
    for _ in range(steps):
        idx = torch.randint(0, len(states), (min(batch_size, len(states)),), generator=g)
        log_scale = policy.scale_head(features[idx]).view(len(idx), *policy.action_shape).clamp(lo, hi)
        loss = -policy.log_density(target[idx], mean[idx], log_scale, policy.cfg.family).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return history


def make_regression_policy(
    state_dim: int,
    action_dim: int,
    *,
    action_horizon: int = 4,
    num_tasks: int = 0,
    hidden: int = 256,
    depth: int = 3,
    loss: Literal["l1", "mse", "flow"] = "l1",
    value_head: bool = True,
    state_clip: Optional[float] = None,
    **scale: float,
) -> RegressionPolicy:
    """A regression-head policy (with its critic attached); ``scale`` sets scale_init/min/max (loss=flow: all three
    default to :data:`FLOW_STD`, a pinned scale)."""
    if loss == "flow":
        scale = {"scale_init": FLOW_STD, "scale_min": FLOW_STD, "scale_max": FLOW_STD, **scale}
    cfg = RegressionPolicyConfig(state_dim, action_dim, action_horizon, num_tasks, hidden, depth, state_clip=state_clip, loss=loss,
                                 denoiser_inputs=loss == "flow", **scale)
    policy = RegressionPolicy(cfg)
    if value_head:
        policy.attach_value_head(policy.feature_dim)
    return policy
