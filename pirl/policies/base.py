"""The policy contract, and the one code path that samples and re-scores flow chains.

:class:`Policy` is what the rollout collector and the algorithms call on any policy:
``prepare`` (env observation -> tensors), ``act(obs, cfg) -> ActOutput`` (rollouts),
``evaluate(obs, record) -> EvalOutput`` (updates), ``value(obs)`` (critic) and
``sft_loss`` (supervised pre-training). The sample record an ``act`` returns is opaque to
the algorithms: it only offers ``index(idx)``, ``cat(list)`` and ``to(device)``. Flow
policies return a :class:`~pirl.flow.Chain`; the regression and tokenized heads
(:mod:`pirl.policies.heads`) an :class:`~pirl.policies.heads.ActionSample`.

A flow policy (:class:`FlowPolicy`) implements three things:

- ``encode(obs) -> ctx``: everything computed once per observation (prefix features, a
  KV cache); the sampler never sees it.
- ``velocity(ctx, x, t) -> (v, features)``: the flow velocity for a noisy chunk x [B, H, D]
  at times t [B], and per-sample features [B, F] the Flow-Noise head reads.
- ``value_features(ctx) -> [B, F]``: what the critic's value head reads.

Everything RL needs is built on these here: :meth:`FlowPolicy.act` samples a chain during
rollouts, :meth:`FlowPolicy.evaluate` re-scores stored chains during updates. Both go
through :mod:`pirl.flow`, so the first PPO ratio of every update is exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pirl import flow
from pirl.flow import Chain, NoiseHead, PriorHead, SamplerConfig

Obs = dict[str, Tensor]


class ValueHead(nn.Module):
    """A small MLP critic on policy features [B, F] -> [B]."""

    def __init__(self, in_features: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.float()).squeeze(-1)


class Normalizer(nn.Module):
    """Affine z-score normalisation whose statistics travel with the weights (as buffers); ``clip`` bounds the
    normalised values to +-clip (None: unbounded)."""

    def __init__(self, dim: int, eps: float = 1e-6, clip: Optional[float] = None) -> None:
        super().__init__()
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {clip!r}")
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.eps, self.clip = eps, clip

    def set_stats(self, mean: Tensor, std: Tensor) -> None:
        """Load statistics (e.g. a dataset's ``stats.json``); tiny stds are floored."""
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"stats of shape {tuple(mean.shape)}/{tuple(std.shape)} for a {self.mean.numel()}-dim normaliser")
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=1e-3))

    def forward(self, x: Tensor) -> Tensor:
        z = (x - self.mean) / (self.std + self.eps)
        return z if self.clip is None else z.clamp(-self.clip, self.clip)

    def inverse(self, x: Tensor) -> Tensor:
        return x * (self.std + self.eps) + self.mean


@dataclass
class ActOutput:
    """What a rollout step needs from the policy. Actions are in the environment's units."""

    actions: Tensor
    """[B, H, D] action chunk, unnormalised."""
    chain: Any
    """The sample record in the policy's normalised action space (detached): a flow policy's
    denoising :class:`~pirl.flow.Chain`, or a head policy's ``ActionSample``."""
    log_prob: Tensor
    """[B] (or [B, M] per element) float32 log-probability of the record under the sampling policy."""
    value: Optional[Tensor]
    """[B] critic value, or None if the policy has no value head."""


@dataclass
class EvalOutput:
    """Re-scored chains during an update."""

    log_prob: Tensor
    """[B] log-probability under the current parameters (differentiable)."""
    value: Optional[Tensor]
    """[B] value (differentiable), or None."""
    entropy: Optional[Tensor]
    """[B] entropy per element, averaged over the elements whose log-probs count (executed actions, the env's
    action dims; Flow-Noise transitions, head distributions), or None for Flow-SDE/ODE."""
    log_prob_terms: Optional[Tensor] = None
    """[B] when ``log_prob`` is an average (a flow chain with ``reduce="mean"``): the number of terms averaged,
    so that the chain's log-ratio is the log-ratio times this. None: ``log_prob`` is already the chain's (a sum)."""
    roundoff: Optional[Tensor] = None
    """[B] float32 round-off scale of ``log_prob`` (:func:`pirl.flow.log_prob_roundoff`), which the ratio-1 check
    tolerates; None: the check estimates it from ``|log_prob|``."""


