"""Point-mass env, rollout buffer and collector (contexts, groups, bootstrap, dynamic rejection)."""

import logging

import numpy as np
import pytest
import torch

from pirl.algorithms import AdvantageConfig, RolloutBuffer, build_batch
from pirl.envs.base import EVAL_SEED_START, ChunkVectorEnv, Context
from pirl.envs.point_mass import PointMassConfig, PointMassEnv, expert_actions
from pirl.flow import SamplerConfig
from pirl.policies.mlp import make_mlp_policy
from pirl.train.rollout import CollectorConfig, RolloutCollector

torch.set_num_threads(1)


# -- env ------------------------------------------------------------------------------------
def test_point_mass_protocol_and_determinism():
    env = PointMassEnv(3, PointMassConfig(num_tasks=2))
    assert isinstance(env, ChunkVectorEnv)
    ctx = [Context(0, 5), Context(1, 5), Context(0, 6)]
    a, b = env.reset(ctx)["state"], env.reset(ctx)["state"]
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a[:, 2:], [[0.5, 0.5], [-0.5, 0.5], [0.5, 0.5]])
    assert env.reset(ctx)["instruction"][1] == env.instructions[1]


def test_point_mass_success_truncation_and_ended_envs():
    cfg = PointMassConfig(max_chunk_steps=3)
    env = PointMassEnv(2, cfg)
    obs = env.reset([Context(0, 1), Context(0, 2)])
    zero = np.zeros((2, 4, 2), np.float32)
    expert = expert_actions(obs["state"], 4)
    acts = np.stack([expert[0], zero[1]])  # env 0 heads to the goal, env 1 stands still
    lengths = []
    for t in range(3):
        res = env.step(acts if t == 0 else np.stack([expert_actions(res.obs["state"], 4)[0], zero[1]]))
        lengths.append(res.info["episode_length"].copy())
        if t < 2:
            assert not res.truncated.any()
    assert res.truncated[1] and not res.terminated[1] and res.reward[1] == 0
    # env 1 ended: further actions are ignored and report nothing
    res2 = env.step(np.ones((2, 4, 2), np.float32))
    assert not (res2.terminated | res2.truncated).any() and res2.reward.sum() == 0
    np.testing.assert_array_equal(res2.obs["state"], res.obs["state"])


def test_point_mass_clips_actions_and_rejects_bad_shapes():
    env = PointMassEnv(1, PointMassConfig(speed=0.1))
    s0 = env.reset([Context(0, 3)])["state"][0, :2].copy()
    res = env.step(np.full((1, 4, 2), 100.0, np.float32))
    moved = res.obs["state"][0, :2] - s0
    assert np.all(moved <= 0.4 + 1e-6)
    with pytest.raises(ValueError, match="actions must be"):
        env.step(np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="one context per sub-env"):
        env.reset([Context(0, 1), Context(0, 2)])


def test_expert_succeeds():
    env = PointMassEnv(64, PointMassConfig(num_tasks=4))
    obs = env.reset([Context(i % 4, i) for i in range(64)])
    success = np.zeros(64, bool)
    for _ in range(env.max_chunk_steps):
        res = env.step(expert_actions(obs["state"], 4))
        success |= res.success
        obs = res.obs
    assert success.all()


# -- collector and buffer -------------------------------------------------------------------
def _collector(groups=4, G=2, max_chunk_steps=3, method="flow_sde", value_head=True, env_cfg=None, **cfg):
    torch.manual_seed(0)
    policy = make_mlp_policy(4, 2, hidden=32, depth=2, value_head=value_head)
    env_cfg = env_cfg or PointMassConfig(num_tasks=2, max_chunk_steps=max_chunk_steps)
    env = PointMassEnv(groups * G, env_cfg)
    return RolloutCollector(env, policy, SamplerConfig(method=method), CollectorConfig(groups, G, **cfg))


def test_collector_fills_buffer_with_groups_and_bootstrap():
    col = _collector()
    rollout = col.collect()
    (buf,) = rollout.buffers
    T = buf.step
    assert T <= 3 and buf.valid[:T].any(0).all()
    # valid is a prefix per env; every episode's last valid step ended
    v = buf.valid[:T]
    assert torch.equal(v, torch.cummin(v.int(), 0).values.bool())
    ended = (buf.terminated | buf.truncated)[:T]
    last = v.sum(0) - 1
    assert ended[last, torch.arange(buf.N)].all()
    # groups share a context: same task and start state within a group
    assert torch.equal(buf.group, torch.arange(4).repeat_interleave(2))
    s0 = buf.obs["state"][0]
    torch.testing.assert_close(s0[0::2], s0[1::2])
    assert torch.equal(buf.task[0::2], buf.task[1::2])
    # truncated steps carry V(final obs); the untrained policy rarely succeeds in 3 chunks
    tr = buf.truncated[:T]
    assert tr.any() and (buf.bootstrap_values[:T][tr] != 0).all() and (buf.bootstrap_values[:T][~tr] == 0).all()
    m = rollout.metrics
    assert m["rollout/episodes"] == 8 and m["rollout/env_steps"] > 0 and 0 <= m["rollout/success_rate"] <= 1
    batch = build_batch(rollout.buffers, AdvantageConfig("gae"))
    assert len(batch) == int(v.sum())
    assert batch.chain.xs.shape[0] == len(batch) and batch.obs["state"].shape == (len(batch), 4)
    # the stored log-probs are the chains' own
    torch.testing.assert_close(batch.old_log_prob, batch.chain.log_prob)


