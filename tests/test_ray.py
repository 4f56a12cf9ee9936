"""Ray scale-out: env workers match the single-process env, pipelining, worker crashes, the gloo learner.

Ray runs as a simulated two-node cluster (ray.cluster_utils.Cluster, 1 CPU per node) so the
two env workers land on different raylets, as on a real cluster.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'pirl[ray]')")

from pirl.algorithms import PPOUpdater, build_batch, preset  # noqa: E402
from pirl.distributed.env import RayVectorEnv  # noqa: E402
from pirl.distributed.pipeline import PipelinedCollector  # noqa: E402
from pirl.envs.base import Context  # noqa: E402
from pirl.envs.point_mass import expert_actions  # noqa: E402
from pirl.envs.registry import EnvConfig, make_env  # noqa: E402
from pirl.flow import SamplerConfig  # noqa: E402
from pirl.policies.base import ActOutput  # noqa: E402
from pirl.policies.mlp import make_mlp_policy  # noqa: E402
from pirl.train.rollout import CollectorConfig, RolloutCollector  # noqa: E402

PM = EnvConfig(suite="point_mass", chunk=4)
SAMPLER = SamplerConfig(method="flow_sde", steps=4, logp_steps=4)


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    store = 80 * 2**20
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                        "object_store_memory": store})
    c.add_node(num_cpus=1, object_store_memory=store)
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def ray_env(cfg: EnvConfig, n: int, workers: int = 2) -> RayVectorEnv:
    return RayVectorEnv(cfg, n, workers, cpus_per_worker=0.5)


def _assert_same(r1, r2):
    for f in ("reward", "terminated", "truncated", "success"):
        np.testing.assert_array_equal(getattr(r1, f), getattr(r2, f), err_msg=f)
    for k in r2.obs:
        np.testing.assert_array_equal(r1.obs[k], r2.obs[k], err_msg=k)
    for k in ("episode_length", "crashed"):
        np.testing.assert_array_equal(r1.info[k], r2.info[k], err_msg=k)


@pytest.mark.parametrize("cfg,n", [(PM, 5), (EnvConfig(suite="metaworld", tasks="reach-v3", chunk=4), 2)],
                         ids=["point_mass", "metaworld-reach"])
def test_ray_env_equals_local(cluster, cfg, n):
    pytest.importorskip("metaworld") if cfg.suite == "metaworld" else None
    env, local = ray_env(cfg, n), make_env(cfg, n)
    try:
        assert (env.chunk, env.action_dim, env.state_dim, env.max_chunk_steps) == \
               (local.chunk, local.action_dim, local.state_dim, local.max_chunk_steps)
        assert len(set(ray.get([w.node.remote() for w in env.workers]))) == 2  # one worker per node
        ctx = [Context(0, 7 + i) for i in range(n)]
        o1, o2 = env.reset(ctx), local.reset(ctx)
        for k in o2:
            np.testing.assert_array_equal(o1[k], o2[k])
        rng = np.random.default_rng(0)
        for _ in range(5):
            a = rng.uniform(-1, 1, (n, 4, env.action_dim)).astype(np.float32)
            _assert_same(env.step(a), local.step(a))
    finally:
        env.close()
        local.close()


def _collector(env, cls=RolloutCollector, groups=4, method="flow_sde"):
    torch.manual_seed(0)
    policy = make_mlp_policy(4, 2, action_horizon=4, hidden=32, depth=2)
    policy.attach_value_head(policy.value_feature_dim if hasattr(policy, "value_feature_dim") else policy.feature_dim)
    policy.eval()
    return cls(env, policy, SamplerConfig(method=method, steps=4, logp_steps=4),
               CollectorConfig(num_groups=groups, group_size=1, seed=3))


def test_rollout_statistics_ray_equal_local(cluster):
    env = ray_env(PM, 4)
    try:
        r_ray, r_loc = _collector(env).collect(), _collector(make_env(PM, 4)).collect()
    finally:
        env.close()
    for k, v in r_loc.metrics.items():
        if not k.startswith("perf/"):
            assert r_ray.metrics[k] == v, k
    b1, b2 = r_ray.buffers[0], r_loc.buffers[0]
    torch.testing.assert_close(b1.log_probs, b2.log_probs, rtol=0, atol=0)
    torch.testing.assert_close(b1.rewards, b2.rewards, rtol=0, atol=0)


@dataclass
class _Chain:
    actions: torch.Tensor

    @staticmethod
    def cat(chains):
        return _Chain(torch.cat([c.actions for c in chains]))


class ScriptedPolicy:
    """Deterministic: the point-mass expert as a policy (actions a function of the observation only)."""

    def prepare(self, obs):
        return {"state": torch.from_numpy(obs["state"])}

    def act(self, obs, sampler, generator=None):
        a = torch.from_numpy(expert_actions(obs["state"].numpy(), 4, gain=0.4, angle=0.5))
        return ActOutput(actions=a, chain=_Chain(a), log_prob=torch.zeros(len(a)), value=None)


def test_pipelined_equals_sequential(cluster):
    env = ray_env(PM, 6)
    try:
        cfg = CollectorConfig(num_groups=6, seed=1)
        seq = RolloutCollector(env, ScriptedPolicy(), SamplerConfig(method="ode"), cfg)
        pipe = PipelinedCollector(env, ScriptedPolicy(), SamplerConfig(method="ode"), cfg)
        ctx = [Context(0, 11 + i) for i in range(6)]
        g = torch.Generator()
        trace = []
        for c in (seq, pipe):
            steps, t = c.steps(env.reset(ctx), c.sampler, g), []
            for obs, out, res in steps:
                t.append((obs["state"], out.actions, res))
            steps.close()
            trace.append(t)
        assert len(trace[0]) == len(trace[1]) == env.max_chunk_steps
        for (s1, a1, r1), (s2, a2, r2) in zip(*trace):
            torch.testing.assert_close(s1, s2, rtol=0, atol=0)
            torch.testing.assert_close(a1, a2, rtol=0, atol=0)
            _assert_same(r1, r2)
        e1, e2 = seq.run_episodes(ctx, seq.sampler), pipe.run_episodes(ctx, pipe.sampler)
        for k in e1:
            np.testing.assert_array_equal(e1[k], e2[k], err_msg=k)
        assert e1["success"].any()
        # a flow policy trains on pipelined rollouts (ratio check = 1 inside update)
        c = _collector(env, PipelinedCollector, groups=6)
        algo = preset("ppo")
        batch = build_batch(c.collect().buffers, algo.advantage)
        PPOUpdater(c.policy, algo.ppo, algo.optim).update(batch)
    finally:
        env.close()


def _kill(actor, pid: int) -> None:
    """ray.kill returns before the actor's process is gone: wait for it, or the next call may still run there."""
    ray.kill(actor)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise TimeoutError(f"actor process {pid} still alive 30 s after ray.kill")