class Policy(nn.Module):
    """Base of every policy the collector and the algorithms drive (flow or not).

    Subclasses implement ``encode``, ``value_features``, ``act``, ``evaluate`` and ``sft_loss``;
    observation preparation, the critic and action normalisation are shared here.
    """

    action_horizon: int
    """H, actions per predicted chunk."""
    action_dim: int
    """D, action dimensions."""
    value_head: Optional[ValueHead]

    task_names: Optional[tuple[str, ...]] = None
    """The simulator tasks a task-id policy (``cfg.num_tasks`` > 0) was trained on, in id order; recorded in its file
    from the SFT dataset, so an env with another order or a subset of them is mapped by name (None: unknown)."""
    task_instructions: Optional[tuple[str, ...]] = None
    """Their instructions, in the same order (a dataset from elsewhere may name its tasks only by instruction)."""
    _task_ids: Optional[Tensor] = None

    detach_value_features: bool = True
    """The critic reads the policy's features without moving them: a fresh value head's large early
    gradients would otherwise rewrite the actor's encoder (measured: KL > 100 in the first PPO update
    on MetaWorld). Set False to train shared features with the value loss too."""

    def __init__(self) -> None:
        super().__init__()
        self.value_head = None

    def _value(self, ctx: Any, features: Optional[Tensor] = None) -> Tensor:
        features = self.value_features(ctx) if features is None else features
        return self.value_head(features.detach() if self.detach_value_features else features)

    # -- to implement -----------------------------------------------------------------------
    def encode(self, obs: Obs) -> Any:
        """Per-observation context (computed once per chunk)."""
        raise NotImplementedError

    def value_features(self, ctx: Any) -> Tensor:
        """[B, F] features for the value head."""
        raise NotImplementedError

    def act(self, obs: Obs, cfg: Any, *, generator: Optional[torch.Generator] = None) -> ActOutput:
        """Samples action chunks for a batch of observations (rollouts and evaluation)."""
        raise NotImplementedError

    def evaluate(self, obs: Obs, chain: Any, *, with_value: bool = True) -> EvalOutput:
        """Re-scores stored sample records under the current parameters (differentiable)."""
        raise NotImplementedError

    def sft_loss(
        self, obs: Obs, actions: Tensor, *, generator: Optional[torch.Generator] = None, mask: Optional[Tensor] = None
    ) -> Tensor:
        """Supervised loss on demonstration chunks ``actions`` [B, H, D] (env units); ``mask`` [B, H] valid steps."""
        raise NotImplementedError

    def prepare(self, obs: dict[str, Any]) -> Obs:
        """Environment observation (numpy arrays, strings) -> model inputs on the policy's device.

        The default converts numeric arrays to tensors and drops text; policies that read
        instructions override it to tokenise ``obs["instruction"]``. The env's task ids become
        the policy's own where :meth:`bind_task_ids` mapped them.
        """
        device = self.device()
        out: Obs = {}
        for key, value in obs.items():
            if isinstance(value, Tensor):
                out[key] = value.to(device)
            elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
                out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(device)
        if self._task_ids is not None and "task" in out:
            out["task"] = self._task_ids.to(device)[out["task"].long()]
        return out

    def bind_task_ids(self, ids: Optional[Sequence[int]]) -> None:
        """Reads env task id ``i`` as the policy's ``ids[i]`` from now on (``prepare``); None: ids as they are."""
        self._task_ids = None if ids is None else torch.as_tensor(list(ids), dtype=torch.long)

    @property
    def action_shape(self) -> tuple[int, int]:
        return (self.action_horizon, self.action_dim)

    def attach_value_head(self, in_features: int, hidden: int = 256) -> ValueHead:
        """Adds a critic reading ``value_features``."""
        self.value_head = ValueHead(in_features, hidden)
        return self.value_head

    def device(self) -> torch.device:
        return next(self.parameters()).device

    def value(self, obs: Obs) -> Tensor:
        """[B] critic values."""
        if self.value_head is None:
            raise ValueError("this policy has no value head: call policy.attach_value_head(...)")
        return self._value(self.encode(obs))

    # -- normalisation (subclasses own an ``action_norm`` Normalizer) ----------------------------
    def normalize_actions(self, actions: Tensor) -> Tensor:
        norm = getattr(self, "action_norm", None)
        return norm(actions.float()) if norm is not None else actions.float()

    def unnormalize_actions(self, actions: Tensor) -> Tensor:
        norm = getattr(self, "action_norm", None)
        return norm.inverse(actions) if norm is not None else actions


