"""Shared machinery of the non-flow action heads (regression + scale, tokenized softmax).

RIPT-VLA's observation: LOOP (and PPO, GRPO) fine-tunes any policy whose action head gives
a probability. A head policy predicts, from one encoder pass, a factorised distribution
over the chunk's H x D elements; :class:`HeadPolicy` turns any such distribution into the
``act`` / ``evaluate`` pair the collector and the algorithms call, so the first PPO ratio of
every update is exactly 1 (both paths score the stored sample with the same function).

Two choices are recorded in every sample, so ``evaluate`` reproduces ``act`` exactly:

- ``widen``: exploration widening at sampling time (the regression head's scale is
  multiplied by it; the tokenized head's logits are divided by it, a softmax temperature).
- ``ratio_density``: which density the log-probs (and so the PPO ratio) use.
  ``"behaviour"`` (default) scores the widened distribution the actions were really drawn
  from: the ratio is a true importance ratio and the gradient is the policy gradient of the
  executed policy. ``"nominal"`` scores the unwidened distribution, as RIPT-VLA does: the
  widening then acts as pure exploration noise the objective does not see. With
  ``widen == 1`` the two coincide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from pirl.flow import SamplerConfig
from pirl.policies.base import ActOutput, EvalOutput, Normalizer, Obs, Policy, flow_matching_sample

RatioDensity = Literal["behaviour", "nominal"]

FLOW_STD = 1.0 / math.sqrt(12.0)
"""The pinned std (normalised units) of a head whose network SFT trained as a flow denoiser (regression loss=flow,
tokenized loss=flow): Flow-SDE's last-transition std at a = 1, K = 4, the exploration its measurement used."""


@dataclass(frozen=True)
class HeadSamplerConfig:
    """How a head policy draws an action chunk during rollouts."""

    greedy: bool = False
    """True: the distribution's mode (regression mean, softmax argmax), used for evaluation."""
    widen: float = 1.0
    """Exploration widening at sampling time: regression scale x widen; tokenized logits / widen."""
    ratio_density: RatioDensity = "behaviour"
    """behaviour: log-probs of the widened density actions are drawn from; nominal: of the unwidened one (RIPT-VLA)."""
    logp_steps: Optional[int] = None
    """Leading actions of the chunk that count in log-probs (the executed ones); None = all H."""
    log_prob_level: Literal["chunk", "element"] = "chunk"
    """chunk: one log-prob per chunk [B] (sum over counted elements); element: [B, M] for PPO's element ratio."""
    correlation: float = 0.0
    """Correlation c in [0, 1) of the exploration noise between the actions of one chunk, so that a chunk explores
    as one coherent offset rather than as independent jitter. Regression head: each action dimension gets a shared
    draw of variance c plus an own draw of variance 1 - c. Tokenized head: each action's tokens are drawn given the
    chunk's earlier ones, from its softmax times that Gaussian's conditional kernel (see
    :mod:`pirl.policies.tokenized`). 0 = independent elements."""

    def __post_init__(self) -> None:
        if not (isinstance(self.widen, (int, float)) and self.widen > 0):
            raise ValueError(f"widen must be a number > 0, got {self.widen!r}")
        if self.ratio_density not in ("behaviour", "nominal"):
            raise ValueError(f"ratio_density must be 'behaviour' or 'nominal', got {self.ratio_density!r}")
        if self.logp_steps is not None and self.logp_steps < 1:
            raise ValueError(f"logp_steps must be >= 1 or None, got {self.logp_steps}")
        if self.log_prob_level not in ("chunk", "element"):
            raise ValueError(f"log_prob_level must be 'chunk' or 'element', got {self.log_prob_level!r}")
        if not (isinstance(self.correlation, (int, float)) and 0.0 <= self.correlation < 1.0):
            raise ValueError(f"correlation must be a number in [0, 1), got {self.correlation!r}")

    def deterministic(self) -> "HeadSamplerConfig":
        """The greedy version, used for evaluation and deployment."""
        return replace(self, greedy=True)

    @property
    def density_widen(self) -> float:
        """The widening the log-probs use."""
        return self.widen if self.ratio_density == "behaviour" else 1.0


def as_head_sampler(cfg: Union[HeadSamplerConfig, SamplerConfig]) -> HeadSamplerConfig:
    """Accepts a flow ``SamplerConfig`` too: 'ode' means greedy; ``logp_steps`` carries over."""
    if isinstance(cfg, HeadSamplerConfig):
        return cfg
    if isinstance(cfg, SamplerConfig):
        return HeadSamplerConfig(greedy=cfg.method == "ode", logp_steps=cfg.logp_steps)
    raise TypeError(f"a head policy samples with a HeadSamplerConfig (or a flow SamplerConfig), got {type(cfg).__name__}")


