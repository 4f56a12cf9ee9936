"""ManiSkill adapter (CPU backend) and motion-planner demonstrations on the offline tasks.

Needs ``pirl[maniskill]`` and a Vulkan device (Mesa >= 25 on CPU: scripts/install_sims.sh).
The GPU backend needs CUDA and is only checked for its error message here.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from pirl.envs.base import ChunkVectorEnv, Context

if importlib.util.find_spec("mani_skill") is None:
    pytest.skip("mani-skill is not installed (pip install 'pirl[maniskill]')", allow_module_level=True)

from pirl.envs import maniskill as M  # noqa: E402
from pirl.envs import maniskill_demos as D  # noqa: E402


@pytest.fixture(scope="module")
def demos() -> dict[str, list[D.DemoEpisode]]:
    """One demonstration per offline task, in the adapter's default control mode."""
    out = {}
    for task in M.OFFLINE_TASKS:
        eps, report = D.generate_demos(task, 1, seed=0, max_attempts=10)
        assert len(eps) == 1, (task, report)
        out[task] = eps
    return out


def test_offline_tasks_step_and_report_success(demos):
    """All four tasks in one vector: a planner demo replayed through the adapter succeeds and terminates."""
    env = M.make_maniskill(tasks=M.OFFLINE_TASKS, num_envs=4, chunk=5)
    try:
        assert isinstance(env, ChunkVectorEnv) and env.action_dim == 8
        eps = [demos[t][0] for t in M.OFFLINE_TASKS]
        o = env.reset([Context(i, e.seed) for i, e in enumerate(eps)])
        assert o["state"].shape == (4, env.state_dim) and o["state"].dtype == np.float32
        for i, e in enumerate(eps):
            np.testing.assert_array_equal(o["state"][i, : e.state.shape[1]], e.state[0])
        T = max(len(e) for e in eps)
        plan = np.zeros((4, -(-T // 5) * 5, 8), np.float32)
        for i, e in enumerate(eps):
            plan[i, : len(e)] = e.action
            plan[i, len(e):, 7] = e.action[-1, 7]
        succeeded, lengths = np.zeros(4, bool), np.zeros(4, int)
        for k in range(plan.shape[1] // 5):
            r = env.step(plan[:, 5 * k: 5 * k + 5])
            assert not (r.success & ~r.terminated).any()  # success ends the episode
            succeeded |= r.success
            lengths = np.where(r.terminated, r.info["episode_length"], lengths)
        assert succeeded.all()
        assert lengths.tolist() == [len(e) for e in eps]
        r = env.step(plan[:, :5])  # ended sub-environments ignore actions
        assert not r.success.any() and (r.reward == 0).all() and (r.info["executed"] == 0).all()
    finally:
        env.close()


def test_random_actions_pixels_and_truncation():
    env = M.make_maniskill(tasks="PickCube-v1", chunk=3, image_size=32, max_episode_steps=6, record=True, reward="dense")
    try:
        o = env.reset([Context(0, 1)])
        assert o["image"].shape == (1, 32, 32, 3) and o["image"].dtype == np.uint8 and o["image"].std() > 5
        rng = np.random.default_rng(0)
        r = env.step(rng.uniform(-1, 1, (1, 4, 8)).astype(np.float32))
        assert len(r.info["frames"]) == 3 and 0 <= r.reward[0] <= 3
        # videos come from the human render camera at render_size (224), not the policy's 32 px camera
        assert r.info["frames"][0].shape == (1, 224, 224, 3) and r.info["frames"][0].std() > 5
        r = env.step(rng.uniform(-1, 1, (1, 4, 8)).astype(np.float32))
        assert r.truncated.tolist() == [True] and r.info["episode_length"].tolist() == [6]
        same = env.reset([Context(0, 1)])
        np.testing.assert_array_equal(same["state"], o["state"])
    finally:
        env.close()


def test_async_spawn_workers():
    env = M.make_maniskill(tasks=("PushCube-v1", "PickCube-v1"), num_envs=2, chunk=2, vector="async")
    try:
        o = env.reset([Context(0, 0), Context(1, 0)])
        assert o["task"].tolist() == [0, 1] and o["instruction"][0].startswith("push")
        r = env.step(np.zeros((2, 2, 8), np.float32))
        assert r.info["executed"].tolist() == [2, 2]
    finally:
        env.close()


def test_config_errors_and_gpu_backend():
    with pytest.raises(ValueError, match="one task per vector"):
        M.ManiSkillConfig(tasks=("PickCube-v1", "PushCube-v1"), backend="gpu")
    with pytest.raises(ValueError, match="did you mean"):
        M.make_maniskill(tasks="PickCub-v1")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs CUDA"):
            M.make_maniskill(tasks="PickCube-v1", backend="gpu", num_envs=8)


def test_demos_convert_to_frames(demos, tmp_path):
    eps = [demos["PickCube-v1"][0], demos["StackCube-v1"][0]]
    f = D.frames(eps)
    n = sum(len(e) for e in eps)
    assert f["state"].shape[0] == f["action"].shape[0] == n and f["action"].shape[1] == 8
    assert f["episode_index"].tolist() == [0] * len(eps[0]) + [1] * len(eps[1])
    assert f["task_index"].tolist() == [0] * len(eps[0]) + [1] * len(eps[1])
    assert f["frame_index"][len(eps[0])] == 0 and f["timestamp"][1] == pytest.approx(1 / M.FPS)
    assert list(f["tasks"]) == ["PickCube-v1", "StackCube-v1"] and "stack" in f["instructions"][1]
    assert np.abs(f["action"][:, :7]).max() <= 1.0
    back = D.load_npz(D.save_npz(tmp_path / "demos.npz", eps))
    assert [b.task for b in back] == [e.task for e in eps]
    np.testing.assert_array_equal(back[1].action, eps[1].action)


def test_demos_with_images_in_absolute_joint_mode(tmp_path):
    eps, report = D.generate_demos("PushCube-v1", 1, control_mode="pd_joint_pos", image_size=32, max_attempts=5)
    assert report["replayed"] == 1
    e = eps[0]
    assert e.image.shape == (len(e), 32, 32, 3) and e.image.dtype == np.uint8
    assert "image" in D.frames(eps)
    try:
        import pirl.data.lerobot  # noqa: F401
    except ImportError:
        pytest.skip("pirl.data.lerobot (the shared LeRobot writer) is not in this branch")
    root = D.write_lerobot(tmp_path / "ds", eps)
    assert (root / "meta/info.json").exists()


def test_a_state_policy_gets_videos_at_render_size():
    env = M.make_maniskill(tasks="PushCube-v1", chunk=2, image_size=0, record=True, render_size=64)
    try:
        o = env.reset([Context(0, 3)])
        assert "image" not in o
        r = env.step(np.zeros((1, 2, env.action_dim), np.float32))
        assert [f.shape for f in r.info["frames"]] == [(1, 64, 64, 3)] * 2 and r.info["frames"][1].std() > 5
    finally:
        env.close()


def test_end_effector_demos_replay_through_the_registry_env():
    """PickCube converted to 'pd_ee_delta_pos' (hand displacement + gripper): the actions are the hand's
    planned moves over 0.1 m, and replaying them through `make_env(EnvConfig(control_mode=...))` succeeds."""
    from pirl.envs.registry import EnvConfig, make_env

    eps, report = D.generate_demos("PickCube-v1", 1, seed=0, control_mode="pd_ee_delta_pos", max_attempts=5)
    assert report["replayed"] == 1, report
    e = eps[0]
    assert e.action.shape == (len(e), 4) and np.abs(e.action).max() <= 1.0
    assert set(np.unique(e.action[:, 3])) <= {-1.0, 1.0}  # gripper: absolute open / closed
    assert e.action[:, 2].min() < -0.05 < 0.05 < e.action[:, 2].max()  # the hand goes down to the cube and up again
    env = make_env(EnvConfig(suite="maniskill", tasks="PickCube-v1", chunk=1, control_mode="pd_ee_delta_pos"), 1)
    try:
        assert env.action_dim == 4
        o = env.reset([Context(0, e.seed)])
        np.testing.assert_allclose(o["state"][0], e.state[0], atol=1e-6)
        success = False
        for a in e.action:
            r = env.step(a[None, None])
            success |= bool(r.success[0])
        assert success
    finally:
        env.close()
    assert D.ee_delta(np.r_[0.0, 0, 0, 1, 0, 0, 0], np.r_[0.02, -0.5, 0.0, 1, 0, 0, 0]).tolist() == pytest.approx([0.2, -1.0, 0.0])


def test_control_mode_errors():
    from pirl.envs.registry import EnvConfig
    from pirl.errors import InputError

    with pytest.raises(ValueError, match="ManiSkill setting"):
        EnvConfig(suite="metaworld", control_mode="pd_ee_delta_pos")
    with pytest.raises(InputError, match="control_mode 'pd_ee_delta_poz'.*supported modes"):
        M.make_raw("PickCube-v1", num_envs=1, control_mode="pd_ee_delta_poz", image_size=0, reward="sparse", gpu=False)
    with pytest.raises(ValueError, match="demonstrations convert to"):
        D.generate_demos("PickCube-v1", 1, control_mode="pd_ee_delta_pose")


def test_cli_collect_sft_train_in_the_end_effector_controller(tmp_path, capsys):
    """`pirl collect suite=maniskill control_mode=pd_ee_delta_pos` -> `pirl sft` -> `pirl train env.control_mode=...`;
    a policy of the other controller is refused naming the action sizes; a task without a planner in one line."""
    from pirl.cli.main import main as pirl

    data = tmp_path / "data"
    assert pirl(["collect", "suite=maniskill", "tasks=PickCube-v1", "episodes_per_task=1", "camera=null",
                 "control_mode=pd_ee_delta_pos", "--run-dir", str(data)]) == 0
    info = json.loads((data / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 1 and info["features"]["action"]["shape"] == [4]
    assert info["robot_type"] == "panda" and info["pirl_env"] == {
        "suite": "maniskill", "tasks": ["PickCube-v1"], "camera": None, "image_size": 64, "control_mode": "pd_ee_delta_pos"}
    # SFT evaluates in the recorded simulator and controller (a MetaWorld env would refuse the task)
    assert pirl(["sft", f"dataset={data}", "steps=5", "action_horizon=4", "chunk=2", "eval_episodes_per_task=1",
                 "eval_num_envs=1", "eval_max_episode_steps=4", "--run-dir", str(tmp_path / "sft")]) == 0
    assert "eval/step 5: success" in capsys.readouterr().out
    policy = tmp_path / "sft" / "final.safetensors"
    common = [f"policy={policy}", "env.suite=maniskill", "env.tasks=PickCube-v1", "env.chunk=2", "env.max_episode_steps=4",
              "iterations=1", "num_groups=2", "eval_episodes_per_task=1", "eval_num_envs=1", "videos_per_task=0"]
    assert pirl(["train", *common, "env.control_mode=pd_ee_delta_pos", "--run-dir", str(tmp_path / "rl")]) == 0
    assert json.loads((tmp_path / "rl" / "summary.json").read_text())["iterations"] == 1
    capsys.readouterr()
    assert pirl(["train", *common, "--run-dir", str(tmp_path / "rl2")]) != 0  # the default joint controller: 8 actions
    err = capsys.readouterr().err
    assert "actions of size 4, the env takes 8" in err and "env.control_mode" in err and "Traceback" not in err
    assert pirl(["collect", "suite=maniskill", "tasks=PushT-v1", "camera=null", "--run-dir", str(tmp_path / "d2")]) != 0
    err = capsys.readouterr().err
    assert "no motion planner" in err and "Traceback" not in err and not (tmp_path / "d2").exists()