def test_killed_worker_is_replaced_and_episodes_dropped(cluster):
    env = ray_env(PM, 4)
    try:
        env.reset([Context(0, i) for i in range(4)])
        env.step(np.zeros((4, 4, 2), np.float32))
        pid = env.pids()[1]
        _kill(env.workers[1], pid)
        res = env.step(np.zeros((4, 4, 2), np.float32))
        np.testing.assert_array_equal(res.info["crashed"], [False, False, True, True])
        np.testing.assert_array_equal(res.terminated, [False, False, True, True])
        assert env.restarts == 1 and env.pids()[1] != pid
        res = env.step(np.zeros((4, 4, 2), np.float32))  # the slice is ended until the next reset
        assert not (res.terminated[2:] | res.truncated[2:] | res.info["crashed"][2:]).any()

        # mid-run inside the collector: the run goes on, crashed groups are dropped and counted
        c = _collector(env)
        act, calls = c.policy.act, []
        pid0 = env.pids()[0]

        def act_and_kill(*a, **kw):
            calls.append(1)
            if len(calls) == 2:
                _kill(env.workers[0], pid0)
            return act(*a, **kw)

        c.policy.act = act_and_kill
        r = c.collect()
        assert env.restarts == 2
        assert r.metrics["rollout/crashed_groups"] == 2 and r.metrics["rollout/crashed_episodes"] == 2
        assert not r.buffers[0].valid[:, :2].any() and r.buffers[0].valid[0, 2:].all()
        # the lost episodes are re-collected (fresh contexts), so the batch keeps its 4 groups
        assert r.metrics["rollout/tries"] == 2 and r.metrics["rollout/groups_kept"] == 4
        assert r.buffers[1].valid[0].tolist() == [True, True, False, False]
        c.policy.act = act
        assert c.collect().metrics["rollout/crashed_episodes"] == 0
    finally:
        env.close()