def test_rollout_success_is_reported_per_task():
    # big goals: the untrained policy succeeds on some episodes, so a task's figure can be told from the mean
    env_cfg = PointMassConfig(num_tasks=2, max_chunk_steps=3, speed=0.25, goal_radius=0.8)
    col = _collector(groups=8, G=2, env_cfg=env_cfg)
    rollout = col.collect()
    (buf,) = rollout.buffers
    m, names = rollout.metrics, col.env.task_names
    success = buf.episode_success().float()
    for t in buf.task.unique().tolist():
        expected = float(success[buf.task == t].mean())
        assert m[f"rollout/success/{names[t]}"] == pytest.approx(expected)
    assert {k for k in m if k.startswith("rollout/success/")} == {f"rollout/success/{names[t]}" for t in buf.task.unique().tolist()}
    # one task: the mean says it all
    single = _collector(groups=2, G=2, env_cfg=PointMassConfig(num_tasks=1, max_chunk_steps=2)).collect().metrics
    assert not any(k.startswith("rollout/success/") for k in single)


def test_buffer_estimate_bytes_matches_allocation():
    col = _collector(groups=8, G=1, max_chunk_steps=4)
    (buf,) = col.collect().buffers
    obs = {k: v[0] for k, v in buf.obs.items()}
    est = RolloutBuffer.estimate_bytes(buf.T, buf.N, obs, buf.chains[0])
    # allocated for T steps, chains only for the steps taken
    assert est >= buf.nbytes() and est <= 1.5 * buf.nbytes() + 1024 * buf.T
    assert RolloutBuffer.estimate_bytes(2 * buf.T, buf.N, obs, buf.chains[0]) > 1.9 * est


