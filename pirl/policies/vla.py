"""A vision-language flow policy built like π0, in miniature (trainable on 2 CPU cores).

Prefix: image patch tokens (a small conv stem), word tokens of the instruction, one
state token; a bidirectional transformer over them (the "VLM"). Suffix: one token per
action of the chunk, fused with the flow time (π0's action-time MLP), processed by an
action expert whose layer l attends to the prefix's hidden states after layer l plus the
action tokens. ``encode`` runs the prefix once and caches every layer's keys/values;
``velocity`` reuses the cache for each denoising step.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pirl.policies.base import FlowPolicy, Normalizer, Obs
from pirl.policies.mlp import sincos_embedding


@dataclass(frozen=True)
class VLAPolicyConfig:
    """Shape of :class:`VLAFlowPolicy`."""

    state_dim: int
    """Size of obs['state']."""
    action_dim: int
    """D, action dimensions."""
    action_horizon: int = 4
    """H, actions per chunk (one action token each)."""
    image_size: int = 64
    """Expected obs['image'] height and width."""
    patch: int = 8
    """Image patch size of the conv stem (tokens = (image_size / patch)^2)."""
    width: int = 96
    """Token width of prefix and action expert."""
    heads: int = 4
    """Attention heads."""
    layers: int = 2
    """Transformer layers of the prefix encoder (the action expert has as many)."""
    vocab_size: int = 1024
    """Hashed word vocabulary (0 is padding)."""
    max_words: int = 16
    """Instruction tokens kept (longer instructions are cut)."""
    time_dim: int = 32
    """Size of the sinusoidal time embedding."""
    state_clip: Optional[float] = None
    """Normalised state values are clipped to +-state_clip; None (checkpoints from before it existed) leaves them
    unbounded. RL rollouts leave the demonstrations' range (see SFTConfig.state_clip)."""