def test_a_users_mistake_in_an_env_worker_is_raised_as_itself(cluster):
    from pirl.errors import UserError

    pytest.importorskip("metaworld")
    with pytest.raises(UserError, match="unknown MetaWorld task 'reech-v3'") as info:
        ray_env(EnvConfig(suite="metaworld", tasks=("reech-v3",), chunk=4), 2)
    assert not isinstance(info.value, ray.exceptions.RayError), "the CLI would print Ray's traceback"


def test_env_worker_killed_for_memory_ends_the_run_in_one_line_and_keeps_it(cluster, tmp_path, monkeypatch):
    """Ray's memory monitor killing an env worker is not a crash to retry (a fresh worker meets the same pressure):
    the run stops with a UserError that says what to lower and how to continue, its checkpoint and log kept."""
    import pirl.distributed.env as ray_env_module
    from pirl.errors import UserError
    from pirl.policies.io import save_policy
    from pirl.train.rl import RunnerConfig, Trainer, TrainConfig, train

    armed = []

    class RayProxy:  # ray, except that get() reports an OOM kill once the first checkpoint is written
        def __getattr__(self, name):
            return getattr(ray, name)

        def get(self, ref, timeout=None):
            if armed:
                raise ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")
            return ray.get(ref, timeout=timeout)

    monkeypatch.setattr(ray_env_module, "ray", RayProxy())
    save = Trainer.save

    def save_then_arm(self, *a, **kw):
        save(self, *a, **kw)
        armed.append(1)

    monkeypatch.setattr(Trainer, "save", save_then_arm)
    torch.manual_seed(0)
    save_policy(make_mlp_policy(4, 2, action_horizon=4, hidden=16, depth=1), tmp_path / "p.safetensors")
    cfg = TrainConfig(policy=str(tmp_path / "p.safetensors"), env=PM, num_groups=4, iterations=3,
                      checkpoint_every=1, runner=RunnerConfig(kind="ray", env_workers=2), eval_num_envs=2,
                      eval_episodes_per_task=2, eval_every=10, videos_per_task=0)
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"env worker 0 was killed by Ray's memory monitor.*2 sub-environments in "
                                        r"that worker, 4 on 2 workers.*pirl train --resume") as info:
        train(cfg, run)
    assert not isinstance(info.value, ray.exceptions.RayError) and "\n" not in str(info.value)
    assert (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir())
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # the evaluation before RL, iteration 1


def test_trainer_builds_ray_env(cluster, tmp_path):
    from pirl.policies.io import save_policy
    from pirl.train.rl import RunnerConfig, Trainer, TrainConfig

    torch.manual_seed(0)
    policy = make_mlp_policy(4, 2, action_horizon=4, hidden=16, depth=1)
    save_policy(policy, tmp_path / "p.safetensors")
    cfg = TrainConfig(policy=str(tmp_path / "p.safetensors"), env=PM, num_groups=4, iterations=1,
                      runner=RunnerConfig(kind="ray", env_workers=2, pipelined=True), eval_num_envs=2,
                      eval_episodes_per_task=2, videos_per_task=0)
    trainer = Trainer(cfg, tmp_path / "run")
    try:
        assert isinstance(trainer.env, RayVectorEnv) and isinstance(trainer.collector, PipelinedCollector)
        m = trainer.step()
        assert m["rollout/env_worker_restarts"] == 0 and np.isfinite(m["loss/total"])
    finally:
        trainer.close()


def test_gloo_learner_matches_single_process(tmp_path):
    from learner_check import run_check

    ours, ref = run_check(tmp_path)  # 2 spawned gloo ranks vs PPOUpdater, same batch and seed
    assert ours.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=0, atol=1e-5, msg=k)