class FlowPolicy(Policy):
    """Base class of all flow-matching policies (MLP, vision-language, π0 family)."""

    noise_head: Optional[NoiseHead]
    prior_head: Optional[PriorHead]
    """A learned prior N(mu(obs), I) for x^0 (:class:`~pirl.flow.PriorHead`), or None: x^0 ~ N(0, I)."""

    detach_noise_features: bool = True
    """The Flow-Noise head reads ``velocity``'s features without moving them: sigma's policy gradient (and an
    entropy bonus) would otherwise reshape the velocity network through the features it shares. Only gradients
    change: the sampled chains and their log-probs are the same. Set False to train shared features with sigma."""

    def __init__(self) -> None:
        super().__init__()
        self.noise_head = None
        self.prior_head = None

    # -- to implement -----------------------------------------------------------------------
    def encode(self, obs: Obs) -> Any:
        """Per-observation context (computed once per chunk, reused by every denoising step)."""
        raise NotImplementedError

    def velocity(self, ctx: Any, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(v [B, H, D], features [B, F]) for noisy chunk x at times t [B]."""
        raise NotImplementedError

    # -- provided ---------------------------------------------------------------------------
    def velocity_eps(self) -> float:
        """Relative precision of the velocity when some weights are below float32 (π0's bf16 backbone), else 0:
        the ratio-1 check's round-off scale grows with it (:func:`pirl.flow.log_prob_roundoff`)."""
        low = [p.dtype for p in self.parameters() if p.is_floating_point() and torch.finfo(p.dtype).bits < 32]
        return max((torch.finfo(d).eps for d in set(low)), default=0.0)

    def attach_noise_head(self, in_features: int, std_min: float = 0.08, std_max: float = 0.16) -> NoiseHead:
        """Adds a Flow-Noise head reading ``velocity``'s features, detached (``detach_noise_features``), and the
        time; trained by RL only."""
        self.noise_head = NoiseHead(in_features, self.action_shape, std_min=std_min, std_max=std_max)
        return self.noise_head

    @property
    def prior_feature_dim(self) -> int:
        """Width of ``value_features``, which the prior head reads."""
        return getattr(self, "value_feature_dim", None) or self.feature_dim

    def attach_prior_head(self, bound: float = 1.0) -> PriorHead:
        """Adds a learned prior for x^0 reading ``value_features`` (detached: RL moves the prior without reshaping
        the encoder through it); it starts as N(0, I), so actions are unchanged until RL trains it."""
        self.prior_head = PriorHead(self.prior_feature_dim, self.action_shape, bound=bound).to(self.device())
        return self.prior_head

    def prior_mean(self, ctx: Any, features: Optional[Tensor] = None) -> Optional[Tensor]:
        """[B, H, D] mean of x^0's prior, or None without a prior head; ``features``: ``value_features(ctx)`` when
        the caller has them already (π0's expert-read features cost a pass of the action expert)."""
        if self.prior_head is None:
            return None
        return self.prior_head((self.value_features(ctx) if features is None else features).detach())

    def _shared_features(self, ctx: Any, with_value: bool) -> Optional[Tensor]:
        """``value_features(ctx)`` once for both the prior and the critic when both read them, else None (each
        computes its own, if any)."""
        if self.prior_head is not None and with_value and self.value_head is not None:
            return self.value_features(ctx)
        return None

    def velocity_fn(self, ctx: Any, with_std: bool) -> flow.sampler.VelocityFn:
        """The closure the sampler calls: binds the encoded observation."""

        def fn(x: Tensor, t: Tensor):
            v, features = self.velocity(ctx, x, t)
            if with_std:
                if self.noise_head is None:
                    raise ValueError("method 'flow_noise' needs a noise head: call policy.attach_noise_head(...)")
                return v, self.noise_head(features.detach() if self.detach_noise_features else features, t)
            return v

        return fn

    def logp_mask(self, cfg: SamplerConfig, device: torch.device) -> Optional[Tensor]:
        """[H, D] mask of the chunk elements whose log-probs count (the executed actions)."""
        if cfg.logp_steps is None or cfg.logp_steps >= self.action_horizon:
            return None
        mask = torch.zeros(self.action_shape, dtype=torch.bool, device=device)
        mask[: cfg.logp_steps] = True
        return mask

    def sample_chain(
        self,
        obs: Obs,
        cfg: SamplerConfig,
        *,
        generator: Optional[torch.Generator] = None,
        ctx: Any = None,
        features: Optional[Tensor] = None,
    ) -> Chain:
        """A denoising chain [B, K+1, H, D] in normalised action space (``features``: see :meth:`prior_mean`)."""
        ctx = self.encode(obs) if ctx is None else ctx
        B = _batch_size(obs)
        device = self.device()
        x0 = torch.randn((B, *self.action_shape), generator=generator, device=device)
        init_mean = self.prior_mean(ctx, features)
        if init_mean is not None:
            x0 = init_mean + x0
        return flow.sample(
            self.velocity_fn(ctx, cfg.method == "flow_noise"),
            x0,
            steps=cfg.steps,
            method=cfg.method,
            noise_level=cfg.noise_level,
            sde_steps=cfg.sde_steps,
            generator=generator,
            reduce=cfg.reduce,
            mask=self.logp_mask(cfg, device),
            noise_where=cfg.noise_where,
            noise_steps=cfg.noise_steps,
            init_mean=init_mean,
        )

    @torch.no_grad()
    def act(self, obs: Obs, cfg: SamplerConfig, *, generator: Optional[torch.Generator] = None) -> ActOutput:
        """Samples an action chunk for a batch of observations (rollouts and evaluation)."""
        ctx = self.encode(obs)
        features = self._shared_features(ctx, True)
        chain = self.sample_chain(obs, cfg, generator=generator, ctx=ctx, features=features).detach()
        value = self._value(ctx, features) if self.value_head is not None else None
        return ActOutput(self.unnormalize_actions(chain.actions), chain, chain.log_prob, value)

    def evaluate(self, obs: Obs, chain: Chain, *, with_value: bool = True) -> EvalOutput:
        """Re-scores stored chains under the current parameters (differentiable).

        The entropy (Flow-Noise) averages 1/2 log(2 pi e sigma^2) over the transitions and the elements whose
        log-probs count (``chain.mask``: executed actions, the env's action dims): a bonus on padding or
        non-executed actions would only inflate sigma where it is never used (MATH.md). A chain drawn from a learned
        prior has its log N(x^0; mu, I) re-scored under the current prior.
        """
        ctx = self.encode(obs)
        features = self._shared_features(ctx, with_value) if chain.learned_prior else None
        with_std = chain.method == "flow_noise"
        lps, stds = flow.transition_log_probs(self.velocity_fn(ctx, with_std), chain, return_std=True)
        init_lp = chain.init_log_prob
        if chain.learned_prior:
            if self.prior_head is None:
                raise ValueError("these chains were drawn from a learned prior (x^0 ~ N(mu, I)) and this policy has no "
                                 "prior head to re-score them")
            init_lp = flow.init_log_prob(chain.xs[:, 0], self.prior_mean(ctx, features), chain.mask)
        log_prob = flow.aggregate(lps, chain.stochastic, init_lp, chain.method, chain.reduce, chain.learned_prior)
        entropy = None
        if with_std:
            ent = flow.gaussian_entropy(stds.clamp(min=1e-12))  # [B, K, ...]
            entropy = _masked_mean(ent, chain.mask, chain.stochastic)
        value = None
        if with_value and self.value_head is not None:
            value = self._value(ctx, features)
        terms = flow.num_terms(chain.stochastic, chain.method, chain.learned_prior) if chain.reduce == "mean" else None
        with torch.no_grad():
            roundoff = flow.log_prob_roundoff(chain, self.velocity_eps())
        return EvalOutput(log_prob, value, entropy, log_prob_terms=terms, roundoff=roundoff)

    def flow_matching_loss(
        self, obs: Obs, actions: Tensor, *, generator: Optional[torch.Generator] = None, mask: Optional[Tensor] = None
    ) -> Tensor:
        """SFT loss (MATH.md): ||v(x_t, t) - (eps - a)||^2 with t ~ Beta(1.5, 1) * 0.999 + 0.001.

        ``actions`` [B, H, D] are in the environment's units; ``mask`` [B, H] marks valid steps
        (chunks that run past an episode's end are padded).
        """
        if actions.shape[1:] != self.action_shape:
            raise ValueError(f"actions of shape {tuple(actions.shape)}; the policy predicts chunks {self.action_shape}")
        a = self.normalize_actions(actions)
        eps, t, x_t = flow_matching_sample(a, generator)
        v, _ = self.velocity(self.encode(obs), x_t, t)
        err = (v.float() - (eps - a)).square()
        if mask is None:
            return err.mean()
        m = mask.to(err.dtype).unsqueeze(-1).expand_as(err)
        return (err * m).sum() / m.sum().clamp(min=1)

    def sft_loss(
        self, obs: Obs, actions: Tensor, *, generator: Optional[torch.Generator] = None, mask: Optional[Tensor] = None
    ) -> Tensor:
        """The flow-matching loss (:meth:`flow_matching_loss`)."""
        return self.flow_matching_loss(obs, actions, generator=generator, mask=mask)


def flow_matching_sample(a: Tensor, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor, Tensor]:
    """(eps, t [B], x_t) for normalised chunks ``a`` [B, H, D]: eps ~ N(0, I), t ~ Beta(1.5, 1) * 0.999 + 0.001,
    x_t = t eps + (1 - t) a (MATH.md)."""
    eps = torch.randn(a.shape, generator=generator, device=a.device)
    u = torch.rand(a.shape[0], generator=generator, device=a.device)
    t = u.pow(1.0 / 1.5) * 0.999 + 0.001  # Beta(1.5, 1) by inverse CDF: F(t) = t^1.5
    tb = t.view(-1, *([1] * (a.dim() - 1)))
    return eps, t, tb * eps + (1 - tb) * a


def _masked_mean(x: Tensor, mask: Optional[Tensor], stochastic: Optional[Tensor] = None) -> Tensor:
    """[B] mean of x [B, K, ...] over the transitions ``stochastic`` [B, K] marks (None = all K) and the elements
    ``mask`` ([...] or per row [B, ...]) keeps."""
    m = torch.ones_like(x)
    if mask is not None:
        m = m * (mask.unsqueeze(1) if mask.dim() == x.dim() - 1 else mask).to(x.dtype)
    if stochastic is not None:
        m = m * stochastic.to(x.dtype).view(*stochastic.shape, *([1] * (x.dim() - 2)))
    return (x * m).flatten(1).sum(dim=1) / m.flatten(1).sum(dim=1).clamp(min=1)


def _batch_size(obs: Obs) -> int:
    for value in obs.values():
        if isinstance(value, Tensor):
            return value.shape[0]
    raise ValueError("observation has no tensor to take the batch size from")
