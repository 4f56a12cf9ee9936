"""Learned noise network for Flow-Noise: features -> bounded per-element std."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class NoiseHead(nn.Module):
    """Maps features [B, F] (or [B, H, F]) to a std in [std_min, std_max].

    The raw output is tanh-squashed and mapped linearly onto the log-variance range
    [log std_min^2, log std_max^2], so the std can neither collapse nor explode
    (πRL's π0 reference: 0.08-0.16). The last layer starts at zero, so a fresh head
    outputs the geometric middle of the range.
    """

    def __init__(
        self,
        in_features: int,
        out_shape: tuple[int, ...],
        *,
        hidden: int = 128,
        std_min: float = 0.08,
        std_max: float = 0.16,
    ) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.set_range(std_min, std_max)
        out = math.prod(self.out_shape)
        self.net = nn.Sequential(nn.Linear(in_features + 1, hidden), nn.SiLU(), nn.Linear(hidden, out))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def set_range(self, std_min: float, std_max: float) -> None:
        """Bounds of the std; the network's squashed output keeps its place between them."""
        if not (0 < std_min < std_max):
            raise ValueError(f"need 0 < std_min < std_max, got std_min={std_min}, std_max={std_max}")
        self.log_var_min = 2.0 * math.log(std_min)
        self.log_var_max = 2.0 * math.log(std_max)

    @property
    def std_range(self) -> tuple[float, float]:
        return math.exp(0.5 * self.log_var_min), math.exp(0.5 * self.log_var_max)

    def forward(self, features: Tensor, t: Tensor) -> Tensor:
        """std of shape [B, *out_shape] (float32) for features [B, F] at times t [B]."""
        h = torch.cat([features.float(), t.float().view(-1, 1)], dim=-1)
        squashed = torch.tanh(self.net(h))
        log_var = self.log_var_min + 0.5 * (squashed + 1.0) * (self.log_var_max - self.log_var_min)
        return torch.exp(0.5 * log_var).view(-1, *self.out_shape)


class PriorHead(nn.Module):
    """A learned prior for x^0: features [B, F] -> the mean of N(mu, I) that a chunk's starting noise is drawn from.

    A few-shot flow policy's spread comes mostly from x^0 (which mode a chunk comes from), and no transition's
    log-prob credits it; with this prior the chain's likelihood includes log N(x^0; mu, I), so RL can move mu towards
    the starting noise of chunks that succeed (noise-space steering). mu = bound * tanh(raw) stays where the velocity
    network has seen noise during SFT; the last layer starts at zero, so a fresh head is the standard normal prior
    and changes no action.
    """

    def __init__(self, in_features: int, out_shape: tuple[int, ...], *, hidden: int = 128, bound: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"the prior mean's bound must be a finite number > 0, got {bound!r}")
        self.out_shape, self.bound = tuple(out_shape), float(bound)
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, math.prod(self.out_shape)))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: Tensor) -> Tensor:
        """mu of shape [B, *out_shape] (float32)."""
        return (self.bound * torch.tanh(self.net(features.float()))).view(-1, *self.out_shape)
