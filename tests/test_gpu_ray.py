"""The Ray roles on a GPU: rollout workers holding (a share of) the GPU (``rollout_gpus`` > 0), and a whole
``runner.kind=ray`` trainer on CUDA with a GPU rollout worker and GPU learner ranks. Skipped without CUDA;
``PIRL_GPU_TESTS_ON_CPU=1`` runs the same code with device cpu, to check these tests on a machine without a GPU.

With one worker on the trainer's device type the collector's generator state travels with each request,
so the remote rollouts must equal the trainer's own inference number for number (as on CPU).
"""

from __future__ import annotations

import os

import pytest
import torch

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'pirl[ray]')")

import dataclasses  # noqa: E402

from pirl.distributed.env import init_ray  # noqa: E402
from pirl.envs.base import Context  # noqa: E402
from pirl.envs.registry import EnvConfig, make_env  # noqa: E402
from pirl.flow import SamplerConfig  # noqa: E402
from pirl.policies.mlp import make_mlp_policy  # noqa: E402
from pirl.train.rollout import CollectorConfig, RolloutCollector  # noqa: E402
from test_ray import _kill, first_iteration_matches_local, remote_follows_local  # noqa: E402

ON_CPU = os.environ.get("PIRL_GPU_TESTS_ON_CPU") == "1"
DEV = "cpu" if ON_CPU else "cuda"
GPUS = 0.0 if ON_CPU else 0.5  # the trainer uses the same GPU: Ray does not count the driver's
pytestmark = pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="needs a CUDA GPU")
PM = EnvConfig(suite="point_mass", chunk=4)
SAMPLER = SamplerConfig(method="flow_sde", steps=4, logp_steps=4)


@pytest.fixture(scope="module")
def local_ray():
    started = init_ray(num_cpus=2)
    if not ON_CPU:  # else the GPU actors would wait for a resource that never comes
        assert ray.cluster_resources().get("GPU", 0) >= 1, f"Ray found no GPU: {ray.cluster_resources()}"
    yield
    if started:
        ray.shutdown()


def _collector() -> RolloutCollector:
    torch.manual_seed(0)
    policy = make_mlp_policy(4, 2, action_horizon=4, hidden=32, depth=2)
    policy.attach_value_head(policy.feature_dim)
    return RolloutCollector(make_env(PM, 4), policy.to(DEV).eval(), SAMPLER, CollectorConfig(num_groups=4, seed=3), DEV)


def test_gpu_rollout_worker_equals_trainer_inference_and_follows_weights(local_ray):
    from pirl.distributed.rollout import RemotePolicy, RolloutWorkerPool

    local, remote = _collector(), _collector()
    pool = RolloutWorkerPool(remote.policy, 1, gpus_per_worker=GPUS, cpus_per_worker=0.5)
    remote.policy = RemotePolicy(remote.policy, pool)
    try:
        assert pool.device_names()[0].startswith(DEV)
        remote_follows_local(local, remote, pool, atol=1e-6, device=DEV)
    finally:
        pool.close()


def test_killed_gpu_rollout_worker_restarts_on_the_gpu_with_current_weights(local_ray):
    from pirl.distributed.rollout import RolloutWorkerPool

    c = _collector()
    pool = RolloutWorkerPool(c.policy, 1, gpus_per_worker=GPUS, cpus_per_worker=0.5)
    try:
        with torch.no_grad():
            for p in c.policy.parameters():
                p.mul_(1.1)
        pool.publish(c.policy)
        obs = c.policy.prepare(make_env(PM, 4).reset([Context(0, i) for i in range(4)]))
        g = lambda: torch.Generator(device=DEV).manual_seed(5)  # noqa: E731
        before = pool.act(obs, SAMPLER, g())
        pid = pool.pids()[0]
        _kill(pool.workers[0], pid)
        after = pool.act(obs, SAMPLER, g())
        assert pool.restarts == 1 and pool.pids()[0] != pid and pool.versions() == [1]
        assert pool.device_names()[0].startswith(DEV)
        torch.testing.assert_close(after.actions, before.actions, rtol=0, atol=0)
        # the trainer's own policy re-scores the worker's chains: same weights, same device type
        local = c.policy.evaluate(obs, after.chain.to(DEV)).log_prob
        torch.testing.assert_close(local.cpu(), after.log_prob.cpu(), rtol=0, atol=1e-5)
    finally:
        pool.close()


def test_ray_trainer_on_gpu_matches_the_single_process_trainer(local_ray, tmp_path):
    """device=cuda, runner.kind=ray with two env workers, a GPU rollout worker (a quarter of the GPU) and two gloo
    learner ranks sharing the GPU (collocated): the first iteration's rollout statistics are the single-process
    CUDA trainer's, its weights equal them up to float summation order, and rank 1 holds the trainer's weights."""
    from pirl.policies.io import save_policy
    from pirl.train.rl import RunnerConfig, TrainConfig

    torch.manual_seed(0)
    save_policy(make_mlp_policy(4, 2, action_horizon=4, hidden=16, depth=1), tmp_path / "p.safetensors")
    base = TrainConfig(policy=str(tmp_path / "p.safetensors"), env=PM, num_groups=4, iterations=1, eval_num_envs=2,
                       eval_episodes_per_task=2, videos_per_task=0, device=DEV)
    ray_cfg = dataclasses.replace(base, runner=RunnerConfig(
        kind="ray", env_workers=2, rollout_workers=1, rollout_gpus=GPUS / 2, learner_processes=2,
        learner_backend="gloo", learner_gpus=GPUS or 1.0, placement="collocated", worker_cpus=0.25))

    def check_ray(trainer, weights, metrics):
        assert next(trainer.policy.parameters()).device.type == DEV
        r = trainer.ray
        assert r.pool.device_names()[0].startswith(DEV) and r.learners.device.type == DEV
        rank1 = ray.get(r.learners.actors[0].state_dict.remote())
        for k, v in weights.items():
            torch.testing.assert_close(rank1[k], v, rtol=0, atol=1e-6, msg=k)

    first_iteration_matches_local(base, ray_cfg, tmp_path, check_ray)
