"""Learner ranks on GPUs: the backend option, the one-GPU-per-nccl-rank check, and (with CUDA) nccl / gloo
updates that equal the single-process PPOUpdater.

The GPU tests are parametrised over the device: their CPU cases run the same code (gloo) everywhere, so on a
machine without CUDA only the moves to the GPU and nccl itself go untested. They need one GPU and nothing
else (point mass, the small MLP policy of learner_check.py).
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
from learner_check import _free_port, setup

from pirl.algorithms import PPOUpdater
from pirl.distributed.learner import (
    DistributedPPOUpdater,
    check_one_gpu_per_rank,
    init_process_group,
    resolve_backend,
    shared_gpus,
)
from pirl.train.rl import TrainConfig

TOL = 1e-5
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=cuda_only)]


# -- CPU: the pure parts --------------------------------------------------------------------------------


def test_shared_gpus_groups_ranks_by_uuid():
    assert shared_gpus([]) == {}
    assert shared_gpus([None, None]) == {}  # CPU ranks share no GPU
    assert shared_gpus(["GPU-a", "GPU-b", "GPU-c"]) == {}
    assert shared_gpus(["GPU-a", "GPU-b", "GPU-a", None, "GPU-b", "GPU-c"]) == {"GPU-a": [0, 2], "GPU-b": [1, 4]}


def test_one_gpu_per_nccl_rank():
    check_one_gpu_per_rank(["GPU-a", "GPU-b"], "nccl")
    check_one_gpu_per_rank(["GPU-a", "GPU-a", "GPU-a"], "gloo")  # gloo ranks may share a GPU
    with pytest.raises(RuntimeError) as info:
        check_one_gpu_per_rank(["GPU-a", "GPU-b", "GPU-a"], "nccl")
    msg = str(info.value)
    assert "one GPU per learner rank" in msg and "ranks [0, 2] on GPU GPU-a" in msg
    # the cause and both fixes
    for part in ("trainer's (driver's) GPU", "--num-gpus", "CUDA_VISIBLE_DEVICES", "learner_backend=gloo"):
        assert part in msg, part


def test_resolve_backend():
    assert resolve_backend("auto", "cpu") == "gloo"
    assert resolve_backend("auto", torch.device("cuda", 1)) == "nccl"
    assert resolve_backend("gloo", "cuda") == "gloo"
    assert resolve_backend("nccl", "cuda:0") == "nccl"
    with pytest.raises(ValueError, match="reduces CUDA tensors only; the policy is on cpu"):
        resolve_backend("nccl", "cpu")
    with pytest.raises(ValueError, match="'auto', 'nccl' or 'gloo', got 'mpi'"):
        resolve_backend("mpi", "cpu")


def test_learner_backend_config_is_validated():
    from pirl.config import ConfigError, load_config
    from pirl.train.rl import RunnerConfig

    def ray2(**kw):
        return RunnerConfig(kind="ray", learner_processes=2, **kw)

    assert TrainConfig().runner.learner_backend == "auto"
    for backend in ("nccl", "gloo"):
        with pytest.raises(ValueError, match=rf"learner_backend='{backend}'.*needs kind='ray' and learner_processes "
                                             r">= 2, got kind='local', learner_processes=1"):
            TrainConfig(runner=RunnerConfig(learner_backend=backend), device="cuda")
    with pytest.raises(ValueError, match=r"learner_processes >= 2, got kind='ray', learner_processes=1"):
        RunnerConfig(kind="ray", learner_backend="gloo")
    with pytest.raises(ValueError, match=r"learner_backend='nccl' reduces CUDA tensors only: it needs device='cuda', "
                                         r"got device='cpu'"):
        TrainConfig(runner=ray2(learner_backend="nccl"))
    with pytest.raises(ValueError, match="fsdp' on CUDA needs runner.learner_backend 'nccl' or 'auto'"):
        TrainConfig(runner=ray2(learner_strategy="fsdp", learner_backend="gloo"), device="cuda")
    with pytest.raises(ValueError, match="learner_backend must be 'auto', 'nccl' or 'gloo', got 'mpi'"):
        ray2(learner_backend="mpi")
    # valid: building the config touches no GPU
    for kw, device in (({"learner_backend": "nccl"}, "cuda"), ({"learner_backend": "nccl"}, "cuda:1"),
                       ({"learner_backend": "gloo"}, "cuda"), ({"learner_backend": "gloo"}, "cpu"),
                       ({"learner_strategy": "fsdp"}, "cuda")):
        assert TrainConfig(runner=ray2(**kw), device=device).runner.learner_backend == kw.get("learner_backend", "auto")
    with pytest.raises(ConfigError, match=r"runner.learner_backend: expected one of 'auto', 'nccl', 'gloo', got 'ncl' "
                                          r"\(did you mean 'nccl'"):
        load_config(TrainConfig, None, ["runner.learner_backend=ncl"])
    cfg = load_config(TrainConfig, None, ["runner.kind=ray", "runner.learner_processes=2", "runner.learner_backend=gloo"])
    assert cfg.runner.learner_backend == "gloo"


def test_learner_group_refuses_mismatched_devices():
    """Argument errors come before any actor starts (Ray need not be running)."""
    pytest.importorskip("ray")
    from pirl.distributed.learner import LearnerGroup

    policy, _, ppo, optim = setup()
    with pytest.raises(ValueError, match="reduces CUDA tensors only"):
        LearnerGroup(policy, ppo, optim, world=2, backend="nccl")
    with pytest.raises(ValueError, match="GPU ranks need a CUDA policy"):
        LearnerGroup(policy, ppo, optim, world=2, gpus_per_rank=0.5)


# -- the update on a device: CPU cases run here, CUDA cases on a GPU machine -----------------------------


def on_device(device: str):
    """learner_check's policy and batch on ``device``, the batch's old log-probs and values re-scored there so
    that the ratio check (1e-5) holds for a batch collected on the CPU."""
    policy, batch, ppo, optim = setup()
    policy, batch = policy.to(device), batch.to(device)
    with torch.no_grad():
        out = policy.evaluate(batch.obs, batch.chain)
    return policy, batch.replace(old_log_prob=out.log_prob, old_value=out.value), ppo, optim


def single_process(device: str) -> dict[str, torch.Tensor]:
    """Weights (CPU) after one PPOUpdater update on ``device``, and a check that the update moved them."""
    policy, batch, ppo, optim = on_device(device)
    before = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    PPOUpdater(policy, ppo, optim, seed=0).update(batch)
    after = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    assert any(not torch.equal(after[k], before[k]) for k in after), "the update changed nothing"
    return after


def assert_same_weights(ours: dict, ref: dict) -> None:
    assert ours.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(ours[k].cpu(), ref[k].cpu(), rtol=0, atol=TOL, msg=k)


@pytest.mark.parametrize("device,backend", [("cpu", "gloo"), pytest.param("cuda", "nccl", marks=cuda_only)])
def test_distributed_updater_world1_equals_ppo_updater(device, backend):
    """(a) One rank, in this process: every collective runs (on the policy's device: nccl takes CUDA tensors
    only), and the update is PPOUpdater's."""
    policy, batch, ppo, optim = on_device(device)
    init_process_group(0, 1, port=_free_port(), backend=backend, device=device, timeout_s=120)
    try:
        updater = DistributedPPOUpdater(policy, ppo, optim, seed=0)
        assert updater.device.type == device
        metrics = updater.update(batch)
    finally:
        dist.destroy_process_group()
    assert metrics["policy/ratio_check"] <= ppo.ratio_check_tol
    assert_same_weights({k: v.detach() for k, v in policy.state_dict().items()}, single_process(device))


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'pirl[ray]')")
    from pirl.distributed.env import init_ray

    started = init_ray()
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


