"""Parity with an independent implementation: transformers' ``PI0ForConditionalGeneration``.

Identical random weights (ours mapped by name onto theirs), identical inputs and noise:
velocities and ODE-sampled actions must agree within 1e-4 in float32. Their model runs the
VLM with its own KV cache (``DynamicCache``, cropped after each step) and stock Gemma layers
for the expert, so this checks our joint attention, mask, positions, time embedding, image and
text embedding against code we did not write.
"""

from __future__ import annotations

import math

import pytest
import torch

from pirl import flow
from pirl.policies.pi0 import Pi0Policy, tiny_config

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "PI0ForConditionalGeneration"):
    pytest.skip("this transformers has no PI0ForConditionalGeneration (needs >= 5.4)", allow_module_level=True)


def _hf_model(cfg):
    v, e, vis = cfg.vlm, cfg.expert, cfg.vision
    hc = transformers.PI0Config(
        vlm_config={
            "model_type": "paligemma",
            "text_config": {"model_type": "gemma", "hidden_size": v.width, "num_hidden_layers": v.depth,
                            "intermediate_size": v.mlp_dim, "num_attention_heads": v.num_heads,
                            "num_key_value_heads": v.num_kv_heads, "head_dim": v.head_dim, "vocab_size": cfg.vocab_size},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": vis.width, "intermediate_size": vis.mlp_dim,
                              "num_hidden_layers": vis.depth, "num_attention_heads": vis.num_heads,
                              "patch_size": vis.patch_size, "image_size": vis.image_size, "vision_use_head": False},
            "projection_dim": v.width, "image_token_id": cfg.vocab_size,
        },
        dit_config={"model_type": "gemma", "hidden_size": e.width, "num_hidden_layers": e.depth, "intermediate_size": e.mlp_dim,
                    "num_attention_heads": e.num_heads, "num_key_value_heads": e.num_kv_heads, "head_dim": e.head_dim},
        chunk_size=cfg.action_horizon, max_state_dim=cfg.max_state_dim, max_action_dim=cfg.max_action_dim,
        min_period=cfg.min_period, max_period=cfg.max_period,
    )
    return transformers.PI0ForConditionalGeneration(hc).eval()


def _to_hf_name(k: str) -> str:
    """openpi/LeRobot names -> transformers' PI0 names (their conversion_mapping, written out)."""
    k = k.replace("paligemma_with_expert.paligemma.model.vision_tower.vision_model.", "model.vlm.vision_tower.")
    k = k.replace("paligemma_with_expert.paligemma.model.", "model.vlm.")
    k = k.replace("paligemma_with_expert.gemma_expert.model.", "model.dit.")
    for name in ("state_proj", "action_in_proj", "action_time_mlp_in", "action_time_mlp_out"):
        if k.startswith(name + "."):
            k = "embed_action_time." + k
    return k


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = tiny_config("pi0", max_token_len=7)
    ours = Pi0Policy(cfg).eval()
    with torch.no_grad():  # give the zero-initialised norms non-trivial weights
        for name, p in ours.model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    theirs = _hf_model(cfg)
    mapped = {_to_hf_name(k): v for k, v in ours.model.state_dict().items()}
    missing, unexpected = theirs.load_state_dict(mapped, strict=False)
    assert unexpected == []
    # the only weight theirs has and ours lacks: the expert's never-used token embedding
    assert [k for k in missing if not k.endswith(("inv_freq", "position_ids", "sinusoid_freq"))] == ["model.dit.embed_tokens.weight"]
    return cfg, ours, theirs


def _inputs(cfg, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    C, n, L = len(cfg.cameras), cfg.vision.tokens_per_image, cfg.token_len
    images = torch.rand(B, C, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g) * 2 - 1
    tokens = torch.randint(4, cfg.vocab_size, (B, L), generator=g)
    tmask = torch.ones(B, L, dtype=torch.bool)
    tmask[1, 4:] = False  # right-padded prompt: positions of later tokens must skip it
    state = torch.randn(B, cfg.max_state_dim, generator=g)
    ours = {"images": images, "image_masks": torch.ones(B, C, dtype=torch.bool), "tokens": tokens, "token_mask": tmask, "state": state}
    ids = torch.cat([torch.full((B, C * n), cfg.vocab_size), tokens], dim=1)
    attn = torch.cat([torch.ones(B, C * n, dtype=torch.long), tmask.long()], dim=1)
    theirs = dict(input_ids=ids, pixel_values=images, pixel_attention_mask=torch.ones(B, C, dtype=torch.bool), attention_mask=attn)
    return ours, theirs, state


def test_velocity_parity(pair):
    cfg, ours, theirs = pair
    obs, hf_in, state = _inputs(cfg)
    x = torch.randn(2, cfg.action_horizon, cfg.max_action_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ctx = ours.encode(obs)
        for t in (1.0, 0.55, 0.1):
            tt = torch.full((2,), t)
            v_ours, _ = ours.velocity(ctx, x, tt)
            v_theirs = theirs(state=state, noise=x, timestep=tt, **hf_in).logits
            assert v_ours.abs().max() > 1e-2
            torch.testing.assert_close(v_ours, v_theirs, rtol=0, atol=1e-4)


def test_sampled_actions_parity(pair):
    cfg, ours, theirs = pair
    obs, hf_in, state = _inputs(cfg, seed=3)
    noise = torch.randn(2, cfg.action_horizon, cfg.max_action_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        chain = flow.sample(ours.velocity_fn(ours.encode(obs), False), noise, steps=10, method="ode")
        a_theirs = theirs.sample_actions(state=state, noise=noise.clone(), num_steps=10, **hf_in)
    torch.testing.assert_close(chain.actions, a_theirs, rtol=0, atol=1e-4)


def test_state_dict_names_cover_theirs(pair):
    """Every reference weight name has exactly one counterpart of the same shape here."""
    _, ours, theirs = pair
    mine = {_to_hf_name(k): v.shape for k, v in ours.model.state_dict().items()}
    ref = {k: v.shape for k, v in theirs.state_dict().items() if k != "model.dit.embed_tokens.weight"
           and not k.endswith(("inv_freq", "sinusoid_freq", "position_ids"))}
    assert mine == ref


def test_full_size_names_and_shapes_match_theirs():
    """The released π0 architecture (built on the meta device, no memory): same names, same shapes."""
    from pirl.policies.pi0 import full_config

    with torch.device("meta"):
        ours = Pi0Policy(full_config("pi0"))
        theirs = transformers.PI0ForConditionalGeneration(transformers.PI0Config())
    mine = {_to_hf_name(k): tuple(v.shape) for k, v in ours.model.state_dict().items()}
    ref = {k: tuple(v.shape) for k, v in theirs.state_dict().items() if k != "model.dit.embed_tokens.weight"
           and not k.endswith(("inv_freq", "sinusoid_freq", "position_ids"))}
    assert mine == ref
    assert sum(math.prod(s) for s in mine.values()) > 3.2e9
