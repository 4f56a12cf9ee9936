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

``loss="flow"`` (``pirl sft policy=tokenized tokenized_loss=flow``) trains the network as the
regression head's ``loss="flow"`` does: the trunk also reads a noisy chunk and the time, and an
auxiliary output layer regresses on a - eps (flow matching). After SFT the time and zero noise
fold into the first bias, and the logits layer is set to the discretised Gaussian of the
one-step mean mu(s) = w.f + b with std ``FLOW_STD``: logits_k = (c_k mu - c_k^2 / 2) / std^2 for
bin centres c_k, which is linear in the features f. At temperature 1 it is the flow-trained
regression head's distribution to the bins' resolution, and it keeps that network, whose
updates carry across states; cross-entropy leaves one whose do not. Under LOOP on MetaWorld
reach + push it lifted +10 / +17 / +12 / +13 (4 seeds) with the logits layer frozen during RL
(``HeadOptions.freeze_output``, its default: the action moves through the features, the softmax
stays the Gaussian), +3 / +8 / +7 / +5 with it trained: RL's bin-local logit updates take the
softmax off the Gaussian (bench/results/heads_metaworld.md).

``HeadSamplerConfig.correlation = c > 0`` draws a chunk's actions one after another, each
action's tokens from its softmax reweighted by a Gaussian kernel around where the chunk's earlier
tokens point (:meth:`TokenizedPolicy._conditional_logits`): an autoregressive token distribution
whose exact log-prob is the sum of the conditionals' log-softmax. For a Gaussian-shaped softmax
it is the regression head's correlated Gaussian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pirl.policies.base import Obs
from pirl.policies.heads import (FLOW_STD, ActionSample, HeadPolicy, HeadPolicyConfig, HeadSamplerConfig,
                                 conditional_log_var, conditional_mean, masked_mean)