def test_trainer_fsdp_learner_matches_ddp_and_resumes(cluster, tmp_path):
    """learner_strategy=fsdp vs ddp, 2 learner processes each: `train()` gives ddp's weights after two
    iterations, and a resumed third iteration (the checkpoint's gathered optimiser state scattered back
    into the shards) gives the uninterrupted ddp run's third."""
    from pirl.policies.io import load_policy, save_policy
    from pirl.train.rl import RunnerConfig, Trainer, TrainConfig, train

    torch.manual_seed(0)
    save_policy(make_mlp_policy(4, 2, action_horizon=4, hidden=16, depth=1), tmp_path / "p.safetensors")
    ddp = TrainConfig(policy=str(tmp_path / "p.safetensors"), env=PM, num_groups=4, iterations=3,
                      runner=RunnerConfig(kind="ray", env_workers=2, learner_processes=2, worker_cpus=0.5),
                      eval_num_envs=2,
                      eval_episodes_per_task=2, videos_per_task=0, checkpoint_every=1)
    trainer = Trainer(ddp, tmp_path / "ddp")
    try:
        ref = []
        for _ in range(3):
            trainer.step()
            ref.append({k: v.clone() for k, v in trainer.policy.state_dict().items()})
    finally:
        trainer.close()

    def check(weights, i):
        for k, v in ref[i].items():
            torch.testing.assert_close(weights[k], v, rtol=0, atol=1e-5, msg=f"iteration {i + 1}: {k}")

    fsdp = dataclasses.replace(ddp, runner=dataclasses.replace(ddp.runner, learner_strategy="fsdp"), iterations=2)
    assert train(fsdp, tmp_path / "fsdp") == 0
    check(load_policy(tmp_path / "fsdp" / "policy_latest.safetensors")[0].state_dict(), 1)
    assert train(dataclasses.replace(fsdp, iterations=3), tmp_path / "fsdp", resume=True) == 0
    check(load_policy(tmp_path / "fsdp" / "policy_latest.safetensors")[0].state_dict(), 2)
    assert any(not torch.equal(ref[2][k], ref[1][k]) for k in ref[1]), "the third update changed nothing"


def remote_follows_local(local, remote, pool, atol: float, device: str = "cpu") -> None:
    """Two collects (weights changed in between): the remote collector (a RemotePolicy over ``pool``'s one worker)
    gives the local one's rollouts, answers on the trainer's device, and its worker loads each published version."""
    for version in range(2):
        r_loc, r_ray = local.collect(), remote.collect()
        for k, v in r_loc.metrics.items():
            if not k.startswith("perf/"):
                assert r_ray.metrics[k] == v, k
        b1, b2 = r_ray.buffers[0], r_loc.buffers[0]
        assert b1.log_probs.device.type == device
        for f in ("log_probs", "values", "rewards"):
            torch.testing.assert_close(getattr(b1, f), getattr(b2, f), rtol=0, atol=atol, msg=f)
        assert pool.versions() == [version]
        with torch.no_grad():  # an "update": both sides change weights, only the pool's workers must be told
            for p1, p2 in zip(local.policy.parameters(), remote.policy.local.parameters()):
                p1.add_(0.05)
                p2.add_(0.05)
        pool.publish(remote.policy.local)


def test_rollout_workers_equal_local_and_follow_published_weights(cluster):
    from pirl.distributed.rollout import RemotePolicy, RolloutWorkerPool

    local = _collector(make_env(PM, 4))
    remote = _collector(make_env(PM, 4))
    pool = RolloutWorkerPool(remote.policy, 1, cpus_per_worker=0.25)
    remote.policy = RemotePolicy(remote.policy, pool)
    try:
        remote_follows_local(local, remote, pool, atol=0)
    finally:
        pool.close()


def test_killed_rollout_worker_restarts_with_current_weights(cluster):
    from pirl.distributed.rollout import RolloutWorkerPool

    c = _collector(make_env(PM, 4))
    pool = RolloutWorkerPool(c.policy, 2, cpus_per_worker=0.25)
    try:
        with torch.no_grad():
            for p in c.policy.parameters():
                p.mul_(1.1)
        pool.publish(c.policy)
        obs = c.policy.prepare(make_env(PM, 4).reset([Context(0, i) for i in range(4)]))
        sampler = SamplerConfig(method="flow_sde", steps=4, logp_steps=4)
        before = pool.act(obs, sampler, torch.Generator().manual_seed(5))
        pid = pool.pids()[0]
        _kill(pool.workers[0], pid)
        after = pool.act(obs, sampler, torch.Generator().manual_seed(5))
        assert pool.restarts == 1 and pool.pids()[0] != pid and pool.versions() == [1, 1]
        torch.testing.assert_close(after.actions, before.actions, rtol=0, atol=0)
        torch.testing.assert_close(after.log_prob, before.log_prob, rtol=0, atol=0)
        # two shards draw their own noise, from generators seeded by the caller's: the local policy re-scores them
        torch.testing.assert_close(c.policy.evaluate(obs, after.chain).log_prob, after.log_prob, rtol=0, atol=1e-5)
        torch.testing.assert_close(pool.value(obs), c.policy.value(obs), rtol=0, atol=1e-6)  # other batch shapes
    finally:
        pool.close()