@dataclass
class ActionSample:
    """A head policy's sample record: what ``evaluate`` needs to re-score a rollout's chunks.

    The algorithms treat it as opaque (``index``, ``cat``, ``to``), like a flow chain.
    """

    actions: Tensor
    """[B, H, D] float32 sampled chunk in the policy's normalised action space."""
    tokens: Optional[Tensor]
    """[B, H, D] int64 bin indices (tokenized head), else None."""
    density_widen: float
    """Widening of the density the log-probs use (1.0 = nominal)."""
    logp_steps: Optional[int]
    """Leading actions that count in the log-probs; None = all."""
    log_prob_level: str = "chunk"
    """'chunk' ([B] log-probs) or 'element' ([B, M])."""
    correlation: float = 0.0
    """Within-chunk correlation of the sampling noise (regression head; 0 = independent elements)."""

    def _meta(self) -> tuple:
        return (self.density_widen, self.logp_steps, self.log_prob_level, self.tokens is None, self.correlation)

    def index(self, idx: Union[Tensor, slice]) -> "ActionSample":
        return replace(self, actions=self.actions[idx], tokens=self.tokens[idx] if self.tokens is not None else None)

    def to(self, device: Union[torch.device, str]) -> "ActionSample":
        return replace(self, actions=self.actions.to(device), tokens=self.tokens.to(device) if self.tokens is not None else None)

    def detach(self) -> "ActionSample":
        return replace(self, actions=self.actions.detach())

    @staticmethod
    def cat(samples: Sequence["ActionSample"]) -> "ActionSample":
        """Concatenates records drawn with the same settings along the batch."""
        first = samples[0]
        if any(s._meta() != first._meta() for s in samples[1:]):
            raise ValueError("cannot concatenate samples drawn with different widening, logp_steps, log-prob level "
                             "or correlation")
        tokens = torch.cat([s.tokens for s in samples]) if first.tokens is not None else None
        return replace(first, actions=torch.cat([s.actions for s in samples]), tokens=tokens)


