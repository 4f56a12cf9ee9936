"""Sharded (FSDP2) learner ranks: two gloo processes vs the single-process PPOUpdater, on the MLP policy,
VLA-mini and (with the "pi0" extra) a tiny π0.5.

The trainer-level run (``learner_strategy=fsdp`` vs ``ddp``, checkpoint and resume) is in
test_ray.py, which owns the Ray cluster fixture.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from learner_check import run_fsdp_check

TOL = 1e-5
KEY_BIAS_TOL = 2 * 3e-4 * 2
"""Attention key biases: softmax ignores them, so their gradient is 0 up to float noise, which Adam divides by
its own RMS: each optimiser step moves them by up to ~lr (the ppo preset's 3e-4) in a direction set by
summation order, so two runs may differ by 2 lr per step (two steps per update here; VLA-mini measured 9e-5 after
one update, 1.2e-4 after two). Only the key half of a fused key/value bias gets this tolerance."""
KEY_BIASES = ("attn.kv.bias", "k_proj.bias")


def _check_weight(ours: torch.Tensor, ref: torch.Tensor, name: str, msg: str) -> None:
    if name.endswith("attn.kv.bias"):  # [keys | values]: the value half must match like any weight
        (k, v), (k_ref, v_ref) = ours.chunk(2), ref.chunk(2)
        torch.testing.assert_close(k, k_ref, rtol=0, atol=KEY_BIAS_TOL, msg=msg)
        torch.testing.assert_close(v, v_ref, rtol=0, atol=TOL, msg=msg)
    else:
        torch.testing.assert_close(ours, ref, rtol=0, atol=KEY_BIAS_TOL if name.endswith(KEY_BIASES) else TOL,
                                   msg=msg)
CASES = ["mlp", "vla", pytest.param("pi05", marks=pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="the π0 models need the 'pi0' extra"))]


def _close(ours: float, ref: float) -> bool:
    return abs(ours - ref) <= TOL * max(1.0, abs(ref))


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    return run_fsdp_check(tmp_path_factory.mktemp("fsdp"))


@pytest.mark.parametrize("name", CASES)
def test_fsdp_updates_match_single_process(fsdp_run, name):
    """Two updates (the second from the carried optimiser state): weights, metrics and the gathered optimiser
    state equal one PPOUpdater's; rank 1 reports the same reduced metrics as rank 0."""
    ranks, ref = fsdp_run
    ours, ref = ranks[0][name], ref[name]
    for i in (1, 2):
        w, w_ref = ours[f"weights{i}"], ref[f"weights{i}"]
        assert w.keys() == w_ref.keys()
        for k in w_ref:
            _check_weight(w[k], w_ref[k], k, f"update {i}: {k}")
        m, m_ref = ours[f"metrics{i}"], ref[f"metrics{i}"]
        for k, v in m_ref.items():
            if not k.startswith("perf/"):
                assert _close(m[k], v), f"update {i}: {k} = {m[k]} vs {v}"
                assert ranks[1][name][f"metrics{i}"][k] == m[k], k
        o, o_ref = ours[f"optim{i}"], ref[f"optim{i}"]
        assert o["param_groups"] == o_ref["param_groups"]  # same layout: checkpoints resume under any strategy
        assert o["state"].keys() == o_ref["state"].keys()
        for p, s in o_ref["state"].items():
            for k, v in s.items():
                torch.testing.assert_close(o["state"][p][k], v, rtol=0, atol=TOL, msg=f"update {i}: state {p} {k}")
    if name == "mlp":
        assert ref["metrics1"]["loss/grad_norm"] > 0.5  # max_grad_norm 0.5 binds: the clip used the global norm


@pytest.mark.parametrize("name", CASES)
def test_fsdp_ranks_hold_half_the_weights(fsdp_run, name):
    ranks, _ = fsdp_run
    (n0, total), (n1, _) = ranks[0][name]["numel"], ranks[1][name]["numel"]
    assert n0 + n1 == total
    assert max(n0, n1) < 0.55 * total, (n0, n1, total)
