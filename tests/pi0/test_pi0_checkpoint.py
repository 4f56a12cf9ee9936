"""Checkpoint IO (LeRobot and openpi layouts), configs, and the pre/post-processing pieces."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pirl.flow import SamplerConfig
from pirl.policies.pi0 import (
    CheckpointError, PaligemmaTokenizer, Pi0Normalizer, Pi0Policy, full_config, load_lerobot, load_openpi,
    load_pretrained, make_pi0_policy, preset, save_lerobot, save_openpi, tiny_config,
)
from pirl.policies.pi0.configuration import from_lerobot_dict, to_lerobot_dict
from pirl.policies.pi0.processing import resize_with_pad


def _policy_with_stats(variant):
    torch.manual_seed(0)
    p = make_pi0_policy(tiny_config(variant), value_head=False, noise_head=False)
    rng = np.random.default_rng(0)
    for norm, d in ((p.state_norm, p.cfg.state_dim), (p.action_norm, p.cfg.action_dim)):
        norm.set_stats({"mean": rng.normal(size=d), "std": rng.uniform(0.5, 2, size=d),
                        "q01": -rng.uniform(1, 2, size=d), "q99": rng.uniform(1, 2, size=d)})
    return p


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_lerobot_round_trip(variant, tmp_path, tokenizer_path, env_obs):
    p = _policy_with_stats(variant)
    save_lerobot(p, tmp_path)
    for name in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        assert (tmp_path / name).exists()
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert all(k.startswith("model.") for k in keys)
    assert "model.paligemma_with_expert.paligemma.lm_head.weight" in keys  # tied embedding, stored as the head
    assert "model.paligemma_with_expert.gemma_expert.lm_head.weight" in keys
    assert ("model.time_mlp_in.weight" in keys) == (variant == "pi05")
    assert ("model.paligemma_with_expert.gemma_expert.model.layers.0.input_layernorm.dense.weight" in keys) == (variant == "pi05")

    q = load_pretrained(tmp_path, tokenizer_path=tokenizer_path)
    assert q.cfg == p.cfg
    for (ka, a), (kb, b) in zip(p.state_dict().items(), q.state_dict().items()):
        assert ka == kb and torch.equal(a, b), ka
    p.tokenizer = q.tokenizer
    obs = env_obs(p.cfg)
    sc = SamplerConfig(method="ode", steps=2)
    a = p.act(p.prepare(obs), sc, generator=torch.Generator().manual_seed(0)).actions
    b = q.act(q.prepare(obs), sc, generator=torch.Generator().manual_seed(0)).actions
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_openpi_round_trip(variant, tmp_path):
    p = _policy_with_stats(variant)
    save_openpi(p, tmp_path, asset_id="libero")
    stats = json.loads((tmp_path / "assets" / "libero" / "norm_stats.json").read_text())["norm_stats"]
    assert set(stats) == {"state", "actions"} and len(stats["actions"]["q99"]) == p.cfg.action_dim
    keys = load_file(str(tmp_path / "model.safetensors")).keys()
    assert not any(k.startswith("model.") for k in keys)
    with pytest.raises(ValueError, match="needs cfg"):
        load_pretrained(tmp_path)
    q = load_openpi(tmp_path, p.cfg)
    for (ka, a), (kb, b) in zip(p.state_dict().items(), q.state_dict().items()):
        assert ka == kb and torch.equal(a, b), ka


def test_bad_checkpoint_lists_keys(tmp_path):
    p = _policy_with_stats("pi0")
    save_lerobot(p, tmp_path)
    path = str(tmp_path / "model.safetensors")
    sd = load_file(path)
    sd["model.paligemma_with_expert.gemma_expert.model.layers.0.mlp.up_projj.weight"] = sd.pop(
        "model.paligemma_with_expert.gemma_expert.model.layers.0.mlp.up_proj.weight")
    sd["model.action_out_proj.weight"] = torch.zeros(3, 3)
    sd["model.surprise.bias"] = torch.zeros(1)
    save_file(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_lerobot(tmp_path)
    msg = str(err.value)
    assert "1 missing key(s)" in msg and "gemma_expert.model.layers.0.mlp.up_proj.weight" in msg
    assert "2 unexpected key(s)" in msg and "up_projj.weight" in msg and "surprise.bias" in msg
    assert "1 mis-shaped key(s)" in msg and "action_out_proj.weight: checkpoint (3, 3) vs model (8, 32)" in msg


def test_pi05_checkpoint_into_pi0_model_is_refused(tmp_path):
    save_openpi(_policy_with_stats("pi05"), tmp_path)
    with pytest.raises(CheckpointError, match="state_proj.weight"):
        load_openpi(tmp_path, tiny_config("pi0"))


def test_configs():
    for variant in ("pi0", "pi05"):
        for cfg in (tiny_config(variant), full_config(variant, action_dim=7, state_dim=8)):
            assert from_lerobot_dict(to_lerobot_dict(cfg)) == cfg
    full = to_lerobot_dict(full_config("pi05"))
    assert "pirl_architecture" not in full and full["paligemma_variant"] == "gemma_2b"
    assert full["normalization_mapping"]["ACTION"] == "QUANTILES" and full["tokenizer_max_length"] == 200
    assert preset("pi0").prefix_len == 3 * 256 + 48 and preset("pi0").suffix_len == 51
    with pytest.raises(ValueError, match="did you mean 'pi05'"):
        preset("pi5")
    with pytest.raises(ValueError, match="depth"):
        tiny_config("pi0", expert=tiny_config("pi0").expert.__class__(32, 3, 64, 4, 2, 8))


def test_normalizer_modes_and_padding():
    n = Pi0Normalizer(2, 4, "mean_std")
    n.set_stats({"mean": [1.0, 2.0, 9.0], "std": [2.0, 4.0, 9.0]})  # longer stats are cut to D
    x = torch.tensor([[3.0, 6.0]])
    torch.testing.assert_close(n(x), torch.tensor([[1.0, 1.0, 0.0, 0.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(n.inverse(n(x)), x)
    q = Pi0Normalizer(2, 3, "quantile")
    q.set_stats({"q01": [0.0, -2.0], "q99": [4.0, 2.0]})
    torch.testing.assert_close(q(torch.tensor([[4.0, -2.0]])), torch.tensor([[1.0, -1.0, 0.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.inverse(q(torch.tensor([[1.0, 0.5]]))), torch.tensor([[1.0, 0.5]]))


def test_tokenizer_formats(tokenizer_path):
    tok = PaligemmaTokenizer(tokenizer_path, max_len=40)
    ids, mask = tok.tokenize("pick_up the\nred block")
    n = int(mask.sum())
    assert ids[0] == 2 and mask[:n].all() and not mask[n:].any() and (ids[n:] == 0).all()
    assert ids[:n].tolist() == [2] + tok._encode("pick up the red block") + tok._encode("\n")
    ids5, _ = tok.tokenize("open the drawer", state=np.array([-1.0, 0.0, 0.999]))
    text = "Task: open the drawer, State: 0 128 255;\nAction: "
    full = [2] + tok._encode(text)
    assert ids5[: len(full)].tolist() == full[:40]
    short = PaligemmaTokenizer(tokenizer_path, max_len=4).tokenize("pick up the red block")
    assert short[1].all() and len(short[0]) == 4


def test_resize_with_pad():
    img = torch.ones(1, 3, 20, 40) * 0.5
    out = resize_with_pad(img, 28)
    assert out.shape == (1, 3, 28, 28)
    assert (out[:, :, :7] == -1).all() and (out[:, :, -7:] == -1).all()  # 14 rows of image, centred
    torch.testing.assert_close(out[:, :, 7:21], torch.full((1, 3, 14, 28), 0.5))