def tokenize(texts: Any, vocab_size: int, max_words: int) -> tuple[np.ndarray, np.ndarray]:
    """Word-level hashed tokens [B, max_words] int64 and mask [B, max_words] bool.

    Lower-cased words hashed with CRC32 into 1..vocab_size-1: no vocabulary file to ship,
    the same ids on every machine, and collisions are rare for instruction-sized vocabularies.
    """
    texts = [str(t) for t in np.asarray(texts, dtype=object).reshape(-1)]
    tokens = np.zeros((len(texts), max_words), dtype=np.int64)
    for i, text in enumerate(texts):
        words = re.findall(r"[a-z0-9]+", text.lower())[:max_words]
        tokens[i, : len(words)] = [1 + zlib.crc32(w.encode()) % (vocab_size - 1) for w in words]
    return tokens, tokens > 0


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def split(self, x: Tensor) -> Tensor:
        B, T, W = x.shape
        return x.view(B, T, self.heads, W // self.heads).transpose(1, 2)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def attend(self, x: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor]) -> Tensor:
        B, T, W = x.shape
        mask = None if key_mask is None else key_mask[:, None, None, :]
        o = F.scaled_dot_product_attention(self.split(self.q(x)), k, v, attn_mask=mask)
        return self.out(o.transpose(1, 2).reshape(B, T, W))


class _Block(nn.Module):
    """Pre-norm transformer block whose attention can take extra (cached) keys/values."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = _Attention(width, heads)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor, mask: Optional[Tensor], cache: Optional[tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        h = self.norm1(x)
        k, v = self.attn.keys_values(h)
        if cache is not None:  # prefix keys/values first, then this sequence's own
            ck, cv, cmask = cache
            k, v = torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)
            own = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            mask = torch.cat([cmask, own], dim=1)
        x = x + self.attn.attend(h, k, v, mask)
        return x + self.mlp(self.norm2(x))


@dataclass
class VLAContext:
    """What ``encode`` computes once per observation."""

    kv: list[tuple[Tensor, Tensor, Tensor]]
    """Per expert layer: prefix keys, values [B, heads, P, W/heads] and key mask [B, P]."""
    prefix_features: Tensor
    """[B, W] masked mean of the prefix's final tokens (value head input)."""


class VLAFlowPolicy(FlowPolicy):
    """obs['image'] [B, h, w, 3] uint8, obs['tokens'/'token_mask'] (from ``prepare``), obs['state'] -> chunks [B, H, D]."""

    def __init__(self, cfg: VLAPolicyConfig) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch {cfg.patch}")
        if cfg.width % cfg.heads:
            raise ValueError(f"width {cfg.width} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.action_horizon, self.action_dim = cfg.action_horizon, cfg.action_dim
        W = cfg.width
        self.state_norm = Normalizer(cfg.state_dim, clip=cfg.state_clip)
        self.action_norm = Normalizer(cfg.action_dim)
        # conv stem: two stages so that patches see local structure before being tokens
        self.stem = nn.Sequential(
            nn.Conv2d(3, W // 2, kernel_size=cfg.patch // 2, stride=cfg.patch // 2), nn.GELU(),
            nn.Conv2d(W // 2, W, kernel_size=2, stride=2),
        )  # fmt: skip
        n_patches = (cfg.image_size // cfg.patch) ** 2
        self.image_pos = nn.Parameter(torch.randn(1, n_patches, W) * 0.02)
        self.word_embed = nn.Embedding(cfg.vocab_size, W, padding_idx=0)
        self.word_pos = nn.Parameter(torch.randn(1, cfg.max_words, W) * 0.02)
        self.state_proj = nn.Linear(cfg.state_dim, W)
        self.prefix_blocks = nn.ModuleList(_Block(W, cfg.heads) for _ in range(cfg.layers))
        self.prefix_norm = nn.LayerNorm(W)
        # action expert (π0: action embedding and time embedding concatenated, then an MLP)
        self.action_in = nn.Linear(cfg.action_dim, W)
        self.action_time = nn.Sequential(nn.Linear(W + cfg.time_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.action_pos = nn.Parameter(torch.randn(1, cfg.action_horizon, W) * 0.02)
        self.expert_blocks = nn.ModuleList(_Block(W, cfg.heads) for _ in range(cfg.layers))
        self.expert_norm = nn.LayerNorm(W)
        self.action_out = nn.Linear(W, cfg.action_dim)
        self.feature_dim = W

    def prepare(self, obs: dict[str, Any]) -> Obs:
        """Env observation -> tensors; tokenises obs['instruction'] into 'tokens' and 'token_mask'."""
        out = super().prepare(obs)
        if "instruction" not in obs:
            raise ValueError(f"VLAFlowPolicy needs obs['instruction'] (one string per sample); got keys {sorted(obs)}")
        tokens, mask = tokenize(obs["instruction"], self.cfg.vocab_size, self.cfg.max_words)
        device = self.device()
        out["tokens"], out["token_mask"] = torch.from_numpy(tokens).to(device), torch.from_numpy(mask).to(device)
        return out

    def encode(self, obs: Obs) -> VLAContext:
        for key in ("image", "tokens", "token_mask", "state"):
            if key not in obs:
                raise ValueError(f"VLAFlowPolicy needs obs[{key!r}] (call policy.prepare(env_obs)); got keys {sorted(obs)}")
        img = obs["image"]
        s = self.cfg.image_size
        if img.dim() != 4 or tuple(img.shape[1:]) != (s, s, 3):
            raise ValueError(f"obs['image'] has shape {tuple(img.shape)}; expected [B, {s}, {s}, 3] uint8 (set the env's image_size)")
        x = img.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        patches = self.stem(x).flatten(2).transpose(1, 2) + self.image_pos
        words = self.word_embed(obs["tokens"]) + self.word_pos[:, : obs["tokens"].shape[1]]
        state = self.state_proj(self.state_norm(obs["state"].float())).unsqueeze(1)
        tokens = torch.cat([patches, words, state], dim=1)
        B, P = tokens.shape[:2]
        mask = torch.ones(B, P, dtype=torch.bool, device=tokens.device)
        mask[:, patches.shape[1] : patches.shape[1] + words.shape[1]] = obs["token_mask"]
        kv = []
        h = tokens
        for block, expert in zip(self.prefix_blocks, self.expert_blocks):
            h = block(h, mask)
            k, v = expert.attn.keys_values(expert.norm1(h))
            kv.append((k, v, mask))
        h = self.prefix_norm(h)
        m = mask.unsqueeze(-1).float()
        return VLAContext(kv, (h * m).sum(1) / m.sum(1))

    def velocity(self, ctx: VLAContext, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        B = x.shape[0]
        a = self.action_in(x.float())
        te = sincos_embedding(t, self.cfg.time_dim).unsqueeze(1).expand(B, self.action_horizon, -1)
        h = self.action_time(torch.cat([a, te], dim=-1)) + self.action_pos
        for block, cache in zip(self.expert_blocks, ctx.kv):
            h = block(h, None, cache)
        h = self.expert_norm(h)
        return self.action_out(h), h.mean(dim=1)

    def value_features(self, ctx: VLAContext) -> Tensor:
        return ctx.prefix_features


def make_vla_policy(
    state_dim: int,
    action_dim: int,
    *,
    value_head: bool = True,
    noise_head: bool = True,
    std_range: tuple[float, float] = (0.08, 0.16),
    **config: Any,
) -> VLAFlowPolicy:
    """A VLA-mini flow policy (``config`` fields as in :class:`VLAPolicyConfig`) with critic and Flow-Noise head."""
    policy = VLAFlowPolicy(VLAPolicyConfig(state_dim, action_dim, **config))
    if value_head:
        policy.attach_value_head(policy.feature_dim)
    if noise_head:
        policy.attach_noise_head(policy.feature_dim, *std_range)
    return policy
