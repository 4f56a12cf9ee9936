"""LIBERO adapter: offline setup, the five suites, init states, warm-up, state layout, cameras, grouped
rollouts, and LIBERO's official evaluation protocol.

Needs ``pirl[libero]`` and LIBERO's assets, found next to the checkout (``<repo>/../shared/libero-assets``)
or at ``$PIRL_LIBERO_ASSETS``; without them the tests that need them fail (they never skip, so that a
machine without the assets cannot pass CI silently). The default run covers every suite (two tasks each,
with pixels and a task switch) and the async vector; ``-m slow`` covers every task of the four 10-task suites.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pirl.envs.base import ChunkVectorEnv, Context
from pirl.errors import InputError

if importlib.util.find_spec("libero") is None:
    pytest.skip("hf-libero is not installed (pip install 'pirl[libero]')", allow_module_level=True)

from pirl.envs import libero as L  # noqa: E402

ASSET_DIRS = (str(Path(__file__).resolve().parents[1].parent / "shared" / "libero-assets"),
              os.environ.get("PIRL_LIBERO_ASSETS"))
"""Where the tests look for LIBERO's assets, in order: beside the checkout (as CI lays it out), then the variable."""
SUITES4 = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


@pytest.fixture(scope="session")
def assets() -> str:
    for p in ASSET_DIRS:
        if p and os.path.isdir(os.path.join(p, "scenes")):
            return L.setup_libero(p)  # tests that import LIBERO themselves find its config written, run alone too
    pytest.fail(f"LIBERO assets not found in {[p for p in ASSET_DIRS if p]}: put a copy of LIBERO's assets folder "
                "at <repo>/../shared/libero-assets or point $PIRL_LIBERO_ASSETS at one", pytrace=False)


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


def test_missing_assets_fail_clearly(tmp_path, monkeypatch, capsys):
    with pytest.raises(FileNotFoundError, match="LIBERO assets not found"):
        L.setup_libero(str(tmp_path))
    import libero.libero as package

    def offline_lookup():  # what hf-libero does offline: says so, then returns its own empty folder
        print("Warning: Could not download assets from HuggingFace Hub")
        return str(tmp_path)

    monkeypatch.delenv("PIRL_LIBERO_ASSETS", raising=False)
    monkeypatch.setattr(package, "get_assets_path", offline_lookup)
    with pytest.raises(FileNotFoundError, match="env.assets_path"):
        L.setup_libero(None)
    out = capsys.readouterr()
    assert out.out == out.err == ""  # one line (the raised error), no hub chatter before it


def test_quat2axisangle():
    assert np.allclose(L.quat2axisangle(np.array([0, 0, 0, 1.0])), 0)
    h = np.sqrt(0.5)  # 90 degrees about z
    assert np.allclose(L.quat2axisangle(np.array([0, 0, h, h])), [0, 0, np.pi / 2])


def test_state_episode_init_states_and_chunks(assets):
    env = L.make_libero(suite="libero_spatial", tasks=(0,), chunk=4, assets_path=assets, max_episode_steps=8)
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