def test_publish_ships_only_trainable_weights_once_the_base_is_out(cluster):
    """With part of the policy frozen, publishes after the first ship the trainable part (and buffers) only;
    workers, a restarted one too, act with base + delta; frozen weights changed otherwise need full=True."""
    from pirl.distributed.rollout import RolloutWorkerPool

    c = _collector(make_env(PM, 4))
    policy = c.policy
    frozen = [p for n, p in policy.named_parameters() if not n.startswith(("value_head", "noise_head"))][:2]
    for p in frozen:
        p.requires_grad_(False)
    nbytes = lambda ps: sum(p.numel() * p.element_size() for p in ps)  # noqa: E731
    full = nbytes(policy.state_dict().values())
    obs = policy.prepare(make_env(PM, 4).reset([Context(0, i) for i in range(4)]))

    def same_as_local(pool):
        out = pool.act(obs, SAMPLER, torch.Generator().manual_seed(5))
        ref = policy.act(obs, SAMPLER, generator=torch.Generator().manual_seed(5))
        return torch.equal(out.actions, ref.actions) and torch.equal(out.log_prob, ref.log_prob)

    pool = RolloutWorkerPool(policy, 1, cpus_per_worker=0.25)
    try:
        assert pool.last_publish_bytes == full and same_as_local(pool)
        with torch.no_grad():  # an update: trainable weights only
            for p in policy.parameters():
                if p.requires_grad:
                    p.add_(0.05)
        pool.publish(policy)
        assert pool.last_publish_bytes == full - nbytes(frozen) and same_as_local(pool)
        pid = pool.pids()[0]
        _kill(pool.workers[0], pid)
        assert same_as_local(pool) and pool.restarts == 1  # the new actor loads base, then delta
        with torch.no_grad():
            frozen[0].mul_(1.5)
        pool.publish(policy)
        assert not same_as_local(pool)  # the contract: frozen weights are not re-sent ...
        pool.publish(policy, full=True)
        assert pool.last_publish_bytes == full and same_as_local(pool)  # ... unless asked
        for p in frozen:  # nothing frozen: every publish is a full one
            p.requires_grad_(True)
        pool.publish(policy)
        assert pool.last_publish_bytes == full and same_as_local(pool) and pool.versions() == [pool.version]
    finally:
        pool.close()


def first_iteration_matches_local(base, ray_cfg, tmp_path, check_ray) -> None:
    """Runs one iteration of ``base`` (runner.kind=local) and of ``ray_cfg``, calls ``check_ray(trainer, weights, metrics)``
    (its step's metrics too) on the Ray run, then asserts equal rollout statistics and weights within 1e-5, and that the update moved."""
    from pirl.train.rl import Trainer

    metrics, weights = [], []
    for i, cfg in enumerate((base, ray_cfg)):
        trainer = Trainer(cfg, tmp_path / f"run{i}")
        try:
            start = {k: v.detach().cpu().clone() for k, v in trainer.policy.state_dict().items()}
            metrics.append(trainer.step())
            weights.append({k: v.detach().cpu().clone() for k, v in trainer.policy.state_dict().items()})
            if cfg.runner.kind == "ray":
                check_ray(trainer, weights[-1], metrics[-1])
        finally:
            trainer.close()
    loc, rem = metrics
    for k, v in loc.items():
        if k.startswith("rollout/") and k in rem:
            assert rem[k] == v, k
    for k in weights[0]:
        torch.testing.assert_close(weights[1][k], weights[0][k], rtol=0, atol=1e-5, msg=k)
    assert any(not torch.equal(start[k], v) for k, v in weights[1].items()), "the update changed nothing"


