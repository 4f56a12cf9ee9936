"""The MetaWorld adapter against the ChunkVectorEnv contract."""

import numpy as np
import pytest

import pirl.envs  # noqa: F401  (sets MUJOCO_GL before metaworld imports mujoco)

pytest.importorskip("metaworld")

from pirl.envs.base import ChunkVectorEnv, Context  # noqa: E402
from pirl.envs.metaworld import EVAL_SEED_START, MetaWorldConfig, eval_contexts, make_metaworld, train_contexts  # noqa: E402
from pirl.envs.metaworld_tasks import INSTRUCTIONS, MT10, resolve_tasks  # noqa: E402


def test_instructions_for_all_50_tasks():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert set(INSTRUCTIONS) == set(ALL_V3_ENVIRONMENTS) and len(INSTRUCTIONS) == 50
    assert len(set(INSTRUCTIONS.values())) == 50, "instructions must tell the tasks apart"
    assert all(len(s.split()) >= 3 and s == s.strip() for s in INSTRUCTIONS.values())


def test_task_resolution_and_close_matches():
    assert resolve_tasks("MT10") == MT10
    assert resolve_tasks("MT1:reach-v3") == ("reach-v3",)
    assert resolve_tasks(["push-v3", "reach-v3"]) == ("push-v3", "reach-v3")
    with pytest.raises(ValueError, match="did you mean 'pick-place-v3'"):
        resolve_tasks("pick-plce-v3")
    with pytest.raises(ValueError, match="did you mean"):
        MetaWorldConfig(tasks="drawer-opn")


def test_steps_every_mt10_task():
    with make_metaworld(tasks="MT10", num_envs=10, chunk=3) as env:
        assert isinstance(env, ChunkVectorEnv)
        obs = env.reset([Context(t, 0) for t in range(10)])
        assert obs["state"].shape == (10, 39) and obs["state"].dtype == np.float32
        assert obs["task"].tolist() == list(range(10))
        assert list(obs["instruction"]) == [INSTRUCTIONS[t] for t in MT10]
        rng = np.random.default_rng(0)
        for _ in range(2):
            res = env.step(rng.uniform(-1, 1, (10, 5, 4)))  # H=5 > chunk: only the first 3 run
            assert np.isfinite(res.obs["state"]).all()
            assert res.reward.shape == (10,) and res.reward.dtype == np.float32
        assert res.info["episode_length"].tolist() == [6] * 10


def test_wrong_action_shape_names_the_expected_shape():
    with make_metaworld(tasks="reach-v3", num_envs=2, chunk=4) as env:
        env.reset([Context(0, 0), Context(0, 1)])
        with pytest.raises(ValueError, match=r"expected \[N=2, H>=4, D=4\]"):
            env.step(np.zeros((2, 4, 3)))
        with pytest.raises(ValueError, match=r"H>=4"):
            env.step(np.zeros((2, 2, 4)))
        with pytest.raises(ValueError, match="NaN"):
            env.step(np.full((2, 4, 4), np.nan))
        with pytest.raises(ValueError, match="out of range"):
            env.reset([Context(3, 0), Context(0, 0)])


def test_same_context_same_initial_state():
    with make_metaworld(tasks=("push-v3", "pick-place-v3"), num_envs=2) as env:
        first = env.reset([Context(1, 7), Context(0, 7)])["state"]
        env.step(np.random.default_rng(0).uniform(-1, 1, (2, 4, 4)))
        env.reset([Context(0, 3), Context(1, 3)])  # other episodes in between
        again = env.reset([Context(1, 7), Context(0, 7)])["state"]
        other = env.reset([Context(1, 8), Context(0, 8)])["state"]
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first[:, -3:], other[:, -3:]), "another seed must move the goal"
    with make_metaworld(tasks=("push-v3", "pick-place-v3"), num_envs=1) as env2:  # a fresh process-level env
        np.testing.assert_array_equal(env2.reset([Context(1, 7)])["state"][0], first[0])