@pytest.mark.parametrize("device", DEVICES)
def test_learner_group_gloo_ranks_share_a_gpu(local_ray, device):
    """(b) Two gloo ranks, the trainer and one Ray actor, on one GPU (gpus_per_rank=0.5): the trainer's weights
    after an update equal PPOUpdater's, and rank 1's equal rank 0's; a reload (as on resume, with the optimiser
    state of that update) gives rank 1 rank 0's weights. On CPU: the same with gpus_per_rank=0."""
    from pirl.distributed.learner import LearnerGroup

    ray = local_ray
    cuda = device == "cuda"
    if cuda:
        assert ray.cluster_resources().get("GPU", 0) >= 0.5, f"Ray sees no GPU: {ray.cluster_resources()}"
    policy, batch, ppo, optim = on_device(device)
    group = LearnerGroup(policy, ppo, optim, world=2, seed=0, backend="gloo", cpus_per_rank=0.5,
                         gpus_per_rank=0.5 if cuda else 0.0, timeout_s=120)
    try:
        assert group.backend == "gloo" and group.device.type == device
        metrics = group.update(batch)
        rank0 = {k: v.detach().clone() for k, v in policy.state_dict().items()}
        rank1 = ray.get(group.actors[0].state_dict.remote())
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.01)
        group.load()  # weights, minibatch RNG and the (CUDA) AdamW state of the update, through the CPU
        reloaded = ray.get(group.actors[0].state_dict.remote())
    finally:
        group.close()
    assert metrics["policy/ratio_check"] <= ppo.ratio_check_tol
    assert next(iter(rank0.values())).device.type == device  # the trainer's policy stayed where it was
    assert all(v.device.type == "cpu" for v in rank1.values())  # shipped back as CPU copies
    assert_same_weights(rank0, single_process(device))
    assert_same_weights(rank1, rank0)
    for k, v in policy.state_dict().items():
        assert torch.equal(reloaded[k], v.cpu()), k