def test_trainer_rollout_workers_and_learner_ranks_match_local(cluster, tmp_path):
    """runner.kind=ray with a rollout worker, a 2-process gloo learner and collocated placement: the first
    iteration's rollout statistics and updated weights are the single-process trainer's."""
    from pirl.policies.io import save_policy
    from pirl.train.rl import RunnerConfig, TrainConfig

    torch.manual_seed(0)
    save_policy(make_mlp_policy(4, 2, action_horizon=4, hidden=16, depth=1), tmp_path / "p.safetensors")
    base = TrainConfig(policy=str(tmp_path / "p.safetensors"), env=PM, num_groups=4, iterations=1, eval_num_envs=2,
                       eval_episodes_per_task=2, videos_per_task=0)
    ray_cfg = dataclasses.replace(base, runner=RunnerConfig(kind="ray", env_workers=2, rollout_workers=1,
                                                            learner_processes=2, placement="collocated",
                                                            worker_cpus=0.25))

    def check_ray(trainer, weights, metrics):
        r = trainer.ray
        nodes = ray.get([w.node.remote() for w in r.env.workers + r.pool.workers])
        assert len(set(nodes)) == 1  # collocated: one STRICT_PACK placement group
        assert r.pool.version == 1 and r.pool.versions() == [0]  # published, loaded on the next request
        trainer.collect()
        assert r.pool.versions() == [1]
        assert metrics["rollout/rollout_worker_restarts"] == 0
        rank1 = ray.get(r.learners.actors[0].state_dict.remote())  # took the same all-reduced steps
        for k, v in weights.items():
            torch.testing.assert_close(rank1[k], v, rtol=0, atol=0, msg=k)

    first_iteration_matches_local(base, ray_cfg, tmp_path, check_ray)


def test_dead_learner_rank_resumes_from_last_checkpoint(cluster, tmp_path, monkeypatch):
    """A learner rank killed mid-run: the update fails at once (not after gloo's timeout), `train()` rebuilds the
    learner group from the last checkpoint and the run ends with the uninterrupted run's weights and metrics."""
    from pirl.policies.io import load_policy, save_policy
    from pirl.train.logging import read_metrics
    from pirl.train.rl import RunnerConfig, Trainer, TrainConfig, train

    torch.manual_seed(0)
    save_policy(make_mlp_policy(4, 2, action_horizon=4, hidden=16, depth=1), tmp_path / "p.safetensors")
    cfg = TrainConfig(policy=str(tmp_path / "p.safetensors"), env=PM, num_groups=4, iterations=4,
                      runner=RunnerConfig(kind="ray", env_workers=2, learner_processes=2, worker_cpus=0.5),
                      eval_num_envs=2, eval_episodes_per_task=2,
                      videos_per_task=0, checkpoint_every=2, eval_every=2)
    assert train(cfg, tmp_path / "ref") == 0

    step, calls = Trainer.step, []

    def step_and_kill(self):
        calls.append(self.iteration)
        if calls == [0, 1, 2, 3]:  # after the iteration-2 checkpoint, before iteration 4's update
            actor = self.ray.learners.actors[0]
            _kill(actor, ray.get(actor.pid.remote()))
            self.t_kill = time.perf_counter()
        return step(self, *())

    monkeypatch.setattr(Trainer, "step", step_and_kill)
    t0 = time.perf_counter()
    assert train(cfg, tmp_path / "run") == 0
    assert calls == [0, 1, 2, 3, 2, 3]  # iterations 3 and 4 again, from the checkpoint at 2
    assert time.perf_counter() - t0 < 120  # the failure is seen at once, not after the 300 s gloo timeout

    ref, got = read_metrics(tmp_path / "ref" / "metrics.jsonl"), read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in got] == [r["step"] for r in ref] == [0, 1, 2, 3, 4]
    assert [r.get("learner/restarts") for r in got] == [None, 0.0, 0.0, 1.0, 1.0]
    for a, b in zip(ref, got):
        for k, v in a.items():
            if not k.startswith("perf/") and k not in ("wall_time", "learner/restarts"):
                assert b[k] == v, (a["step"], k)
    w_ref = load_policy(tmp_path / "ref" / "policy_latest.safetensors")[0].state_dict()
    w_got = load_policy(tmp_path / "run" / "policy_latest.safetensors")[0].state_dict()
    for k, v in w_ref.items():
        torch.testing.assert_close(w_got[k], v, rtol=0, atol=1e-6, msg=k)


