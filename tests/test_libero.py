"""LIBERO adapter: offline setup, the four suites, init states, warm-up, state layout, cameras.

Needs ``pirl[libero]`` and LIBERO's assets ($PIRL_LIBERO_ASSETS, /work/shared/libero-assets, or
the package's own folder). The default run covers every suite (task 0 with pixels, and task
switching); ``-m slow`` covers all 40 tasks.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from pirl.envs.base import ChunkVectorEnv, Context

if importlib.util.find_spec("libero") is None:
    pytest.skip("hf-libero is not installed (pip install 'pirl[libero]')", allow_module_level=True)

from pirl.envs import libero as L  # noqa: E402


def _assets() -> str | None:
    for p in (os.environ.get("PIRL_LIBERO_ASSETS"), "/work/shared/libero-assets",
              os.path.join(L._package_root(), "assets")):
        if p and os.path.isdir(os.path.join(p, "scenes")):
            return p
    return None


ASSETS = _assets()
needs_assets = pytest.mark.skipif(ASSETS is None, reason="LIBERO assets unavailable: set $PIRL_LIBERO_ASSETS to a copy of LIBERO's assets folder")
SUITES4 = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


def test_first_import_asks_nothing(tmp_path):
    """A fresh HOME without LIBERO config: importing and listing tasks must not read stdin."""
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("LIBERO_CONFIG_PATH", None)
    code = "from pirl.envs.libero import suite_tasks; print(len(suite_tasks('libero_10')))"
    out = subprocess.run([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "10"
    assert list((tmp_path / ".cache/pirl/libero").glob("*/config.yaml"))  # one config per installation


def test_suites_and_task_names():
    for suite in SUITES4:
        tasks = L.suite_tasks(suite)
        assert len(tasks) == 10 and all(name and instr for name, instr in tasks)
    name = L.suite_tasks("libero_goal")[3][0]
    assert L.resolve_tasks("libero_goal", [name, 0]) == (3, 0)
    with pytest.raises(ValueError, match="did you mean"):
        L.resolve_tasks("libero_goal", [name[:-3] + "xyz"])
    with pytest.raises(ValueError, match="suite"):
        L.LiberoConfig(suite="libero_11")


def test_missing_assets_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="LIBERO assets not found"):
        L.setup_libero(str(tmp_path))


def test_quat2axisangle():
    assert np.allclose(L.quat2axisangle(np.array([0, 0, 0, 1.0])), 0)
    h = np.sqrt(0.5)  # 90 degrees about z
    assert np.allclose(L.quat2axisangle(np.array([0, 0, h, h])), [0, 0, np.pi / 2])


@needs_assets
def test_state_episode_init_states_and_chunks():
    env = L.make_libero(suite="libero_spatial", tasks=(0,), chunk=4, assets_path=ASSETS, max_episode_steps=8)
    try:
        assert isinstance(env, ChunkVectorEnv)
        assert (env.action_dim, env.state_dim, env.max_chunk_steps) == (7, 8, 2)
        o = env.reset([Context(0, 3)])
        assert o["state"].shape == (1, 8) and o["state"].dtype == np.float32
        assert o["task"].tolist() == [0] and "bowl" in o["instruction"][0]
        assert "image" not in o
        np.testing.assert_allclose(o["state"][0, 6:], [0.0387, -0.0387], atol=2e-3)  # gripper open after warm-up
        again = env.reset([Context(0, 3)])["state"]
        np.testing.assert_array_equal(again, o["state"])  # same seed, same init state
        other = env.reset([Context(0, 4)])["state"]
        assert not np.allclose(other, o["state"])  # another init state
        up = np.zeros((1, 6, 7), np.float32)
        up[..., 2] = 1.0  # move up
        r = env.step(up)
        assert r.obs["state"][0, 2] > other[0, 2] + 0.01
        assert r.info["executed"].tolist() == [4] and not r.truncated[0]
        r = env.step(up)
        assert r.truncated.tolist() == [True] and r.info["episode_length"].tolist() == [8]
        r = env.step(up)  # ended: actions ignored
        assert not r.truncated[0] and r.info["executed"].tolist() == [0] and r.reward[0] == 0
    finally:
        env.close()


@needs_assets
@pytest.mark.parametrize("suite", SUITES4)
def test_suite_pixels_and_task_switch(suite):
    """Task 0 with both cameras (small), then another task of the suite in the same sub-environment."""
    env = L.make_libero(suite=suite, tasks=(0, 9), chunk=2, image_size=32, assets_path=ASSETS,
                        init_states="random", record=True, render_size=48)
    try:
        for task in (0, 1):
            o = env.reset([Context(task, 7)])
            assert o["image"].shape == (1, 32, 32, 3) and o["wrist_image"].shape == (1, 32, 32, 3)
            assert o["image"].dtype == np.uint8 and o["image"].std() > 5  # a scene, not a blank buffer
            r = env.step(np.zeros((1, 2, 7), np.float32))
            # video frames at render_size, apart from the policy's 32 px images
            assert len(r.info["frames"]) == 2 and r.info["frames"][0].shape == (1, 48, 48, 3)
            assert np.isfinite(r.obs["state"]).all()
        assert env.max_chunk_steps == -(-L.MAX_STEPS[suite] // 2)
    finally:
        env.close()


@needs_assets
@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES4)
def test_every_task_creates_resets_steps_renders(suite):
    env = L.make_libero(suite=suite, chunk=2, image_size=64, assets_path=ASSETS)
    try:
        for task in range(len(env.task_names)):
            o = env.reset([Context(task, task)])
            assert o["image"].std() > 5 and o["wrist_image"].std() > 1
            r = env.step(np.zeros((1, 2, 7), np.float32))
            assert np.isfinite(r.obs["state"]).all() and not r.info["crashed"][0]
    finally:
        env.close()


@needs_assets
@pytest.mark.slow
def test_async_workers():
    env = L.make_libero(suite="libero_object", tasks=(0, 1), num_envs=2, chunk=2, assets_path=ASSETS, vector="async")
    try:
        o = env.reset([Context(0, 0), Context(1, 0)])
        assert o["state"].shape == (2, 8)
        r = env.step(np.zeros((2, 2, 7), np.float32))
        assert r.info["executed"].tolist() == [2, 2]
    finally:
        env.close()


def test_held_out_init_states_split():
    from pirl.envs.base import EVAL_SEED_START

    train = {L.init_state_index(s, 50, 20, "ordered") for s in range(200)}
    held = [L.init_state_index(EVAL_SEED_START + i, 50, 20, "ordered") for i in range(25)]
    assert train == set(range(30)) and held[:20] == list(range(30, 50)) and held[20] == 30
    assert {L.init_state_index(s, 50, 20, "random") for s in range(300)} <= set(range(30))
    assert L.init_state_index(EVAL_SEED_START + 7, 50, 0, "ordered") == 7  # no split: the standard 50 trials
    with pytest.raises(ValueError, match="held_out"):
        L.init_state_index(0, 50, 50, "ordered")


@needs_assets
def test_object_state_is_the_moved_object_and_its_target():
    env = L.make_libero(suite="libero_spatial", tasks=(0,), object_state=True, assets_path=ASSETS)
    try:
        assert env.state_dim == 14
        s = env.reset([Context(0, 0)])["state"][0]
        np.testing.assert_allclose(s[8:14], [-0.063, 0.202, 0.898, 0.053, 0.205, 0.902], atol=3e-3)  # bowl_1, plate_1
    finally:
        env.close()


@needs_assets
def test_scripted_expert_demo_round_trips(tmp_path):
    """The privileged expert solves libero_spatial task 0 from a training init state within the suite's limit;
    the dataset keeps the robot's 8-D state and the camera, and reads back."""
    from pirl.data import load_dataset
    from pirl.data.collect import CollectConfig, collect

    rep = collect(CollectConfig(suite="libero", tasks="libero_spatial:0", episodes_per_task=1, max_attempts_per_task=1,
                                camera="agentview", image_size=32, num_envs=1, held_out_init_states=20,
                                assets_path=ASSETS), tmp_path / "demos")
    assert rep.successes == {L.suite_tasks("libero_spatial")[0][0]: 1}
    ds = load_dataset(tmp_path / "demos")
    n = ds.num_frames
    assert 60 < n < L.MAX_STEPS["libero_spatial"] and ds.fps == L.FPS
    assert ds.data["observation.state"].shape == (n, 8) and ds.data["action"].shape == (n, 7)
    assert ds.videos["observation.images.image"].shape == (n, 32, 32, 3)
    assert ds.data["next.success"][-1] and not ds.data["next.success"][:-1].any()
    assert "bowl" in ds.tasks[0] and ds.task_names == [L.suite_tasks("libero_spatial")[0][0]]
    np.testing.assert_allclose(ds.data["observation.state"][0, 6:], [0.0387, -0.0387], atol=2e-3)