def test_env_pool_holds_peak_concurrency_not_envs_times_tasks():
    # one env per (sub-env, task) grew to 9 GB per process on MT10; the shared pool must not
    with make_metaworld(tasks=("reach-v3", "push-v3", "drawer-close-v3"), num_envs=4) as env:
        pool = env._vec.envs[0].pool
        assert all(sub.pool is pool for sub in env._vec.envs)
        for shift in range(6):  # every sub-env visits every task, at most 2 sub-envs per task at once
            env.reset([Context((i // 2 + shift) % 3, shift) for i in range(4)])
        assert pool.built == 6, pool.built  # 3 tasks x 2 at once
        a = env.reset([Context(0, 11)] * 4)["state"]  # 4 reach envs at once, some built, some reused
        assert pool.built == 8  # 2 more reach envs; the other tasks' stay idle in the pool
        np.testing.assert_array_equal(a, np.repeat(a[:1], 4, 0))


def test_train_and_eval_seeds_are_disjoint():
    train = {c.seed for c in train_contexts(10, 100)}
    held_out = {c.seed for c in eval_contexts(10, 100)}
    assert not train & held_out and min(held_out) >= EVAL_SEED_START
    assert eval_contexts(2, 3) == eval_contexts(2, 3)


def _expert_chunks(env, obs, experts, H):
    # the expert's action for the current state, held for the whole chunk
    return np.stack([np.repeat(experts[t].get_action(s)[None], H, 0) for t, s in zip(obs["task"], obs["state"])])


def test_chunk_stops_at_success_and_ended_envs_ignore_actions():
    from metaworld.policies import ENV_POLICY_MAP

    H = 16
    with make_metaworld(tasks="reach-v3", num_envs=1, chunk=H, record=True, image_size=32, render_size=48) as env:
        experts = [ENV_POLICY_MAP["reach-v3"]()]
        obs = env.reset([Context(0, 0)])
        for _ in range(env.max_chunk_steps):
            res = env.step(_expert_chunks(env, obs, experts, H))
            obs = res.obs
            if res.terminated[0]:
                break
        assert res.success[0] and res.terminated[0] and not res.truncated[0]
        assert res.reward[0] == 1.0  # sparse: the success step only
        length = int(res.info["episode_length"][0])
        assert length % H != 0, "the chunk must stop at the success step, not run to its end"
        assert len(res.info["frames"]) == int(res.info["executed"][0]) == (length - 1) % H + 1
        assert res.info["frames"][0].shape == (1, 48, 48, 3)  # render_size, not the policy's image_size
        after = env.step(np.ones((1, H, 4)))  # ended: ignored
        assert after.reward[0] == 0 and not after.terminated[0] and not after.success[0]
        assert after.info["episode_length"][0] == length
        np.testing.assert_array_equal(after.obs["state"], obs["state"])


def test_truncation_then_reset_works():
    with make_metaworld(tasks="reach-v3", num_envs=1, chunk=4, max_episode_steps=10, reward="dense") as env:
        assert env.max_chunk_steps == 3
        env.reset([Context(0, 0)])
        flags = [env.step(np.zeros((1, 4, 4))) for _ in range(4)]  # the 4th is past the end: ignored, no error
        assert [bool(r.truncated[0]) for r in flags] == [False, False, True, False]
        assert flags[2].info["episode_length"][0] == 10 and flags[0].reward[0] > 0  # dense reward
        env.reset([Context(0, 1)])
        assert not env.step(np.zeros((1, 4, 4))).truncated[0]


def test_images_shape_and_env_obs():
    with make_metaworld(tasks="reach-v3", num_envs=2, camera="corner2", image_size=48) as env:
        obs = env.reset([Context(0, 0), Context(0, 1)])
        assert obs["image"].shape == (2, 48, 48, 3) and obs["image"].dtype == np.uint8
        assert obs["image"].std() > 5, "rendered image is blank"
        res = env.step(np.zeros((2, 4, 4)))
        assert res.obs["image"].shape == (2, 48, 48, 3)


@pytest.mark.parametrize("camera", ["corner2", "corner", "corner3", "behindGripper"])
def test_images_are_upright_and_not_mirrored(camera):
    """Moving a marker up in the world moves it up in the image; moving it to the camera's
    right (forward x world-up) moves it right."""
    import mujoco
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    from pirl.envs.mujoco_render import ModelRenderer

    env = ALL_V3_ENVIRONMENTS["reach-v3"]()
    m, d = env.model, env.data
    site = m.site("goal").id
    m.site_size[site] = 0.03
    m.site_rgba[site] = [0, 1, 0, 1]
    r = ModelRenderer(m, camera, 96, 96)
    mujoco.mj_forward(m, d)
    cam = d.cam_xmat[m.camera(camera).id].reshape(3, 3)
    forward = -cam[:, 2]
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    # a point in front of the camera, near the table
    base = d.cam_xpos[m.camera(camera).id] + 0.8 * forward

    def centroid(p):
        m.site_pos[site] = p
        mujoco.mj_forward(m, d)
        img = r.render(d).astype(int)
        green = (img[..., 1] > 150) & (img[..., 0] < 100) & (img[..., 2] < 100)
        assert green.sum() > 3, f"marker not visible from {camera}"
        rows, cols = np.nonzero(green)
        return rows.mean(), cols.mean()

    r0, c0 = centroid(base)
    r_up, _ = centroid(base + 0.08 * np.array([0, 0, 1.0]))
    _, c_right = centroid(base + 0.08 * right)
    r.close()
    env.close()
    assert r_up < r0 - 2, f"{camera}: world-up moved the marker down the image (upside down)"
    assert c_right > c0 + 2, f"{camera}: camera-right moved the marker left (mirrored)"


def test_async_subprocess_vector_matches_sync():
    contexts = [Context(0, 5), Context(1, 6)]
    actions = np.random.default_rng(1).uniform(-1, 1, (2, 4, 4))
    results = []
    for vector in ("sync", "async"):
        with make_metaworld(tasks=("reach-v3", "push-v3"), num_envs=2, vector=vector) as env:
            env.reset(contexts)
            results.append(env.step(actions).obs["state"])
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)


def test_async_vector_refuses_more_processes_than_the_machine_holds(monkeypatch):
    """One simulator process per sub-environment: beyond max(8, 2 x CPUs) the vector is refused (48 LIBERO
    processes exhausted a 24 GB machine) with the fix named, before any process starts."""
    from pirl.envs import chunked
    from pirl.errors import InputError

    monkeypatch.setattr(chunked.os, "cpu_count", lambda: 2)
    assert chunked.max_async_envs() == 8
    with pytest.raises(InputError, match=r"48 here, on 2 CPUs.*runner.kind=ray runner.env_workers"):
        make_metaworld(tasks="reach-v3", num_envs=48, vector="async")
    monkeypatch.setattr(chunked.os, "cpu_count", lambda: 32)
    assert chunked.max_async_envs() == 64


def test_terminate_on_success_false_runs_to_the_limit_and_pays_for_holding_the_goal():
    from metaworld.policies import ENV_POLICY_MAP

    from pirl.envs.registry import EnvConfig, make_env

    H = 4
    cfg = EnvConfig(tasks="reach-v3", chunk=H, max_episode_steps=120, terminate_on_success=False)
    with make_env(cfg, 1) as env:
        expert = [ENV_POLICY_MAP["reach-v3"]()]
        obs, rewards, successes = env.reset([Context(0, 0)]), [], []
        for _ in range(env.max_chunk_steps):
            res = env.step(_expert_chunks(env, obs, expert, H))
            obs = res.obs
            rewards.append(float(res.reward[0]))
            successes.append(bool(res.success[0]))
            assert not res.terminated[0]
        assert res.truncated[0] and res.info["episode_length"][0] == 120
        first = successes.index(True)
        # sparse reward: 1 per action at which the goal holds, so holding it after the first success keeps paying
        assert sum(rewards[first + 1:]) > 0
    with pytest.raises(ValueError, match="point_mass"):
        make_env(EnvConfig(suite="point_mass", terminate_on_success=False), 1)