@dataclass(frozen=True)
class TokenizedPolicyConfig(HeadPolicyConfig):
    """A state-MLP softmax head over discretised action elements."""

    bins: int = 256
    """Tokens per action dimension."""
    bin_range: tuple[float, float] = (-3.0, 3.0)
    """Default [low, high] of every dimension in normalised (z-score) units; set_bin_range overrides it."""
    within_bin: bool = False
    """Sample uniformly inside the bin (continuous actions, density adds -log width); False = bin centres."""
    loss: Literal["ce", "flow"] = "ce"
    """SFT loss: ce, cross-entropy of the demonstrations' tokens; flow, the trunk and an auxiliary mean layer train
    as a flow's denoiser, after which the softmax is set to that mean's Gaussian of std FLOW_STD discretised over
    the bins (see the module's docstring)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.bins, int) and self.bins >= 2):
            raise ValueError(f"bins must be an integer >= 2, got {self.bins!r}")
        lo, hi = self.bin_range
        if not lo < hi:
            raise ValueError(f"bin_range must satisfy low < high, got {self.bin_range}")
        if self.loss not in ("ce", "flow"):
            raise ValueError(f"loss must be 'ce' or 'flow', got {self.loss!r}")
        if self.denoiser_inputs and self.loss != "flow":
            raise ValueError(f"denoiser_inputs is for loss='flow', not {self.loss!r}")


class TokenizedPolicy(HeadPolicy):
    """Logits [B, H, D, bins] from one linear head; actions are bin centres (or uniform within bins)."""

    def __init__(self, cfg: TokenizedPolicyConfig) -> None:
        super().__init__(cfg)
        self.cfg: TokenizedPolicyConfig = cfg
        self.logits_head = nn.Linear(cfg.hidden, cfg.action_horizon * cfg.action_dim * cfg.bins)
        # loss=flow: the denoiser's output layer during SFT; folded into the logits after it
        self.flow_head = nn.Linear(cfg.hidden, cfg.action_horizon * cfg.action_dim) if cfg.denoiser_inputs else None
        # the bin edges travel with the weights, like the normaliser's statistics
        self.register_buffer("bin_low", torch.full((cfg.action_dim,), float(cfg.bin_range[0])))
        self.register_buffer("bin_high", torch.full((cfg.action_dim,), float(cfg.bin_range[1])))

    @property
    def output_layer(self) -> nn.Module:
        return self.logits_head

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
        """Logits [B, H, D, bins] (during a loss=flow SFT: those its fold will write)."""
        logits = self.logits_head(features) if self.flow_head is None else F.linear(features, *self._flow_logits())
        return logits.view(features.shape[0], *self.action_shape, self.cfg.bins).float()

    def _flow_logits(self) -> tuple[Tensor, Tensor]:
        """(weight, bias) of the logits layer whose softmax is N(mu, FLOW_STD^2) over the bins, mu = w.f + b the flow
        denoiser's output layer: logits_k = (c_k mu - c_k^2 / 2) / std^2 for bin centres c_k, linear in f."""
        H, D, K = self.action_horizon, self.action_dim, self.cfg.bins
        centres = self._centres()
        w = self.flow_head.weight.view(H, D, 1, -1)
        b = self.flow_head.bias.view(H, D, 1)
        var = FLOW_STD**2
        weight = (centres.view(1, D, K, 1) * w / var).reshape(H * D * K, -1)
        return weight, ((centres * b - 0.5 * centres**2) / var).reshape(-1)

    def element_log_prob(self, params: Tensor, sample: ActionSample) -> Tensor:
        if sample.tokens is None:
            raise ValueError("a tokenized policy re-scores records with token indices; this record has none")
        logits = params / sample.density_widen
        if sample.correlation:
            logits = self._conditional_logits(logits, sample.tokens, sample.correlation, sample.density_widen)
        lp = F.log_softmax(logits, dim=-1).gather(-1, sample.tokens.unsqueeze(-1)).squeeze(-1)
        if self.cfg.within_bin:
            lp = lp - torch.log(self.bin_width)
        return lp

    def element_entropy(self, params: Tensor, sample: ActionSample) -> Tensor:
        logits = params / sample.density_widen
        if sample.correlation:
            logits = self._conditional_logits(logits, sample.tokens, sample.correlation, sample.density_widen)
        logp = F.log_softmax(logits, dim=-1)
        ent = -(logp.exp() * logp).sum(-1)
        return ent + torch.log(self.bin_width) if self.cfg.within_bin else ent

    def _centres(self) -> Tensor:
        """[D, bins] bin centres (normalised units)."""
        K = self.cfg.bins
        return self.detokenize(torch.arange(K, device=self.bin_low.device).view(-1, 1).expand(-1, self.action_dim)).T

    def _conditional_logits(self, logits: Tensor, tokens: Tensor, c: float, temperature: float,
                            mean: Optional[Tensor] = None) -> Tensor:
        """[B, H, D, bins] logits of each token of a chunk-correlated draw given the chunk's earlier tokens: the
        element's own logits plus a Gaussian kernel over the bins (a product of experts), whose centre and width
        make the product of N(mu, s^2) with it the equicorrelated Gaussian's conditional N(mu + m s, v s^2):
        m = c S / (1 - c + k c), v = (1 - c)(1 + k c) / (1 - c + k c), S the sum of the k earlier tokens'
        offsets from their softmax's mean mu in units of s. s is fixed, FLOW_STD x sqrt(temperature): the
        flow-trained head's std (exact there, the regression head's correlated Gaussian and its gradient); the
        softmax's own std would make the kernel's sensitivity grow as 1 / std^2 once RL sharpens a softmax (a
        first-update approx-KL of 3e5 measured). Other shapes are reweighted, never sharpened: the logits enter
        with weight 1. ``mean``: the softmax's mean [B, H, D], when the caller has it (it does not depend on the
        tokens)."""
        s = FLOW_STD * math.sqrt(temperature)
        centres = self._centres()
        if mean is None:
            mean = (logits.softmax(-1) * centres).sum(-1)
        m = conditional_mean((self.detokenize(tokens) - mean) / s, c).unsqueeze(-1)
        v = torch.exp(conditional_log_var(c, logits.shape[1], logits.device)).view(1, -1, 1, 1)
        offset = (centres - mean.unsqueeze(-1)) / s  # [B, H, D, bins]
        # -((1 - v) x - m)^2 / (2 v (1 - v)) in units of s; the first action (v = 1, m = 0) gets none
        kernel = -((1 - v) * offset - m).square() / (2 * v * (1 - v).clamp(min=1e-6))
        return logits + kernel

    def draw(self, params: Tensor, cfg: HeadSamplerConfig, generator: Optional[torch.Generator]) -> ActionSample:
        correlation = 0.0 if cfg.greedy else cfg.correlation
        if cfg.greedy:
            tokens = params.argmax(-1)
        else:
            logits = params / cfg.widen
            u = torch.rand(params.shape, generator=generator, device=params.device).clamp(1e-20, 1.0 - 1e-7)
            gumbel = -torch.log(-torch.log(u))  # Gumbel-max: argmax(logits + Gumbel) is a draw from softmax(logits)
            if correlation:  # one action at a time, each given the chunk's earlier ones
                tokens = torch.zeros(params.shape[:-1], dtype=torch.long, device=params.device)
                mean = (logits.softmax(-1) * self._centres()).sum(-1)  # once: the steps share it
                for t in range(self.action_horizon):
                    cond = self._conditional_logits(logits, tokens, correlation, cfg.widen, mean)[:, t]
                    tokens[:, t] = (cond + gumbel[:, t]).argmax(-1)
            else:
                tokens = (logits + gumbel).argmax(-1)
        offset = None
        if self.cfg.within_bin and not cfg.greedy:
            offset = torch.rand(tokens.shape, generator=generator, device=params.device)
        return ActionSample(self.detokenize(tokens, offset), tokens, cfg.density_widen, cfg.logp_steps,
                            cfg.log_prob_level, correlation)

    # -- supervised loss ---------------------------------------------------------------------
    def sft_loss(self, obs: Obs, actions: Tensor, *, generator: Optional[torch.Generator] = None,
                 mask: Optional[Tensor] = None) -> Tensor:
        """Cross-entropy of the demonstrations' bin indices, per element (loss=flow: the denoiser's flow-matching
        loss)."""
        self._check_actions(actions)
        if self.cfg.loss == "flow":
            return self.flow_matching_loss(obs, actions, self.flow_head, generator=generator, mask=mask)
        logits = self.params(self.encode(obs))
        target = self.tokenize(self.normalize_actions(actions))
        ce = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none").view(target.shape)
        return masked_mean(ce, mask)

    @torch.no_grad()
    def fold_denoiser(self) -> None:
        """After a loss=flow SFT: folds t = 1, x = 0 into the first bias (:meth:`HeadPolicy.fold_denoiser`) and
        writes the discretised Gaussian of the denoiser's one-step mean into the logits layer (:meth:`_flow_logits`),
        dropping the auxiliary output layer: the same distribution from the plain tokenized network. A no-op for a
        head without denoiser inputs."""
        if not self.cfg.denoiser_inputs:
            return
        super().fold_denoiser()
        weight, bias = self._flow_logits()
        self.logits_head.weight.copy_(weight)
        self.logits_head.bias.copy_(bias)
        self.flow_head = None


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
    loss: Literal["ce", "flow"] = "ce",
    value_head: bool = True,
    state_clip: Optional[float] = None,
) -> TokenizedPolicy:
    """A tokenized-head policy (with its critic attached)."""
    cfg = TokenizedPolicyConfig(state_dim, action_dim, action_horizon, num_tasks, hidden, depth, state_clip=state_clip,
                                bins=bins, bin_range=bin_range, within_bin=within_bin, loss=loss,
                                denoiser_inputs=loss == "flow")
    policy = TokenizedPolicy(cfg)
    if value_head:
        policy.attach_value_head(policy.feature_dim)
    return policy
