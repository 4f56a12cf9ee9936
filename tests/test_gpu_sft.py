"""`pirl sft device=cuda`: a tiny π0 and the state MLP trained on the GPU, saved, and loaded back on the CPU.
Skipped without CUDA; ``PIRL_GPU_TESTS_ON_CPU=1`` runs the same code with device cpu (as tests/test_gpu_ray.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("metaworld")

from pirl.cli.main import main as pirl  # noqa: E402
from pirl.flow import SamplerConfig  # noqa: E402
from pirl.policies.io import load_policy  # noqa: E402
from pirl.train.sft import SFTConfig, sft  # noqa: E402

ON_CPU = os.environ.get("PIRL_GPU_TESTS_ON_CPU") == "1"
DEV = "cpu" if ON_CPU else "cuda"
pytestmark = pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    data = tmp_path_factory.mktemp("gpu_sft") / "data"
    assert pirl(["collect", "--run-dir", str(data), "tasks=reach-v3", "episodes_per_task=2", "num_envs=1",
                 "max_episode_steps=60", "camera=corner2", "image_size=32"]) == 0
    return data


def test_mlp_sft_trains_and_evaluates_on_the_device(dataset, tmp_path):
    result = sft(SFTConfig(dataset=str(dataset), out_dir=str(tmp_path), steps=60, batch_size=32, log_every=20, eval_every=0,
                           eval_episodes_per_task=2, eval_num_envs=2, eval_max_episode_steps=40, device=DEV), log=None)
    assert next(result.policy.parameters()).device.type == DEV
    assert len(result.losses) == 3 and result.losses[-1][1] < result.losses[0][1]  # it learns there
    assert len(result.evals) == 1  # the evaluation ran with the policy on the device
    cpu = load_policy(result.checkpoint, device="cpu")[0]
    assert next(cpu.parameters()).device.type == "cpu"


def test_pi0_sft_through_the_cli_on_the_device(dataset, tmp_path):
    run = tmp_path / "pi0"
    assert pirl(["sft", "--run-dir", str(run), f"dataset={dataset}", "policy=pi0", "pi0.size=tiny", "steps=10",
                 "batch_size=8", "eval_every=-1", "action_horizon=4", "chunk=4", f"device={DEV}"]) == 0
    policy = load_policy(run / "final.safetensors", device="cpu")[0]
    rng = np.random.default_rng(0)
    obs = {"image": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
           "state": rng.normal(size=(2, 39)).astype(np.float32),
           "instruction": np.array(["reach the goal", "reach the goal"], dtype=object)}
    actions = policy.act(policy.prepare(obs), SamplerConfig(method="ode", steps=3),
                         generator=torch.Generator().manual_seed(0)).actions
    assert actions.shape == (2, 4, 4) and torch.isfinite(actions).all()