def test_learner_failure_is_only_a_broken_link():
    """Only a transport failure (a rank gone, a collective timed out) restarts the learner group; the update's
    own errors, a failed ratio check among them, stop the run with their own type and message."""
    from pirl.algorithms.ppo import RatioCheckError
    from pirl.distributed.learner import LearnerFailure, LearnerGroup

    group = LearnerGroup.__new__(LearnerGroup)  # no ranks: only the classification is under test

    def raising(e):
        def f():
            raise e
        return f

    with pytest.raises(LearnerFailure, match="Connection closed by peer"):
        group._together([], raising(RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer")), "x")
    for e in (RatioCheckError("ratio 1.3"), ValueError("shape (3,) vs (4,)"), RuntimeError("mat1 and mat2 shapes")):
        with pytest.raises(type(e)) as info:
            group._together([], raising(e), "x")
        assert info.value is e
    assert group._together([], lambda: 7, "x") == 7


def test_env_worker_steps_its_share_in_its_own_process():
    """env.vector=async under a Ray runner would start a simulator process per sub-environment inside each worker
    (48 LIBERO processes exhausted 24 GB): the worker builds a sync vector whatever env.vector says."""
    pytest.importorskip("metaworld")
    import gymnasium as gym

    from pirl.distributed.env import EnvWorker

    worker = EnvWorker(EnvConfig(suite="metaworld", tasks="reach-v3", vector="async"), 2)
    try:
        assert isinstance(worker.env._vec, gym.vector.SyncVectorEnv)
    finally:
        worker.env.close()


# -- what a Ray that cannot place the actors says (no cluster needed) -------------------------------------------

def _runner(env=2, rollout=0, learner=0, cpus=1.0, rollout_gpus=0.0, learner_gpus=0.0):
    from pirl.distributed.runner import RayRunner

    r = object.__new__(RayRunner)  # the resource arithmetic alone: no Ray started
    r.counts = {"env": env, "rollout": rollout, "learner": learner}
    r.worker_cpus, r.rollout_gpus, r.learner_gpus = cpus, rollout_gpus, learner_gpus
    return r


def test_a_local_ray_too_small_for_the_actors_is_refused_and_a_joined_one_is_waited_for_aloud(capsys):
    from pirl.errors import InputError

    _runner(env=2, learner=1, cpus=0.5)._check_fits({"CPU": 2.0})  # 1.5 of 2 CPUs: fits
    with pytest.raises(InputError, match=r"2 env worker\(s\), 1 learner rank\(s\) need 3 CPUs.*has 2;.*worker_cpus"):
        _runner(env=2, learner=1)._check_fits({"CPU": 2.0})
    with pytest.raises(InputError, match=r"^runner.kind=ray: 1 rollout worker\(s\) need 0.5 GPUs.*has 0;"):
        _runner(env=2, rollout=1, cpus=0.5, rollout_gpus=0.5)._check_fits({"CPU": 2.0})
    _runner(env=2)._notice_wait("auto", {"CPU": 2.0})
    assert capsys.readouterr().out == ""
    _runner(env=2)._notice_wait("auto", {"CPU": 0.0})
    assert "2 env worker(s) ask for 2 CPUs and the cluster has 0 free" in capsys.readouterr().out


def test_a_ray_address_that_does_not_answer_is_refused_at_once(monkeypatch):
    import socket

    from pirl.distributed import env as ray_env_module
    from pirl.errors import InputError

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.perf_counter()
    with pytest.raises(InputError, match=f"runner.address=127.0.0.1:{port}: no Ray cluster answers there.*ray start"):
        ray_env_module._check_reachable(f"127.0.0.1:{port}")
    assert time.perf_counter() - t < 10

    def no_cluster(**kw):
        raise ConnectionError("Could not find any running Ray instance")

    monkeypatch.setattr(ray_env_module.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_env_module.ray, "init", no_cluster)
    with pytest.raises(InputError, match="runner.address=auto: Could not find any running Ray instance; start a"):
        ray_env_module.init_ray("auto")