def test_buffer_bad_input():
    buf = RolloutBuffer(2, 3)
    with pytest.raises(ValueError, match="empty rollout buffer"):
        buf.advantages(AdvantageConfig())
    with pytest.raises(ValueError, match="reward must be"):
        buf.add({"state": torch.zeros(3, 4)}, None, torch.zeros(3), torch.zeros(3), torch.zeros(4),
                torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="obs\\['state'\\] has batch"):
        buf.add({"state": torch.zeros(2, 4)}, None, torch.zeros(3), torch.zeros(3), torch.zeros(3),
                torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty batch"):
        build_batch([], AdvantageConfig())


def test_nan_rewards_raise():
    col = _collector()
    (buf,) = col.collect().buffers
    buf.rewards[0, 0] = float("nan")
    for est in ("gae", "grpo", "rloo"):
        with pytest.raises(ValueError, match="non-finite"):
            buf.advantages(AdvantageConfig(est))


def test_dynamic_rejection_keeps_informative_groups():
    # big goals and fast moves: an untrained stochastic policy succeeds about half the time
    env_cfg = PointMassConfig(num_tasks=2, max_chunk_steps=3, speed=0.25, goal_radius=0.8)
    col = _collector(groups=4, G=4, env_cfg=env_cfg, group_filter="nonuniform", max_tries=3)
    rollout = col.collect()
    m = rollout.metrics
    assert 0.1 < m["rollout/success_rate"] < 0.9, m
    assert m["rollout/groups_kept"] >= 1
    # kept + dropped covers every group of every try; never more than the target is kept
    assert m["rollout/groups_kept"] + m["rollout/groups_dropped"] == 4 * m["rollout/tries"]
    assert m["rollout/groups_kept"] <= 4
    for buf in rollout.buffers:
        succ = buf.episode_success()
        for g in buf.group.unique():
            rows = buf.group == g
            if buf.valid[:, rows].any():  # kept groups are informative
                assert succ[rows].any() and not succ[rows].all()


def test_dynamic_rejection_bounded_and_logged(caplog):
    # the goal cannot be reached in time: every group fails uniformly, every try is rejected
    env_cfg = PointMassConfig(max_chunk_steps=2, speed=1e-4)
    col = _collector(groups=2, G=2, env_cfg=env_cfg, group_filter="nonuniform", max_tries=3)
    with caplog.at_level(logging.WARNING):
        rollout = col.collect()
    m = rollout.metrics
    assert m["rollout/tries"] == 3 and m["rollout/groups_dropped"] == 6 and m["rollout/groups_kept"] == 0
    assert m["rollout/filter_exhausted"] == 1.0
    assert "0 of 2 informative groups after 3 tries" in caplog.text
    assert rollout.buffers == []
    with pytest.raises(ValueError, match="empty batch"):
        build_batch(rollout.buffers, AdvantageConfig("rloo"))


def test_evaluate_is_reproducible_and_held_out():
    col = _collector()
    reset, seen = col.env.reset, []
    col.env.reset = lambda contexts: seen.append(list(contexts)) or reset(contexts)
    a = col.evaluate(range(6))
    b = col.evaluate(range(6))
    assert a == b and a["eval/episodes"] == 6 * 2
    evaluated = {(c.task, c.seed) for batch in seen for c in batch}
    assert evaluated == {(t, EVAL_SEED_START + s) for t in (0, 1) for s in range(6)}  # every task x held-out seed
    seen.clear()
    for _ in range(3):
        col.collect()
    trained = {c.seed for batch in seen for c in batch}
    assert trained and max(trained) < EVAL_SEED_START, "training rollouts must not use held-out seeds"


def test_collector_config_validates():
    with pytest.raises(ValueError, match="group_filter"):
        CollectorConfig(4, 2, group_filter="all")
    with pytest.raises(ValueError, match="sub-envs"):
        RolloutCollector(PointMassEnv(3), make_mlp_policy(4, 2, hidden=8, depth=1), SamplerConfig(), CollectorConfig(2, 2))


def test_adaptive_task_sampling_favours_tasks_being_learned():
    col = _collector(groups=4, G=1, task_sampling="adaptive")
    np.testing.assert_allclose(col.task_probs(), [0.5, 0.5])  # no information yet: uniform
    col.task_success[:] = [1.0, 0.5]  # task 0 solved, task 1 half way
    p = col.task_probs()
    np.testing.assert_allclose(p, np.array([0.1, 1.1]) / 1.2)
    drawn = np.concatenate([[c.task for c in col.sample_contexts()[0]] for _ in range(200)])
    assert 0.05 < (drawn == 0).mean() < 0.13
    # the running success follows the rollouts: a batch of failures on task 1 pulls it down by adaptive_rate
    col._update_task_success([Context(1, 0), Context(1, 1)], {"success": np.zeros(2, bool),
                                                                 "crashed": np.zeros(2, bool)})
    np.testing.assert_allclose(col.task_success, [1.0, 0.35])
    assert _collector(groups=4, G=1).task_probs() is None
    # what it acts on is logged per task after every collect
    m = col.collect().metrics
    names = col.env.task_names
    probs = [m[f"tasks/draw_prob/{n}"] for n in names]
    np.testing.assert_allclose(probs, col.task_probs())
    np.testing.assert_allclose([m[f"tasks/running_success/{n}"] for n in names], col.task_success)
    assert not any(k.startswith("tasks/") for k in _collector(groups=4, G=1).collect().metrics)
    with pytest.raises(ValueError, match="task_sampling"):
        CollectorConfig(4, 1, task_sampling="greedy")


def test_failing_task_sampling_favours_the_weakest_task():
    col = _collector(groups=4, G=1, task_sampling="failing")
    np.testing.assert_allclose(col.task_probs(), [0.5, 0.5])
    # unlike adaptive (which weighs a hopeless task like a solved one), the task at 0.1 gets the most rollouts
    col.task_success[:] = [0.9, 0.1]
    np.testing.assert_allclose(col.task_probs(), np.array([0.2, 1.0]) / 1.2)
    drawn = np.concatenate([[c.task for c in col.sample_contexts()[0]] for _ in range(200)])
    assert 0.78 < (drawn == 1).mean() < 0.88


def test_evaluate_policy_gives_each_context_the_same_episode_in_any_order():
    """The episodes run in one canonical order, so listing the contexts task-major or shuffled changes no outcome:
    the result comes back in the order given, each context with the episode it gets from every caller."""
    from pirl.train.evaluate import evaluate_policy

    torch.manual_seed(0)
    policy = make_mlp_policy(4, 2, action_horizon=4, hidden=16, depth=1, noise_head=False)
    env = PointMassEnv(3, PointMassConfig(num_tasks=2, chunk=4, max_chunk_steps=16))
    sampler = SamplerConfig(method="flow_sde", steps=4, noise_level=1.0)  # noise drawn batch by batch
    task_major = [Context(t, EVAL_SEED_START + s) for t in (0, 1) for s in range(7)]
    shuffled = [task_major[i] for i in np.random.default_rng(0).permutation(len(task_major))]
    a = evaluate_policy(policy, env, task_major, sampler, seed=2)
    b = evaluate_policy(policy, env, shuffled, sampler, seed=2)
    assert b.contexts == shuffled
    by_context = dict(zip(b.contexts, zip(b.success, b.episode_length)))
    assert [by_context[c] for c in task_major] == list(zip(a.success, a.episode_length))
    assert 0 < a.success.sum() < len(a.success) and len(set(a.episode_length)) > 1, "outcomes that could differ"