@pytest.mark.parametrize("suite", L.SUITES)
def test_suite_pixels_and_task_switch(suite, assets):
    """Every suite in CI: task 0 with both cameras (small), then another task of the suite in the same
    sub-environment (the slow test below builds every task)."""
    env = L.make_libero(suite=suite, tasks=(0, 9), chunk=2, image_size=32, assets_path=assets,
                        init_states="random", record=True, render_size=48)
    try:
        for task in (0, 1):
            o = env.reset([Context(task, 7)])
            assert o["image"].shape == (1, 32, 32, 3) and o["wrist_image"].shape == (1, 32, 32, 3)
            assert o["image"].dtype == np.uint8 and o["image"].std() > 5  # a scene, not a blank buffer
            assert o["wrist_image"].std() > 1
            r = env.step(np.zeros((1, 2, 7), np.float32))
            # video frames at render_size, apart from the policy's 32 px images
            assert len(r.info["frames"]) == 2 and r.info["frames"][0].shape == (1, 48, 48, 3)
            assert np.isfinite(r.obs["state"]).all() and not r.info["crashed"][0]
        assert env.max_chunk_steps == -(-L.MAX_STEPS[suite] // 2)
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("suite", SUITES4)
def test_every_task_creates_resets_steps_renders(suite, assets):
    env = L.make_libero(suite=suite, chunk=2, image_size=64, assets_path=assets)
    try:
        for task in range(len(env.task_names)):
            o = env.reset([Context(task, task)])
            assert o["image"].std() > 5 and o["wrist_image"].std() > 1
            r = env.step(np.zeros((1, 2, 7), np.float32))
            assert np.isfinite(r.obs["state"]).all() and not r.info["crashed"][0]
    finally:
        env.close()


def test_cameras_are_rotated_180_degrees(assets):
    """Images are robosuite's renders rotated by 180°, the convention of LIBERO's datasets and of openpi's
    evaluation: a marker moved up in the camera's frame moves up the image, one moved to the camera's right
    moves LEFT (robosuite's render is upside down, not mirrored, so the rotation leaves a left-right mirror
    image; the datasets and checkpoints were made that way)."""
    env = L.make_libero(suite="libero_spatial", tasks=(0,), image_size=96, assets_path=assets)
    try:
        env.reset([Context(0, 0)])
        sub = env._vec.envs[0]
        sim = sub._env.sim
        m, d = sim.model._model, sim.data._data
        site = m.site("table_top").id  # any site will do: recoloured, enlarged and moved in front of a camera
        body = m.site_bodyid[site]
        m.site_rgba[site], m.site_size[site], m.site_group[site] = [0, 1, 0, 1], 0.02, 0
        for camera, key, distance in (("agentview", "image", 0.6), ("robot0_eye_in_hand", "wrist_image", 0.25)):
            cam = d.cam_xmat[m.camera(camera).id].reshape(3, 3).copy()  # columns: right, up, backward
            base = d.cam_xpos[m.camera(camera).id] - distance * cam[:, 2]

            def centroid(p):
                m.site_pos[site] = d.xmat[body].reshape(3, 3).T @ (p - d.xpos[body])  # world -> body frame
                sim.forward()
                sub._images = None  # render again
                img = sub.observe()[key].astype(int)
                green = (img[..., 1] > 150) & (img[..., 0] < 100) & (img[..., 2] < 100)
                assert green.sum() > 3, f"marker not visible from {camera}"
                rows, cols = np.nonzero(green)
                return rows.mean(), cols.mean()

            r0, c0 = centroid(base)
            r_up, c_up = centroid(base + 0.05 * cam[:, 1])
            r_right, c_right = centroid(base + 0.05 * cam[:, 0])
            assert r_up < r0 - 5 and abs(c_up - c0) < 2, f"{camera}: camera-up did not move the marker up the image"
            assert c_right < c0 - 5 and abs(r_right - r0) < 2, f"{camera}: not rotated by 180° (camera-right must move left)"
    finally:
        env.close()


class _ZeroPolicy:
    """The policy surface evaluation and rollouts use: zero actions (not a no-op: the gripper command is 0)."""

    training = False

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon

    def device(self) -> torch.device:
        return torch.device("cpu")

    def train(self, mode: bool = True) -> None:
        pass

    def eval(self) -> None:
        pass

    def prepare(self, obs):
        return obs

    def act(self, obs, sampler, generator=None):
        return SimpleNamespace(actions=torch.zeros(len(obs["state"]), self.horizon, L.ACTION_DIM))


def test_grouped_rollouts_start_from_one_init_state(assets):
    """RIPT-VLA's groups on LIBERO: the G rollouts of a context start from the same init state (objects
    included), each in its own subprocess (the async vector); the next group's context starts elsewhere."""
    from pirl.flow import SamplerConfig
    from pirl.train.rollout import CollectorConfig, RolloutCollector

    env = L.make_libero(suite="libero_spatial", tasks=(0,), num_envs=2, chunk=2, max_episode_steps=2,
                        object_state=True, assets_path=assets, vector="async")
    policy = _ZeroPolicy(2)
    starts = []
    policy.prepare = lambda obs: starts.append(obs["state"]) or obs  # one chunk per episode: each call sees a start
    try:
        collector = RolloutCollector(env, policy, SamplerConfig(), CollectorConfig(num_groups=1, group_size=2))
        for group in range(2):
            contexts, groups, _ = collector.sample_contexts()
            assert groups.tolist() == [group, group] and contexts[0] == contexts[1]
            ep = collector.run_episodes(contexts, collector.sampler)
            assert ep["length"].tolist() == [2, 2]
    finally:
        env.close()
    assert len(starts) == 2
    for start in starts:
        np.testing.assert_array_equal(start[0], start[1])
    assert not np.allclose(starts[0][0, 8:], starts[1][0, 8:], atol=1e-3), "another init state must move the objects"


def test_held_out_init_states_split():
    from pirl.envs.base import EVAL_SEED_START

    train = {L.init_state_index(s, 50, 20, "ordered") for s in range(200)}
    held = [L.init_state_index(EVAL_SEED_START + i, 50, 20, "ordered") for i in range(25)]
    assert train == set(range(30)) and held[:20] == list(range(30, 50)) and held[20] == 30
    assert {L.init_state_index(s, 50, 20, "random") for s in range(300)} <= set(range(30))
    assert L.init_state_index(EVAL_SEED_START + 7, 50, 0, "ordered") == 7  # no split: the standard 50 trials
    with pytest.raises(ValueError, match="held_out"):
        L.init_state_index(0, 50, 50, "ordered")


def test_object_state_is_the_moved_object_and_its_target(assets):
    env = L.make_libero(suite="libero_spatial", tasks=(0,), object_state=True, assets_path=assets)
    try:
        assert env.state_dim == 14
        s = env.reset([Context(0, 0)])["state"][0]
        np.testing.assert_allclose(s[8:14], [-0.063, 0.202, 0.898, 0.053, 0.205, 0.902], atol=3e-3)  # bowl_1, plate_1
    finally:
        env.close()


def test_object_offsets_follow_the_gripper_and_the_object(assets):
    """object_offsets appends object - gripper and target - object after the positions; the expert, which reads
    the positions only, still solves the task from such observations."""
    from pirl.envs.libero_expert import PickPlaceExpert, grasp_for_task

    env = L.make_libero(suite="libero_object", tasks=(0,), chunk=1, object_state=True, object_offsets=True,
                        assets_path=assets)
    try:
        assert env.state_dim == 20
        s = env.reset([Context(0, 0)])["state"]
        expert = PickPlaceExpert([grasp_for_task(env.task_names[0])])
        for _ in range(12):  # the hand moves towards the object: the offset must move with it, not stay at reset's
            np.testing.assert_allclose(s[0, 14:17], s[0, 8:11] - s[0, 0:3], atol=1e-6)
            np.testing.assert_allclose(s[0, 17:20], s[0, 11:14] - s[0, 8:11], atol=1e-6)
            s = env.step(expert.act(s)[:, None]).obs["state"]
        assert np.linalg.norm(s[0, 14:17]) < np.linalg.norm(env.reset([Context(0, 0)])["state"][0, 14:17])
    finally:
        env.close()
    with pytest.raises(InputError, match="object_state=true"):
        L.LiberoConfig(object_offsets=True)


def test_a_policy_of_other_state_keys_is_refused_naming_them(assets, tmp_path, capsys):
    """A state policy trained with object_offsets evaluated where the env has object_state only: one line that
    names the sizes and the LIBERO keys that set them."""
    from pirl.cli.main import main
    from pirl.policies import make_mlp_policy
    from pirl.policies.io import save_policy

    save_policy(make_mlp_policy(L.STATE_DIM + 12, L.ACTION_DIM, hidden=16, depth=1), tmp_path / "p.safetensors")
    rc = main(["eval", f"policy={tmp_path / 'p.safetensors'}", "env.suite=libero", "env.tasks=libero_object:0",
               "env.object_state=true", f"env.assets_path={assets}", "episodes_per_task=1", "num_envs=1",
               "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "states of size 20, the env gives 14" in err and "env.object_offsets" in err, err


def test_scripted_expert_demo_round_trips(tmp_path, assets):
    """The privileged expert solves libero_spatial task 0 from a training init state within the suite's limit;
    the dataset keeps the robot's 8-D state and the camera, and reads back."""
    from pirl.data import load_dataset
    from pirl.data.collect import CollectConfig, collect

    rep = collect(CollectConfig(suite="libero", tasks="libero_spatial:0", episodes_per_task=1, max_attempts_per_task=1,
                                image_size=32, num_envs=1, held_out_init_states=20,  # camera 'default': agentview
                                assets_path=assets), tmp_path / "demos")
    assert rep.successes == {L.suite_tasks("libero_spatial")[0][0]: 1}
    ds = load_dataset(tmp_path / "demos")
    n = ds.num_frames
    assert 60 < n < L.MAX_STEPS["libero_spatial"] and ds.fps == L.FPS
    assert ds.data["observation.state"].shape == (n, 8) and ds.data["action"].shape == (n, 7)
    assert ds.videos["observation.images.image"].shape == (n, 32, 32, 3)
    assert ds.data["next.success"][-1] and not ds.data["next.success"][:-1].any()
    assert "bowl" in ds.tasks[0] and ds.task_names == [L.suite_tasks("libero_spatial")[0][0]]
    np.testing.assert_allclose(ds.data["observation.state"][0, 6:], [0.0387, -0.0387], atol=2e-3)


def test_scripted_expert_puts_a_libero_object_in_the_basket(tmp_path, assets):
    """The expert's per-object grasp and basket placement solve a libero_object task (cream cheese) from a training
    init state within the suite's limit, the object ending over the basket's contain region."""
    from pirl.data import load_dataset
    from pirl.data.collect import CollectConfig, collect

    name = L.suite_tasks("libero_object")[1][0]
    assert "cream_cheese" in name
    rep = collect(CollectConfig(suite="libero", tasks="libero_object:1", episodes_per_task=1, max_attempts_per_task=1,
                                camera=None, num_envs=1, held_out_init_states=20, object_state=True,
                                assets_path=assets), tmp_path / "demos")
    assert rep.successes == {name: 1}
    ds = load_dataset(tmp_path / "demos")
    assert ds.info["robot_type"] == "panda" and ds.info["pirl_env"] == {  # what SFT evaluates in
        "suite": "libero", "tasks": "libero_object:1", "camera": None, "image_size": 64, "object_state": True,
        "object_offsets": False, "held_out_init_states": 20}
    state = ds.data["observation.state"]
    assert state.shape[1] == 14 and 60 < len(state) < L.MAX_STEPS["libero_object"]
    # the contain region is a box of half-width 6.1 cm around the target position
    assert np.abs(state[-1, 8:10] - state[-1, 11:13]).max() < 0.061


def test_collect_refuses_tasks_the_expert_cannot_do_before_any_attempt(tmp_path, capsys, monkeypatch):
    """A task whose goal is not one object on / in one target (a drawer, the stove, two objects) is refused from its
    BDDL goal, naming the task and the goal, before a scene is built; a pick-and-place task of an untested suite
    that the expert never solves is named as outside its coverage, not blamed on the step budget."""
    import pirl.data.collect as C
    from pirl.cli.main import main

    assert L.task_goal("libero_spatial", 0) == [("on", "akita_black_bowl_1", "plate_1")]
    assert L.task_goal("libero_goal", 0) == [("open", "wooden_cabinet_1_middle_region")]
    monkeypatch.setattr(L, "make_libero", lambda *a, **k: pytest.fail("no scene for a task the expert cannot do"))
    rc = main(["collect", "--run-dir", str(tmp_path / "d"), "suite=libero", "tasks=libero_goal:0,7,8", "camera=null"])
    out = capsys.readouterr().err
    err = out.strip().splitlines()[-1]  # robosuite's import warnings may come first when this test runs alone
    assert rc == 2 and "Traceback" not in out and err.startswith("pirl collect: error:"), out
    assert "open_the_middle_drawer_of_the_cabinet (goal: open wooden_cabinet_1_middle_region)" in err, err
    assert "turn_on_the_stove" in err and "put_the_bowl_on_the_plate" not in err and "dataset=" in err, err
    assert not (tmp_path / "d").exists()
    C.check_pick_place("libero_goal", (8,))  # the bowl onto the plate: a pick and place, tried

def test_eval_protocol_config():
    from pirl.envs.registry import EnvConfig
    from pirl.train.evaluate import EvalConfig, EvalProtocol

    official = EvalProtocol("libero_official")
    assert official.episodes == L.NUM_INIT_STATES and EvalProtocol().episodes == 20
    env = EnvConfig(suite="libero", tasks="libero_goal", max_episode_steps=100, held_out_init_states=20)
    assert official.env_config(env) == EnvConfig(suite="libero", tasks="libero_goal")  # the suite's limit, all states
    assert EvalProtocol("held_out").env_config(env) == env
    # training may run episodes past success (a dense reward); every evaluation stops at it
    keep_going = EnvConfig(suite="maniskill", tasks="PickCube-v1", reward="dense", terminate_on_success=False)
    assert EvalProtocol("held_out").env_config(keep_going).terminate_on_success
    assert official.env_config(replace(env, terminate_on_success=False)).terminate_on_success
    assert official.contexts(2)[:2] == [Context(0, L.EVAL_SEED_START), Context(0, L.EVAL_SEED_START + 1)]
    assert [L.init_state_index(c.seed, 50, 0, "ordered") for c in official.contexts(1)] == list(range(50))
    with pytest.raises(ValueError, match="1..50 episodes"):
        EvalProtocol("libero_official", 51).contexts(1)
    with pytest.raises(ValueError, match="needs env.suite='libero'"):
        EvalConfig(protocol="libero_official")  # the default env is MetaWorld
    with pytest.raises(ValueError, match="unknown evaluation protocol"):
        EvalProtocol("official")


def test_official_protocol_tiny_budget(assets, tmp_path, monkeypatch):
    """`pirl eval protocol=libero_official` with 2 tasks x 2 episodes: episode i of each task starts from the
    task's fixed init state i, in order (the tasks' i-th episodes side by side), whatever held-out split and step
    limit the env config asks for; 10
    no-op settling steps run before the policy's first action and do not count; then the suite's step limit;
    a per-task table and the suite mean, labelled with the protocol."""
    import json

    from libero.libero.benchmark import get_benchmark
    from libero.libero.envs.env_wrapper import ControlEnv

    from pirl.cli.main import main
    from pirl.policies.io import save_policy
    from pirl.policies.mlp import make_mlp_policy

    calls: list[tuple[str, np.ndarray]] = []  # every init state set and every action, in order

    def spy(kind, method):
        def wrapped(self, x):
            calls.append((kind, np.array(x)))
            return method(self, x)
        return wrapped

    monkeypatch.setattr(ControlEnv, "set_init_state", spy("init", ControlEnv.set_init_state))
    monkeypatch.setattr(ControlEnv, "step", spy("step", ControlEnv.step))
    limit = 6
    monkeypatch.setitem(L.MAX_STEPS, "libero_spatial", limit)  # the suite's limit, shortened to keep the test quick
    save_policy(make_mlp_policy(L.STATE_DIM, L.ACTION_DIM, hidden=16, depth=1), tmp_path / "p.safetensors")
    rc = main(["eval", f"policy={tmp_path / 'p.safetensors'}", "env.suite=libero", "env.tasks=libero_spatial:0,1",
               "env.chunk=4", "env.max_episode_steps=3", "env.held_out_init_states=20", f"env.assets_path={assets}",
               "protocol=libero_official", "episodes_per_task=2", "num_envs=1", "--run-dir", str(tmp_path / "run")])
    assert rc == 0
    starts = [i for i, (kind, _) in enumerate(calls) if kind == "init"] + [len(calls)]
    assert len(starts) == 5, "one init state per episode"
    bench = get_benchmark("libero_spatial")()
    for (task, i), a, b in zip([(0, 0), (1, 0), (0, 1), (1, 1)], starts, starts[1:]):
        np.testing.assert_array_equal(calls[a][1], bench.get_task_init_states(task)[i])
        actions = np.array([x for _, x in calls[a + 1 : b]])
        assert len(actions) == L.NUM_STEPS_WAIT + limit, "settling steps, then the suite's limit"
        np.testing.assert_array_equal(actions[: L.NUM_STEPS_WAIT], np.tile(L.NOOP, (L.NUM_STEPS_WAIT, 1)))
        assert not (actions[L.NUM_STEPS_WAIT :] == L.NOOP).all(axis=1).any()
    out = json.loads((tmp_path / "run" / "eval.json").read_text())
    names = [n for n, _ in L.suite_tasks("libero_spatial")[:2]]
    assert out["protocol"] == "libero_official" and out["episodes_per_task"] == 2 and out["episodes"] == 4
    assert list(out["per_task"]) == names and out["success"] == np.mean(list(out["per_task"].values()))
    table = (tmp_path / "run" / "eval.md").read_text()
    assert "libero_official (2 episodes per task)" in table and "mean over 2 tasks" in table
    assert all(f"| {n} | " in table for n in names)


def test_libero_pi0_preset_drives_an_openpi_directory(assets, tmp_path, capsys):
    """`--config libero_pi0` on a tiny openpi-format π0 (what openpi's pi0_libero looks like, at test size): both
    cameras and the masked padding camera, delta actions, one PPO iteration and the official protocol's evaluation."""
    pytest.importorskip("transformers")
    from pirl.cli.main import main as pirl
    from pirl.policies.pi0 import Pi0Policy
    from pirl.policies.pi0.checkpoint import save_openpi
    from pirl.policies.pi0.configuration import DEFAULT_CAMERAS, new_config

    torch.manual_seed(0)
    cfg = new_config("pi0", "tiny", state_dim=8, action_dim=7, action_horizon=10, cameras=DEFAULT_CAMERAS)
    save_openpi(Pi0Policy(cfg), tmp_path / "openpi")
    run = tmp_path / "run"
    assert pirl(["train", "--config", "libero_pi0", "--run-dir", str(run), f"policy={tmp_path / 'openpi'}",
                 "pi0.size=tiny", "pi0.action_horizon=10", "pi0.tokenizer=hash", "pi0.dtype=float32",
                 "pi0.gradient_checkpointing=false", "device=cpu", f"env.assets_path={assets}",
                 "env.tasks=libero_spatial:0", "env.image_size=32", "env.max_episode_steps=10", "iterations=1",
                 "num_groups=2", "eval_episodes_per_task=1", "eval_num_envs=1", "eval_steps=2", "videos_per_task=0",
                 "ppo.micro_batch_size=4"]) == 0
    out = capsys.readouterr().out
    assert "openpi checkpoint directory (pi0)" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 1 and summary["eval_protocol"].startswith("libero_official")
    from pirl.policies.io import load_policy

    policy, _ = load_policy(run / "policy_latest_lerobot")
    assert policy.cfg.delta_action_dims == 6 and policy.cfg.camera_keys == ("image", "wrist_image", "")
