"""The π0 / π0.5 network: PaliGemma prefix, Gemma action expert, one joint attention per layer.

Module names reproduce openpi's PyTorch port (and LeRobot's, under a ``model.`` prefix), so
their ``model.safetensors`` load without renaming. Building blocks come from stock
transformers (SigLIP, Gemma MLP / RMSNorm / rotary); the joint attention is ours.

Three ways to run the layers, all on the same weights:

- :meth:`Pi0Model.encode_prefix` runs the VLM once over images + prompt and returns the
  per-layer keys/values (after RoPE) as a read-only :class:`PrefixCache`.
- :meth:`Pi0Model.run_suffix` runs the action expert over state/action tokens against that
  cache: attention is split into a prefix part and a suffix part that share one softmax, so
  no denoising step ever copies or extends the cache (autograd-safe for re-scoring K steps).
- :meth:`Pi0Model.joint_forward` runs both experts over the concatenated sequence with the
  blockwise-causal mask in one attention per layer (the training-style forward, and the
  uncached reference the cached path is tested against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import GemmaConfig, SiglipVisionConfig, SiglipVisionModel
from transformers.models.gemma.modeling_gemma import GemmaMLP, GemmaRMSNorm, GemmaRotaryEmbedding, apply_rotary_pos_emb

from pirl.policies.pi0.configuration import GemmaSpec, Pi0Config


# -- building blocks -------------------------------------------------------------------------
def _gemma_hf_config(spec: GemmaSpec, cfg: Pi0Config) -> GemmaConfig:
    return GemmaConfig(
        hidden_size=spec.width, intermediate_size=spec.mlp_dim, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim, num_hidden_layers=spec.depth,
        vocab_size=cfg.vocab_size, hidden_act="gelu_pytorch_tanh", rms_norm_eps=cfg.rms_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
    )


class AdaRMSNorm(nn.Module):
    """π0.5's adaptive RMSNorm: scale, shift and a residual gate regressed from the time embedding.

    ``dense`` maps the condition to [scale, shift, gate]; its weight starts at zero (openpi),
    so a fresh norm is a plain RMSNorm whose gate is the bias.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.dense.weight)

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        mod = self.dense(cond.to(self.dense.weight.dtype)).float()
        if x.dim() == 3:
            mod = mod.unsqueeze(1)
        scale, shift, gate = mod.chunk(3, dim=-1)
        return (normed * (1.0 + scale) + shift).to(x.dtype), gate.to(x.dtype)


