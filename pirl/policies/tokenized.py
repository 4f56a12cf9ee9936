"""Tokenized action head: every action element is one of ``bins`` discrete tokens (softmax).

Each dimension's normalised range [low_d, high_d] is split into ``bins`` equal bins
(default 256, the OpenVLA / RT-2 choice). A linear head predicts logits for all H x D
tokens of the chunk in parallel (factorised given the observation), trained by
cross-entropy on the demonstrations' bin indices. The log-probability of a sampled token
is its log-softmax, as RIPT-VLA does for QueST. With ``within_bin`` the action is drawn
uniformly inside its bin and the log-density adds -log(bin width), so actions are
continuous and densities comparable with the regression and flow heads; otherwise the
action is the bin centre.

Sampling temperature is ``HeadSamplerConfig.widen`` (logits / widen); whether the ratio
uses the tempered softmax is ``HeadSamplerConfig.ratio_density`` (see
:mod:`pirl.policies.heads`). The record stores the token indices, so re-scoring never
re-discretises a float action.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pirl.policies.base import Obs
from pirl.policies.heads import ActionSample, HeadPolicy, HeadPolicyConfig, HeadSamplerConfig, masked_mean


@dataclass(frozen=True)
class TokenizedPolicyConfig(HeadPolicyConfig):
    """A state-MLP softmax head over discretised action elements."""

    bins: int = 256
    """Tokens per action dimension."""
    bin_range: tuple[float, float] = (-3.0, 3.0)
    """Default [low, high] of every dimension in normalised (z-score) units; set_bin_range overrides it."""
    within_bin: bool = False
    """Sample uniformly inside the bin (continuous actions, density adds -log width); False = bin centres."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.bins, int) and self.bins >= 2):
            raise ValueError(f"bins must be an integer >= 2, got {self.bins!r}")
        lo, hi = self.bin_range
        if not lo < hi:
            raise ValueError(f"bin_range must satisfy low < high, got {self.bin_range}")


class TokenizedPolicy(HeadPolicy):
    """Logits [B, H, D, bins] from one linear head; actions are bin centres (or uniform within bins)."""

    def __init__(self, cfg: TokenizedPolicyConfig) -> None:
        super().__init__(cfg)
        self.cfg: TokenizedPolicyConfig = cfg
        self.logits_head = nn.Linear(cfg.hidden, cfg.action_horizon * cfg.action_dim * cfg.bins)
        # the bin edges travel with the weights, like the normaliser's statistics
        self.register_buffer("bin_low", torch.full((cfg.action_dim,), float(cfg.bin_range[0])))
        self.register_buffer("bin_high", torch.full((cfg.action_dim,), float(cfg.bin_range[1])))

    # -- discretisation ----------------------------------------------------------------------
    @property
    def bin_width(self) -> Tensor:
        """[D] width of a bin per dimension (normalised units)."""
        return (self.bin_high - self.bin_low) / self.cfg.bins

    def set_bin_range(self, low: Tensor, high: Tensor) -> None:
        """Bin range from action bounds in the environment's units, [D] each (e.g. data min / max)."""
        low = self.normalize_actions(torch.as_tensor(low, dtype=torch.float32).expand(self.action_dim))
        high = self.normalize_actions(torch.as_tensor(high, dtype=torch.float32).expand(self.action_dim))
        if not bool((low < high).all()):
            raise ValueError(f"bin range needs low < high in every dimension, got {low.tolist()} / {high.tolist()}")
        self.bin_low.copy_(low)
        self.bin_high.copy_(high)

    def tokenize(self, x: Tensor) -> Tensor:
        """Normalised actions [..., D] -> bin indices (values outside the range go to the end bins)."""
        idx = torch.floor((x.float() - self.bin_low) / self.bin_width)
        return idx.clamp(0, self.cfg.bins - 1).long()

    def detokenize(self, tokens: Tensor, offset: Optional[Tensor] = None) -> Tensor:
        """Bin indices [..., D] -> normalised actions: bin centres, or low + (idx + offset) x width."""
        pos = tokens.float() + (0.5 if offset is None else offset)
        return self.bin_low + pos * self.bin_width

    # -- the distribution --------------------------------------------------------------------
    def head(self, features: Tensor) -> Tensor:
        """Logits [B, H, D, bins]."""
        return self.logits_head(features).view(features.shape[0], *self.action_shape, self.cfg.bins).float()

    def element_log_prob(self, params: Tensor, sample: ActionSample) -> Tensor:
        if sample.tokens is None:
            raise ValueError("a tokenized policy re-scores records with token indices; this record has none")
        logp = F.log_softmax(params / sample.density_widen, dim=-1)
        lp = logp.gather(-1, sample.tokens.unsqueeze(-1)).squeeze(-1)
        if self.cfg.within_bin:
            lp = lp - torch.log(self.bin_width)
        return lp

    def element_entropy(self, params: Tensor, sample: ActionSample) -> Tensor:
        logp = F.log_softmax(params / sample.density_widen, dim=-1)
        ent = -(logp.exp() * logp).sum(-1)
        return ent + torch.log(self.bin_width) if self.cfg.within_bin else ent

    def draw(self, params: Tensor, cfg: HeadSamplerConfig, generator: Optional[torch.Generator]) -> ActionSample:
        if cfg.correlation:
            raise ValueError("the tokenized head draws independent tokens; a within-chunk correlation is for the "
                             "regression head (set it to 0)")
        if cfg.greedy:
            tokens = params.argmax(-1)
        else:
            # Gumbel-max: argmax(logits / T + Gumbel) is a draw from softmax(logits / T)
            u = torch.rand(params.shape, generator=generator, device=params.device).clamp(1e-20, 1.0 - 1e-7)
            gumbel = -torch.log(-torch.log(u))
            tokens = (params / cfg.widen + gumbel).argmax(-1)
        offset = None
        if self.cfg.within_bin and not cfg.greedy:
            offset = torch.rand(tokens.shape, generator=generator, device=params.device)
        return ActionSample(self.detokenize(tokens, offset), tokens, cfg.density_widen, cfg.logp_steps, cfg.log_prob_level)

    # -- supervised loss ---------------------------------------------------------------------
    def sft_loss(self, obs: Obs, actions: Tensor, *, generator: Optional[torch.Generator] = None,
                 mask: Optional[Tensor] = None) -> Tensor:
        """Cross-entropy of the demonstrations' bin indices, per element."""
        self._check_actions(actions)
        logits = self.params(self.encode(obs))
        target = self.tokenize(self.normalize_actions(actions))
        ce = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none").view(target.shape)
        return masked_mean(ce, mask)


def make_tokenized_policy(
    state_dim: int,
    action_dim: int,
    *,
    action_horizon: int = 4,
    num_tasks: int = 0,
    hidden: int = 256,
    depth: int = 3,
    bins: int = 256,
    bin_range: tuple[float, float] = (-3.0, 3.0),
    within_bin: bool = False,
    value_head: bool = True,
    state_clip: Optional[float] = None,
) -> TokenizedPolicy:
    """A tokenized-head policy (with its critic attached)."""
    cfg = TokenizedPolicyConfig(state_dim, action_dim, action_horizon, num_tasks, hidden, depth, state_clip=state_clip,
                                bins=bins, bin_range=bin_range, within_bin=within_bin)
    policy = TokenizedPolicy(cfg)
    if value_head:
        policy.attach_value_head(policy.feature_dim)
    return policy
