"""π0 and π0.5 against a naive reference written from the papers/openpi conventions.

transformers has no π0.5 and LeRobot cannot be installed next to torch 2.13 / transformers 5,
so π0.5's expert (adaRMS, time MLP, no state token) is checked against this textbook
forward instead: raw weight tensors looked up by their reference names, one full attention
over [prefix; suffix] with openpi's mask rule (big_vision ``make_att_2d_masks``: query *and*
key padding, additive -2.38e38), explicit RoPE and repeated KV heads, no cache. The prefix
embedding (SigLIP + projector + scaled text embedding) is taken from the model: that part is
shared with π0 and checked against transformers' PI0 in ``test_pi0_parity.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pirl.policies.pi0 import Pi0Policy, tiny_config


def _lin(x, sd, name, bias=True):
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias") if bias else None)


def _rms(x, w=None, eps=1e-6):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if w is None else y * (1 + w)


def _rope(x, pos, theta=10000.0):
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = pos[:, None, :, None].float() * inv  # [B, 1, T, d/2]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def reference_velocity(sd, cfg, prefix_emb, prefix_pad, state, x, t):
    pe, ex = "paligemma_with_expert.paligemma.model.language_model.", "paligemma_with_expert.gemma_expert.model."
    W = cfg.expert.width
    frac = torch.linspace(0, 1, W // 2, dtype=torch.float64)
    period = cfg.min_period * (cfg.max_period / cfg.min_period) ** frac
    ang = t.double()[:, None] * (2 * math.pi / period)[None]
    temb = torch.cat([ang.sin(), ang.cos()], 1).float()
    act = _lin(x, sd, "action_in_proj")
    B, P, H = x.shape[0], prefix_emb.shape[1], cfg.action_horizon
    if cfg.pi05:
        cond = F.silu(_lin(F.silu(_lin(temb, sd, "time_mlp_in")), sd, "time_mlp_out"))
        suffix, suffix_ar = act, [1] + [0] * (H - 1)
    else:
        cond = None
        mix = _lin(F.silu(_lin(torch.cat([act, temb[:, None].expand_as(act)], -1), sd, "action_time_mlp_in")), sd, "action_time_mlp_out")
        suffix, suffix_ar = torch.cat([_lin(state, sd, "state_proj")[:, None], mix], 1), [1, 1] + [0] * (H - 1)
    S = suffix.shape[1]
    pad = torch.cat([prefix_pad, torch.ones(B, S, dtype=torch.bool)], 1)
    cum = torch.cumsum(torch.tensor([0] * P + suffix_ar).expand(B, -1), 1)
    allowed = (cum[:, None, :] <= cum[:, :, None]) & pad[:, None, :] & pad[:, :, None]
    bias = torch.where(allowed, 0.0, -2.3819763e38)[:, None]
    pos = torch.cumsum(pad.long(), 1) - 1
    hs = [prefix_emb, suffix]

    def norm(i, name, h):  # -> (normed, gate)
        if i == 1 and cfg.pi05:
            scale, shift, gate = _lin(cond, sd, ex + name + ".dense").chunk(3, -1)
            return _rms(h) * (1 + scale[:, None]) + shift[:, None], gate[:, None]
        return _rms(h, sd[(pe, ex)[i] + name + ".weight"]), None

    hd, nh, nkv = cfg.vlm.head_dim, cfg.vlm.num_heads, cfg.vlm.num_kv_heads
    for layer in range(cfg.vlm.depth):
        qs, ks, vs, gates = [], [], [], []
        for i, h in enumerate(hs):
            pre = (pe, ex)[i] + f"layers.{layer}."
            y, g = norm(i, f"layers.{layer}.input_layernorm", h)
            gates.append(g)
            T = h.shape[1]
            qs.append(_lin(y, sd, pre + "self_attn.q_proj", False).view(B, T, nh, hd).transpose(1, 2))
            ks.append(_lin(y, sd, pre + "self_attn.k_proj", False).view(B, T, nkv, hd).transpose(1, 2))
            vs.append(_lin(y, sd, pre + "self_attn.v_proj", False).view(B, T, nkv, hd).transpose(1, 2))
        q, k, v = _rope(torch.cat(qs, 2), pos), _rope(torch.cat(ks, 2), pos), torch.cat(vs, 2)
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, -1) @ v
        att = att.transpose(1, 2).reshape(B, P + S, nh * hd)
        outs = []
        for i, (h, sl) in enumerate(zip(hs, (slice(0, P), slice(P, None)))):
            pre = (pe, ex)[i] + f"layers.{layer}."
            o = _lin(att[:, sl], sd, pre + "self_attn.o_proj", False)
            h = h + (o if gates[i] is None else o * gates[i])
            y, g = norm(i, f"layers.{layer}.post_attention_layernorm", h)
            m = _lin(F.gelu(_lin(y, sd, pre + "mlp.gate_proj", False), approximate="tanh") * _lin(y, sd, pre + "mlp.up_proj", False),
                     sd, pre + "mlp.down_proj", False)
            outs.append(h + (m if g is None else m * g))
        hs = outs
    out, _ = norm(1, "norm", hs[1])
    return _lin(out[:, -H:], sd, "action_out_proj")


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_velocity_matches_naive_reference(variant, model_obs):
    torch.manual_seed(0)
    policy = Pi0Policy(tiny_config(variant)).eval()
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "norm" in name:  # zero-initialised norms / adaRMS would hide mistakes
                p.normal_(0, 0.3)
    sd = policy.model.state_dict()
    obs = model_obs(policy.cfg, batch=3)
    x = torch.randn(3, *policy.action_shape)
    t = torch.tensor([1.0, 0.5, 0.125])
    with torch.no_grad():
        v_ours, _ = policy.velocity(policy.encode(obs), x, t)
        emb, pad = policy.model.embed_prefix(obs["images"], obs["image_masks"], obs["tokens"], obs["token_mask"])
        v_ref = reference_velocity(sd, policy.cfg, emb, pad, obs["state"], x, t)
    assert v_ref.abs().max() > 1e-2
    torch.testing.assert_close(v_ours, v_ref, rtol=0, atol=1e-4)