def _norm(module: nn.Module, x: Tensor, cond: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    if isinstance(module, AdaRMSNorm):
        return module(x, cond)
    return module(x), None


def _residual(x: Tensor, y: Tensor, gate: Optional[Tensor]) -> Tensor:
    return x + y if gate is None else x + y * gate


class GemmaAttentionProj(nn.Module):
    """The q/k/v/o projections of one layer (the attention itself is joint, see module doc)."""

    def __init__(self, spec: GemmaSpec) -> None:
        super().__init__()
        self.head_dim = spec.head_dim
        self.q_proj = nn.Linear(spec.width, spec.num_heads * spec.head_dim, bias=False)
        self.k_proj = nn.Linear(spec.width, spec.num_kv_heads * spec.head_dim, bias=False)
        self.v_proj = nn.Linear(spec.width, spec.num_kv_heads * spec.head_dim, bias=False)
        self.o_proj = nn.Linear(spec.num_heads * spec.head_dim, spec.width, bias=False)


class GemmaLayer(nn.Module):
    def __init__(self, spec: GemmaSpec, cfg: Pi0Config, adaptive: bool) -> None:
        super().__init__()
        self.self_attn = GemmaAttentionProj(spec)
        self.mlp = GemmaMLP(_gemma_hf_config(spec, cfg))
        if adaptive:
            self.input_layernorm: nn.Module = AdaRMSNorm(spec.width, spec.width, cfg.rms_eps)
            self.post_attention_layernorm: nn.Module = AdaRMSNorm(spec.width, spec.width, cfg.rms_eps)
        else:
            self.input_layernorm = GemmaRMSNorm(spec.width, cfg.rms_eps)
            self.post_attention_layernorm = GemmaRMSNorm(spec.width, cfg.rms_eps)

    def qkv(self, h: Tensor, cos: Tensor, sin: Tensor, cond: Optional[Tensor]):
        """(q [B, Hq, T, d], k, v [B, Hkv, T, d], gate) with RoPE applied to q and k."""
        x, gate = _norm(self.input_layernorm, h, cond)
        B, T, _ = x.shape
        d = self.self_attn.head_dim
        q = self.self_attn.q_proj(x).view(B, T, -1, d).transpose(1, 2)
        k = self.self_attn.k_proj(x).view(B, T, -1, d).transpose(1, 2)
        v = self.self_attn.v_proj(x).view(B, T, -1, d).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v, gate

    def finish(self, h: Tensor, attn: Tensor, gate: Optional[Tensor], cond: Optional[Tensor]) -> Tensor:
        """Output projection, residuals and MLP; ``attn`` is [B, T, Hq * d]."""
        out = self.self_attn.o_proj(attn.to(self.self_attn.o_proj.weight.dtype))
        h = _residual(h, out, gate)
        x, gate2 = _norm(self.post_attention_layernorm, h, cond)
        return _residual(h, self.mlp(x.to(self.mlp.up_proj.weight.dtype)), gate2)


class GemmaStack(nn.Module):
    """Layers + final norm (+ token embedding for the VLM); the LM head is never built."""

    def __init__(self, spec: GemmaSpec, cfg: Pi0Config, *, embed: bool, adaptive: bool) -> None:
        super().__init__()
        if embed:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, spec.width)
        self.layers = nn.ModuleList(GemmaLayer(spec, cfg, adaptive) for _ in range(spec.depth))
        self.norm: nn.Module = AdaRMSNorm(spec.width, spec.width, cfg.rms_eps) if adaptive else GemmaRMSNorm(spec.width, cfg.rms_eps)


class _Box(nn.Module):
    """A named container, only there to reproduce the reference state-dict paths."""


def _vision_config(cfg: Pi0Config) -> SiglipVisionConfig:
    v = cfg.vision
    c = SiglipVisionConfig(
        hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth, num_attention_heads=v.num_heads,
        patch_size=v.patch_size, image_size=v.image_size, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
        vision_use_head=False,
    )
    c._attn_implementation = "sdpa"
    return c