def _wait_for(resource: str, amount: float, ray, timeout_s: float = 30.0) -> float:
    """Ray's free ``resource`` once it reaches ``amount`` (a killed actor frees its share asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get(resource, 0) < amount and time.monotonic() < deadline:
        time.sleep(0.5)
    return ray.available_resources().get(resource, 0)


def test_refused_group_gathers_every_rank_and_frees_its_actors(local_ray, monkeypatch):
    """The path of a refused nccl group, on CPU: the check sees every rank's GPU (None here) before any
    rendezvous, and the rank actors it started are gone when the error propagates."""
    import pirl.distributed.learner as learner

    ray = local_ray
    seen = []

    def refuse(uuids, backend):
        seen.append((uuids, backend))
        raise RuntimeError("refused")

    monkeypatch.setattr(learner, "check_one_gpu_per_rank", refuse)
    cpus = _wait_for("CPU", ray.cluster_resources()["CPU"], ray)
    policy, _, ppo, optim = setup()
    with pytest.raises(RuntimeError, match="refused"):
        learner.LearnerGroup(policy, ppo, optim, world=3, seed=0, cpus_per_rank=0.5, timeout_s=30)
    assert seen == [([None, None, None], "gloo")]
    assert not dist.is_initialized()
    assert _wait_for("CPU", cpus, ray) == cpus


@cuda_only
def test_nccl_ranks_on_one_gpu_fail_fast(local_ray):
    """(c) nccl with one visible GPU: Ray hands rank 1 the trainer's GPU; the group refuses before the rendezvous
    with a message naming the rule, instead of hanging in NCCL."""
    from pirl.distributed.learner import LearnerGroup

    ray = local_ray
    if torch.cuda.device_count() != 1 or ray.cluster_resources().get("GPU", 0) != 1:
        pytest.skip(f"needs exactly one GPU (torch sees {torch.cuda.device_count()}, Ray {ray.cluster_resources()})")
    policy, _, ppo, optim = on_device("cuda")
    # a short collective timeout: if the check let it through, the rendezvous fails (another error) in bounded time
    with pytest.raises(RuntimeError, match="one GPU per learner rank") as info:
        LearnerGroup(policy, ppo, optim, world=2, seed=0, backend="nccl", cpus_per_rank=0.5, timeout_s=60)
    assert "ranks [0, 1]" in str(info.value)
    assert not dist.is_initialized()
    assert _wait_for("GPU", 1, ray) == 1  # the rank actor was killed: Ray has its GPU back