@dataclass(frozen=True)
class HeadPolicyConfig:
    """Encoder and chunk shape shared by the head policies (the CPU flow policy's state MLP)."""

    state_dim: int
    """Size of the observation's ``state`` vector."""
    action_dim: int
    """D, action dimensions."""
    action_horizon: int = 4
    """H, actions per chunk."""
    num_tasks: int = 0
    """> 0 adds a learned task embedding read from the observation's ``task`` index."""
    hidden: int = 256
    """Width of every hidden layer."""
    depth: int = 3
    """Hidden layers of the trunk between the encoder and the heads."""
    state_clip: Optional[float] = None
    """Normalised state values are clipped to +-state_clip; None (checkpoints from before it existed) leaves them
    unbounded. RL rollouts leave the demonstrations' range (see SFTConfig.state_clip)."""
    time_dim: int = 32
    """Denoiser-trained heads: size of the time embedding the trunk reads during SFT."""
    denoiser_inputs: bool = False
    """The trunk's first layer also reads the time and a noisy chunk: a head whose network SFT trains as a denoiser
    (regression and tokenized loss=flow). After SFT they are folded into its bias
    (:meth:`HeadPolicy.fold_denoiser`), leaving the plain head's network."""

    def __post_init__(self) -> None:
        for name in ("state_dim", "action_dim", "action_horizon", "hidden", "depth", "time_dim"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.num_tasks < 0:
            raise ValueError(f"num_tasks must be >= 0, got {self.num_tasks}")


class HeadPolicy(Policy):
    """obs["state"] [B, S] (+ obs["task"] [B]) -> a factorised distribution over chunks [B, H, D].

    Subclasses implement :meth:`head` (distribution parameters from trunk features),
    :meth:`element_log_prob`, :meth:`draw`, :meth:`element_entropy` and ``sft_loss``.
    """

    def __init__(self, cfg: HeadPolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.action_horizon, self.action_dim = cfg.action_horizon, cfg.action_dim
        self.state_norm = Normalizer(cfg.state_dim, clip=cfg.state_clip)
        self.action_norm = Normalizer(cfg.action_dim)
        h = cfg.hidden
        self.task_embed = nn.Embedding(cfg.num_tasks, h) if cfg.num_tasks > 0 else None
        self.obs_encoder = nn.Sequential(nn.Linear(cfg.state_dim, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU())
        layers: list[nn.Module] = []
        for _ in range(cfg.depth):
            layers += [nn.Linear(h, h), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)
        if cfg.denoiser_inputs:
            self.trunk[0] = nn.Linear(h + cfg.time_dim + cfg.action_horizon * cfg.action_dim, h)
        self.feature_dim = h

    # -- to implement -----------------------------------------------------------------------
    def head(self, features: Tensor) -> Any:
        """Distribution parameters from trunk features [B, F]."""
        raise NotImplementedError

    def element_log_prob(self, params: Any, sample: ActionSample) -> Tensor:
        """[B, H, D] float32 log-density of the stored sample, at the sample's density widening."""
        raise NotImplementedError

    def draw(self, params: Any, cfg: HeadSamplerConfig, generator: Optional[torch.Generator]) -> ActionSample:
        """Samples (or takes the mode of) the distribution; fills in the record's settings."""
        raise NotImplementedError

    def element_entropy(self, params: Any, sample: ActionSample) -> Tensor:
        """[B, H, D] entropy of each element's distribution at the sample's density (widening, correlation); with
        correlated elements, of each element given the chunk's earlier ones, so that they sum to the joint's."""
        raise NotImplementedError

    @property
    def output_layer(self) -> nn.Module:
        """The layer that maps trunk features to the distribution's parameters (what head.freeze_output fixes)."""
        raise NotImplementedError

    # -- provided ---------------------------------------------------------------------------
    def encode(self, obs: Obs) -> Tensor:
        if "state" not in obs:
            raise ValueError(f"{type(self).__name__} needs obs['state']; got keys {sorted(obs)}")
        state = obs["state"].float()
        if state.dim() != 2 or state.shape[1] != self.cfg.state_dim:
            raise ValueError(f"obs['state'] has shape {tuple(state.shape)}; expected [B, {self.cfg.state_dim}]")
        z = self.obs_encoder(self.state_norm(state))
        if self.task_embed is not None:
            if "task" not in obs:
                raise ValueError(f"a multi-task {type(self).__name__} needs obs['task'] (task index per sample)")
            z = z + self.task_embed(obs["task"].long())
        return z

    def value_features(self, ctx: Tensor) -> Tensor:
        return ctx

    def params(self, ctx: Tensor) -> Any:
        """Distribution parameters for encoded observations."""
        return self.head(self.features(ctx))

    def features(self, ctx: Tensor) -> Tensor:
        """Trunk features [B, F] of encoded observations (with denoiser inputs: the denoiser's at x = 0, t = 1)."""
        if not self.cfg.denoiser_inputs:
            return self.trunk(ctx)
        B = ctx.shape[0]
        zeros = torch.zeros(B, self.action_horizon * self.action_dim, device=ctx.device, dtype=ctx.dtype)
        return self.denoiser_features(ctx, zeros, torch.ones(B, device=ctx.device))

    def denoiser_features(self, ctx: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Trunk features [B, F] of encoded observations, a noisy chunk x [B, H, D] and the time t [B] (SFT of a
        denoiser-trained head)."""
        from pirl.policies.mlp import sincos_embedding

        if not self.cfg.denoiser_inputs:
            raise ValueError(f"this {type(self).__name__}'s denoiser inputs were folded away after its SFT (or it "
                             "never had them); SFT a new denoiser-trained head")
        return self.trunk(torch.cat([ctx, sincos_embedding(t, self.cfg.time_dim), x.reshape(x.shape[0], -1)], dim=-1))

    def flow_matching_loss(self, obs: Obs, actions: Tensor, out: nn.Linear, *,
                           generator: Optional[torch.Generator] = None, mask: Optional[Tensor] = None) -> Tensor:
        """Flow-matching loss of the denoiser whose output layer is ``out``: its output at (x_t, t) regresses on
        a - eps (MATH.md), for demonstration chunks [B, H, D]."""
        a = self.normalize_actions(actions)
        eps, t, x_t = flow_matching_sample(a, generator)
        pred = out(self.denoiser_features(self.encode(obs), x_t, t)).view(a.shape).float()
        return masked_mean((pred - (a - eps)).square(), mask)

    @torch.no_grad()
    def fold_denoiser(self) -> None:
        """Folds the constant inputs t = 1, x = 0 into the first layer's bias: the same distribution (to float32
        round-off) from the plain head's network. RL then moves that bias as one parameter per unit; left unfolded,
        Adam moves each of its time-embedding weights as far. Measured under LOOP (flow-trained regression head):
        +2 / +8 folded against -7 / +0 unfolded from the same SFT policies (bench/results/heads_metaworld.md).
        A no-op for a head without denoiser inputs."""
        if not self.cfg.denoiser_inputs:
            return
        from pirl.policies.mlp import sincos_embedding

        h, first = self.cfg.hidden, self.trunk[0]
        emb = sincos_embedding(torch.ones(1, device=first.weight.device), self.cfg.time_dim)[0]
        folded = nn.Linear(h, h).to(first.weight.device)
        folded.weight.copy_(first.weight[:, :h])
        folded.bias.copy_(first.bias + first.weight[:, h : h + emb.numel()] @ emb)
        self.trunk[0] = folded
        self.cfg = replace(self.cfg, denoiser_inputs=False)

    def logp_mask(self, logp_steps: Optional[int], device: torch.device) -> Optional[Tensor]:
        """[H, D] mask of the chunk elements whose log-probs count (the executed actions)."""
        if logp_steps is None or logp_steps >= self.action_horizon:
            return None
        mask = torch.zeros(self.action_shape, dtype=torch.bool, device=device)
        mask[:logp_steps] = True
        return mask

    def reduce_log_prob(self, lp: Tensor, sample: ActionSample) -> Tensor:
        """Per-element [B, H, D] -> [B] (chunk) or [B, M] (element) over the counted elements."""
        if sample.logp_steps is not None:
            lp = lp[:, : sample.logp_steps]
        return lp.sum(dim=(1, 2)) if sample.log_prob_level == "chunk" else lp.flatten(1)

    @torch.no_grad()
    def act(
        self, obs: Obs, cfg: Union[HeadSamplerConfig, SamplerConfig], *, generator: Optional[torch.Generator] = None
    ) -> ActOutput:
        """Samples action chunks (unnormalised) and their log-probs under the recorded density."""
        cfg = as_head_sampler(cfg)
        ctx = self.encode(obs)
        params = self.params(ctx)
        sample = self.draw(params, cfg, generator).detach()
        log_prob = self.reduce_log_prob(self.element_log_prob(params, sample), sample)
        value = self._value(ctx) if self.value_head is not None else None
        return ActOutput(self.unnormalize_actions(sample.actions), sample, log_prob, value)

    def evaluate(self, obs: Obs, chain: ActionSample, *, with_value: bool = True) -> EvalOutput:
        """Re-scores stored samples under the current parameters (differentiable)."""
        if not isinstance(chain, ActionSample):
            raise TypeError(f"{type(self).__name__}.evaluate needs an ActionSample record, got {type(chain).__name__}")
        ctx = self.encode(obs)
        params = self.params(ctx)
        log_prob = self.reduce_log_prob(self.element_log_prob(params, chain), chain)
        ent = self.element_entropy(params, chain)
        if chain.logp_steps is not None:
            ent = ent[:, : chain.logp_steps]
        value = self._value(ctx) if with_value and self.value_head is not None else None
        return EvalOutput(log_prob, value, ent.flatten(1).mean(dim=1))

    def _check_actions(self, actions: Tensor) -> None:
        if actions.shape[1:] != self.action_shape:
            raise ValueError(f"actions of shape {tuple(actions.shape)}; the policy predicts chunks {self.action_shape}")


def conditional_log_var(c: float, horizon: int, device: torch.device) -> Tensor:
    """[H] log-variance of a standardised element given the chunk's earlier ones, when the H elements are
    equicorrelated with correlation c: (1 - c)(1 + k c) / (1 - c + k c) for the k-th."""
    k = torch.arange(horizon, device=device, dtype=torch.float32)
    return math.log1p(-c) + torch.log1p(k * c) - torch.log1p(-c + k * c)


def conditional_mean(e: Tensor, c: float) -> Tensor:
    """[B, H, D] mean of each standardised element e [B, H, D] given the chunk's earlier ones (equicorrelation c
    along H): c S / (1 - c + k c), S the sum of the k earlier ones."""
    k = torch.arange(e.shape[1], device=e.device, dtype=torch.float32).view(1, -1, 1)
    return c * (torch.cumsum(e, dim=1) - e) / (1.0 - c + k * c)


def masked_mean(err: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean of err [B, H, ...] over the valid steps mask [B, H] (None = all)."""
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype).view(*mask.shape, *([1] * (err.dim() - 2))).expand_as(err)
    return (err * m).sum() / m.sum().clamp(min=1)