def sincos_time_embedding(t: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """[B, dim] sin-cos embedding of times t [B] with periods log-spaced in [min, max] (float64 math)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period)[None, :] * t.to(torch.float64)[:, None]
    return torch.cat([angle.sin(), angle.cos()], dim=1).float()


def block_attention_mask(pad: Tensor, ar: Tensor) -> Tensor:
    """[B, T, T] bool: query i sees key j iff j is not padding and j's block is not after i's.

    ``ar`` [B, T] is 1 where a new causal block starts (big_vision's ``mask_ar``). Only keys
    are masked: a padded query still sees valid keys, so no softmax row is empty (no NaN),
    and nothing ever attends to a padded token.
    """
    block = torch.cumsum(ar.long(), dim=1)
    return (block[:, None, :] <= block[:, :, None]) & pad[:, None, :].bool()


@dataclass
class PrefixCache:
    """The VLM's per-layer keys/values over the prefix; read, never written, by the expert."""

    kv: list[tuple[Tensor, Tensor]]
    """Per layer (k, v), each [B, Hkv, P, d], RoPE applied."""
    pad: Tensor
    """[B, P] bool, valid prefix tokens."""
    hidden: Optional[Tensor] = None
    """[B, P, W_vlm] the VLM's final-normed outputs (only when asked for)."""

    @property
    def n_valid(self) -> Tensor:
        return self.pad.long().sum(dim=1)


# -- the model -------------------------------------------------------------------------------
class Pi0Model(nn.Module):
    """π0 / π0.5 with openpi's parameter names (``paligemma_with_expert.*``, ``action_in_proj``...)."""

    def __init__(self, cfg: Pi0Config) -> None:
        super().__init__()
        self.cfg = cfg
        pwe = _Box()
        pwe.paligemma = _Box()
        pwe.paligemma.model = _Box()
        pm = pwe.paligemma.model
        pm.vision_tower = _Box()
        pm.vision_tower.vision_model = SiglipVisionModel(_vision_config(cfg))
        pm.multi_modal_projector = _Box()
        pm.multi_modal_projector.linear = nn.Linear(cfg.vision.width, cfg.vlm.width)
        pm.language_model = GemmaStack(cfg.vlm, cfg, embed=True, adaptive=False)
        pwe.gemma_expert = _Box()
        pwe.gemma_expert.model = GemmaStack(cfg.expert, cfg, embed=False, adaptive=cfg.pi05)
        self.paligemma_with_expert = pwe

        w = cfg.expert.width
        self.action_in_proj = nn.Linear(cfg.max_action_dim, w)
        self.action_out_proj = nn.Linear(w, cfg.max_action_dim)
        if cfg.pi05:
            self.time_mlp_in = nn.Linear(w, w)
            self.time_mlp_out = nn.Linear(w, w)
        else:
            self.state_proj = nn.Linear(cfg.max_state_dim, w)
            self.action_time_mlp_in = nn.Linear(2 * w, w)
            self.action_time_mlp_out = nn.Linear(w, w)
        # one rotary table serves both experts (same head size); a buffer, not a parameter
        self.rotary = GemmaRotaryEmbedding(_gemma_hf_config(cfg.vlm, cfg))
        self.gradient_checkpointing = False

    # -- handles -----------------------------------------------------------------------------
    @property
    def vision(self) -> SiglipVisionModel:
        return self.paligemma_with_expert.paligemma.model.vision_tower.vision_model

    @property
    def vlm(self) -> GemmaStack:
        return self.paligemma_with_expert.paligemma.model.language_model

    @property
    def expert(self) -> GemmaStack:
        return self.paligemma_with_expert.gemma_expert.model

    @property
    def backbone_dtype(self) -> torch.dtype:
        return self.vlm.layers[0].self_attn.q_proj.weight.dtype

    def set_backbone_dtype(self, dtype: torch.dtype) -> None:
        """Casts the transformers to ``dtype``, keeping RMSNorm / adaRMS parameters and the
        small input/output projections in float32 (as openpi), so velocities stay float32."""
        self.paligemma_with_expert.to(dtype)
        for module in self.paligemma_with_expert.modules():
            if isinstance(module, (GemmaRMSNorm, AdaRMSNorm)):
                module.float()

    def _ckpt(self, fn, *args):
        # not gated on self.training: RL trains in eval mode (no dropout, so re-scoring reproduces the rollout), and
        # a train-mode gate silently turned checkpointing off there (H200: 76 GB peak where 26 GB were estimated)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _vision(self, pixels: Tensor) -> Tensor:
        """SigLIP's last hidden state; checkpointed per layer when enabled, in eval mode too."""
        if not (self.gradient_checkpointing and torch.is_grad_enabled()):
            return self.vision(pixel_values=pixels).last_hidden_state
        # transformers checkpoints an encoder layer only when it (and, before 5.x, the encoder) is in train mode:
        # flag those modules alone for the call, so their submodules (dropout included) stay in eval mode
        encoder = self.vision.encoder
        flagged = [m for m in (encoder, *encoder.layers) if not m.training]
        for m in flagged:
            m.training = True
        try:
            return self.vision(pixel_values=pixels).last_hidden_state
        finally:
            for m in flagged:
                m.training = False

    # -- embeddings --------------------------------------------------------------------------
    def embed_prefix(self, images: Tensor, image_masks: Tensor, tokens: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Images [B, C, 3, S, S] in [-1, 1], masks [B, C]; tokens/mask [B, L] -> (emb [B, P, W], pad [B, P])."""
        B, C = images.shape[:2]
        pm = self.paligemma_with_expert.paligemma.model
        pixels = images.flatten(0, 1).to(self.vision.embeddings.patch_embedding.weight.dtype)
        feats = self._vision(pixels)
        img = pm.multi_modal_projector.linear(feats)
        n = img.shape[1]
        img = img.reshape(B, C * n, -1)
        img_pad = image_masks.bool()[:, :, None].expand(B, C, n).reshape(B, C * n)
        emb = self.vlm.embed_tokens(tokens)
        lang = (emb.float() * math.sqrt(emb.shape[-1])).to(img.dtype)  # Gemma scales text embeddings only
        return torch.cat([img, lang], dim=1), torch.cat([img_pad, token_mask.bool()], dim=1)

    def embed_suffix(self, x: Tensor, t: Tensor, state: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor], Tensor]:
        """(tokens [B, S, W], adaRMS condition or None, ar [S]) for noisy chunk x [B, H, A] at times t [B]."""
        cfg = self.cfg
        w = cfg.expert.width
        time_emb = sincos_time_embedding(t, w, cfg.min_period, cfg.max_period)
        act = self.action_in_proj(x.to(self.action_in_proj.weight.dtype))
        ar = torch.zeros(cfg.suffix_len, dtype=torch.long, device=x.device)
        ar[0] = 1
        if cfg.pi05:
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(time_emb))))
            return act, cond, ar
        if state is None:
            raise ValueError("π0 needs the (padded, normalised) state for its state token")
        st = self.state_proj(state.to(self.state_proj.weight.dtype))[:, None]
        te = time_emb[:, None, :].expand_as(act)
        at = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([act, te], dim=-1))))
        ar[1] = 1  # the state token is its own block: it cannot see the actions
        return torch.cat([st, at], dim=1), None, ar

    # -- passes ------------------------------------------------------------------------------
    def encode_prefix(self, emb: Tensor, pad: Tensor, *, keep_hidden: bool = False) -> PrefixCache:
        """One VLM pass over the prefix (bidirectional over valid tokens) -> its KV cache."""
        pos = torch.cumsum(pad.long(), dim=1) - 1  # positions skip padding
        h = emb.to(self.backbone_dtype)
        cos, sin = self.rotary(h, pos)
        mask = pad[:, None, None, :]
        kv: list[tuple[Tensor, Tensor]] = []
        layers = self.vlm.layers
        for i, layer in enumerate(layers):
            if i == len(layers) - 1 and not keep_hidden:
                _, k, v, _ = layer.qkv(h, cos, sin, None)  # the last layer's output is never read
                kv.append((k, v))
                break
            h, k, v = self._ckpt(self._prefix_layer, layer, h, cos, sin, mask)
            kv.append((k, v))
        hidden = self.vlm.norm(h) if keep_hidden else None
        return PrefixCache(kv=kv, pad=pad.bool(), hidden=hidden)

    @staticmethod
    def _prefix_layer(layer: GemmaLayer, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor):
        q, k, v, gate = layer.qkv(h, cos, sin, None)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        B, _, T, _ = q.shape
        return layer.finish(h, attn.transpose(1, 2).reshape(B, T, -1), gate, None), k, v

    def run_suffix(self, cache: PrefixCache, emb: Tensor, cond: Optional[Tensor], ar: Tensor) -> Tensor:
        """The action expert over suffix tokens emb [B, S, W] against the cache -> final-normed [B, S, W]."""
        B, S, _ = emb.shape
        pos = cache.n_valid[:, None] + torch.arange(S, device=emb.device)[None, :]
        h = emb.to(self.backbone_dtype)
        cos, sin = self.rotary(h, pos)
        block = torch.cumsum(ar, 0)
        smask = block[None, :] <= block[:, None]  # [S, S]
        for layer, (kp, vp) in zip(self.expert.layers, cache.kv):
            h = self._ckpt(self._suffix_layer, layer, h, cos, sin, cond, kp, vp, cache.pad, smask)
        out, _ = _norm(self.expert.norm, h, cond)
        return out

    @staticmethod
    def _suffix_layer(layer: GemmaLayer, h, cos, sin, cond, kp, vp, pad, smask) -> Tensor:
        q, k, v, gate = layer.qkv(h, cos, sin, cond)
        B, Hq, S, d = q.shape
        Hkv = kp.shape[1]
        g = q.reshape(B, Hkv, (Hq // Hkv) * S, d)  # query head j*G+i reads kv head j (GQA)
        scale = d ** -0.5
        sp = torch.matmul(g, kp.transpose(-1, -2)).float() * scale
        ss = torch.matmul(g, k.transpose(-1, -2)).float() * scale
        sp = sp.masked_fill(~pad[:, None, None, :], float("-inf"))
        ss = ss.view(B, Hkv, Hq // Hkv, S, S).masked_fill(~smask, float("-inf")).view(B, Hkv, -1, S)
        P = sp.shape[-1]
        w = torch.softmax(torch.cat([sp, ss], dim=-1), dim=-1).to(v.dtype)  # one softmax over both parts
        out = torch.matmul(w[..., :P], vp) + torch.matmul(w[..., P:], v)
        out = out.view(B, Hq, S, d).transpose(1, 2).reshape(B, S, Hq * d)
        return layer.finish(h, out, gate, cond)

    def joint_forward(
        self, prefix_emb: Tensor, prefix_pad: Tensor, suffix_emb: Tensor, cond: Optional[Tensor], suffix_ar: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Both experts over [prefix; suffix] with one attention per layer -> (prefix_out, suffix_out)."""
        B, P, _ = prefix_emb.shape
        S = suffix_emb.shape[1]
        dev = prefix_emb.device
        pad = torch.cat([prefix_pad.bool(), torch.ones(B, S, dtype=torch.bool, device=dev)], dim=1)
        ar = torch.cat([torch.zeros(P, dtype=torch.long, device=dev), suffix_ar]).expand(B, -1)
        mask = block_attention_mask(pad, ar)[:, None]
        pos = torch.cumsum(pad.long(), dim=1) - 1
        dt = self.backbone_dtype
        hp, hs = prefix_emb.to(dt), suffix_emb.to(dt)
        cos, sin = self.rotary(hp, pos)
        for lp, ls in zip(self.vlm.layers, self.expert.layers):
            hp, hs = self._ckpt(self._joint_layer, lp, ls, hp, hs, cos, sin, cond, mask)
        out_p = self.vlm.norm(hp)
        out_s, _ = _norm(self.expert.norm, hs, cond)
        return out_p, out_s

    @staticmethod
    def _joint_layer(lp: GemmaLayer, ls: GemmaLayer, hp, hs, cos, sin, cond, mask):
        P = hp.shape[1]
        qp, kp, vp, gp = lp.qkv(hp, cos[:, :P], sin[:, :P], None)
        qs, ks, vs, gs = ls.qkv(hs, cos[:, P:], sin[:, P:], cond)
        q, k, v = torch.cat([qp, qs], 2), torch.cat([kp, ks], 2), torch.cat([vp, vs], 2)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        B, _, T, _ = q.shape
        attn = attn.transpose(1, 2).reshape(B, T, -1)
        return lp.finish(hp, attn[:, :P], gp, None), ls.finish(hs, attn[:, P:], gs, cond)

    def velocity_from_hidden(self, suffix_out: Tensor) -> tuple[Tensor, Tensor]:
        """(v [B, H, A] float32, action-token hidden states [B, H, W] float32)."""
        hidden = suffix_out[:, -self.cfg.action_horizon:].float()
        return self.action_out_proj(hidden.to(self.action_out_proj.weight.dtype)).float(), hidden


__all__ = ["AdaRMSNorm", "Pi0Model", "PrefixCache", "block_attention_mask", "sincos_time_embedding"]
