"""Demonstrations for ManiSkill's offline tasks from its motion planners, in the adapter's format.

Two passes per episode, because ManiSkill's planners (mplib) command absolute joint targets
('pd_joint_pos') while policies usually act in another controller:

1. plan: the official motion-planning solution runs on a seeded env without observations and
   yields joint targets [T, 8] and the hand (TCP) poses they reach, in the robot's base frame;
2. replay: a fresh env seeded the same way, built exactly like :class:`~pirl.envs.maniskill.ManiSkillSubEnv`
   (same observation layout and image size, the target ``control_mode``), executes the plan
   closed loop, i.e. each action is computed from the replay's own current state (joint positions for
   the joint controllers, the hand's pose for the end-effector ones), and records (observation, action)
   pairs up to the first success. Episodes whose replay fails are dropped, so every kept pair is one
   the RL environment will reproduce exactly.

The end-effector controller 'pd_ee_delta_pos' is what ManiSkill's own imitation baselines learn PickCube
in: an action there is the hand's next small displacement (its orientation is held), a far simpler
function of the privileged state (hand and cube positions) than the seven joint deltas the planner's IK
implies. The planner turns the hand to the cube's yaw; the replay does not, and keeps the episodes whose
grasp still holds.

Frames come out as plain numpy arrays (:class:`DemoEpisode`); :func:`save_npz` writes them to an
intermediate file and :func:`to_lerobot_episodes`/:func:`write_lerobot` map them onto LeRobot v3
names for the project's dataset writer (``pirl.data.lerobot``).

mplib 0.1.1 segfaults with numpy 2: this module needs ``numpy<2`` (the ``maniskill`` extra pins it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from pirl.envs.maniskill import FPS, INSTRUCTIONS, OFFLINE_TASKS, extract_obs, make_raw

SOLVERS = {
    "PickCube-v1": "solvePickCube",
    "PushCube-v1": "solvePushCube",
    "StackCube-v1": "solveStackCube",
    "PegInsertionSide-v1": "solvePegInsertionSide",
}
JOINT_DELTA_LIMIT = 0.1
"""Radians per action at |a| = 1 for Panda's 'pd_joint_delta_pos' arm controller."""
EE_POS_LIMIT = 0.1
"""Metres per action at |a| = 1 for Panda's 'pd_ee_delta_pos' controller."""
CONTROL_MODES = ("pd_joint_pos", "pd_joint_delta_pos", "pd_ee_delta_pos")


@dataclass
class DemoEpisode:
    """One demonstration; arrays have a leading T (frames)."""

    task: str
    """ManiSkill task id."""
    seed: int
    """Reset seed (the Context seed that reproduces the episode's start)."""
    state: np.ndarray
    """[T, S] float32, the adapter's obs['state'] before each action."""
    action: np.ndarray
    """[T, D] float32 in the episode's control mode."""
    image: Optional[np.ndarray] = None
    """[T, s, s, 3] uint8 'base_camera' before each action, when recorded with images."""

    def __len__(self) -> int:
        return len(self.action)

    @property
    def instruction(self) -> str:
        return INSTRUCTIONS.get(self.task, self.task)


def _solver(task: str):
    if task not in SOLVERS:
        raise ValueError(f"no motion-planning solution for {task!r}; available: {tuple(SOLVERS)}")
    from mani_skill.examples.motionplanning.panda import solutions

    return getattr(solutions, SOLVERS[task])


def _tcp_at_base(env: Any) -> np.ndarray:
    """The hand's (TCP) pose in the robot's base frame, [7] = position, quaternion (w, x, y, z)."""
    agent = env.unwrapped.agent
    pose = agent.robot.pose.inv() * agent.tcp.pose
    return np.concatenate([_flat(pose.p), _flat(pose.q)])


def _flat(x: Any) -> np.ndarray:
    return np.asarray(x.cpu().numpy() if hasattr(x, "cpu") else x, dtype=np.float64).reshape(-1)


class _Recorder:
    """Wraps the planning env and keeps the actions the planner sends and the hand poses they reach (a
    gym.Wrapper would hide ``unwrapped`` calls the same way)."""

    def __init__(self, env: Any) -> None:
        self.env, self.actions, self.poses = env, [], []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def reset(self, **kw: Any):
        self.actions, self.poses = [], []
        return self.env.reset(**kw)

    def step(self, action: Any):
        self.actions.append(np.asarray(action, dtype=np.float32).reshape(-1))
        out = self.env.step(action)
        self.poses.append(_tcp_at_base(self.env))
        return out


@dataclass
class Plan:
    """A successful motion plan: joint targets [T, 8] (7 arm joints + gripper) and the hand poses [T, 7]
    (base frame, position + wxyz quaternion) the planning env reached after each of them."""

    targets: np.ndarray
    poses: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def plan(env: Any, task: str, seed: int) -> Optional[Plan]:
    """The motion plan of ``task`` from ``seed``, or None when planning fails."""
    rec = _Recorder(env)
    try:
        res = _solver(task)(rec, seed=seed, debug=False, vis=False)
    except Exception:  # the planners raise on unreachable grasps; that seed simply has no demo
        return None
    if res == -1 or not bool(np.asarray(res[-1]["success"]).reshape(-1)[0]):
        return None
    return Plan(np.stack(rec.actions), np.stack(rec.poses))


def ee_delta(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 'pd_ee_delta_pos' arm action [3] that moves the hand from pose ``current`` toward pose ``target``
    (both [7], base frame): the translation over EE_POS_LIMIT, clipped to [-1, 1]."""
    return np.clip((target[:3] - current[:3]) / EE_POS_LIMIT, -1.0, 1.0)


def replay(env: Any, plan: Plan, seed: int, control_mode: str, pixels: bool) -> Optional[tuple[np.ndarray, ...]]:
    """Executes a plan closed loop in ``control_mode``; (state, action, image|None) up to the first
    success, or None when the replay does not succeed."""
    raw, _ = env.reset(seed=seed)
    robot = env.unwrapped.agent.robot
    states, actions, images = [], [], []
    for target, pose in zip(plan.targets, plan.poses):
        obs = extract_obs(raw, pixels)
        if control_mode == "pd_joint_pos":
            a = target
        elif control_mode == "pd_joint_delta_pos":  # the delta from where the arm is now to the planned target
            qpos = np.asarray(robot.get_qpos().cpu().numpy()).reshape(-1)
            arm = np.clip((target[:7] - qpos[:7]) / JOINT_DELTA_LIMIT, -1.0, 1.0)
            a = np.concatenate([arm, target[7:]])
        else:  # the hand's displacement from where it is now to where the plan put it
            arm = ee_delta(_tcp_at_base(env), pose)
            a = np.concatenate([arm, target[7:]])
        states.append(obs["state"][0])
        actions.append(a.astype(np.float32))
        if pixels:
            images.append(obs["image"][0])
        raw, _, _, _, info = env.step(a[None])
        if bool(np.asarray(info["success"]).reshape(-1)[0]):
            return np.stack(states), np.stack(actions), (np.stack(images) if pixels else None)
    return None


def generate_demos(task: str, num_episodes: int, *, seed: int = 0, control_mode: str = "pd_joint_delta_pos",
                   image_size: int = 0, max_attempts: Optional[int] = None) -> tuple[list[DemoEpisode], dict[str, Any]]:
    """``num_episodes`` successful demonstrations of ``task`` from seeds seed, seed+1, ...

    Returns the episodes and a report {'attempts', 'planned', 'replayed', 'success_rate'}.
    Stops after ``max_attempts`` seeds (default 3 x num_episodes) even if fewer succeeded.
    """
    if control_mode not in CONTROL_MODES:
        raise ValueError(f"demonstrations convert to {CONTROL_MODES}; got {control_mode!r}")
    if task not in OFFLINE_TASKS:
        raise ValueError(f"{task!r} is not one of the offline tasks {OFFLINE_TASKS}")
    max_attempts = max_attempts or 3 * num_episodes
    planner = make_raw(task, num_envs=1, control_mode="pd_joint_pos", image_size=0, reward="sparse", gpu=False)
    player = make_raw(task, num_envs=1, control_mode=control_mode, image_size=image_size, reward="sparse", gpu=False)
    episodes: list[DemoEpisode] = []
    planned = attempts = 0
    try:
        while len(episodes) < num_episodes and attempts < max_attempts:
            s = seed + attempts
            attempts += 1
            p = plan(planner, task, s)
            if p is None:
                continue
            planned += 1
            out = replay(player, p, s, control_mode, image_size > 0)
            if out is not None:
                episodes.append(DemoEpisode(task, s, out[0], out[1], out[2]))
    finally:
        planner.close()
        player.close()
    report = {"attempts": attempts, "planned": planned, "replayed": len(episodes),
              "success_rate": len(episodes) / max(attempts, 1)}
    return episodes, report


def frames(episodes: Sequence[DemoEpisode], tasks: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """All episodes as one table of frames: state (zero-padded to the largest state size), action, (image), episode_index, frame_index,
    timestamp, task_index (into ``tasks``, default: the episodes' tasks in first-seen order), and
    'tasks' / 'instructions' (one per task index)."""
    if not episodes:
        raise ValueError("no episodes")
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(e.task for e in episodes))
    S = max(e.state.shape[1] for e in episodes)  # zero-padded like a multi-task ManiSkillVectorEnv
    out: dict[str, Any] = {
        "state": np.concatenate([np.pad(e.state, ((0, 0), (0, S - e.state.shape[1]))) for e in episodes]).astype(np.float32),
        "action": np.concatenate([e.action for e in episodes]).astype(np.float32),
        "episode_index": np.concatenate([np.full(len(e), i, np.int64) for i, e in enumerate(episodes)]),
        "frame_index": np.concatenate([np.arange(len(e), dtype=np.int64) for e in episodes]),
        "task_index": np.concatenate([np.full(len(e), tasks.index(e.task), np.int64) for e in episodes]),
        "seed": np.array([e.seed for e in episodes], np.int64),
        "tasks": np.array(tasks),
        "instructions": np.array([INSTRUCTIONS.get(t, t) for t in tasks]),
    }
    out["timestamp"] = (out["frame_index"] / FPS).astype(np.float32)
    if episodes[0].image is not None:
        out["image"] = np.concatenate([e.image for e in episodes])
    return out


def save_npz(path: Union[str, Path], episodes: Sequence[DemoEpisode]) -> Path:
    """Writes :func:`frames` of the episodes to a compressed .npz (the intermediate format)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **frames(episodes))
    return path


def load_npz(path: Union[str, Path]) -> list[DemoEpisode]:
    """Reads episodes back from :func:`save_npz`."""
    z = np.load(path)
    tasks = [str(t) for t in z["tasks"]]
    out = []
    for i, seed in enumerate(z["seed"]):
        m = z["episode_index"] == i
        img = z["image"][m] if "image" in z.files else None
        # states stay zero-padded to the file's widest task
        out.append(DemoEpisode(tasks[int(z["task_index"][m][0])], int(seed), z["state"][m], z["action"][m], img))
    return out


def to_lerobot_episodes(episodes: Sequence[DemoEpisode]) -> list:
    """The episodes as ``pirl.data.lerobot.Episode`` (LeRobot names: observation.state, action,
    observation.images.image)."""
    from pirl.data.lerobot import Episode  # the project's shared writer

    return [Episode(task=e.instruction,
                    data={"observation.state": e.state, "action": e.action},
                    videos={"observation.images.image": e.image} if e.image is not None else {},
                    extra={"seed": e.seed}) for e in episodes]


def write_lerobot(root: Union[str, Path], episodes: Sequence[DemoEpisode], source_env: Optional[dict] = None) -> Path:
    """Writes the episodes as a LeRobot v3 dataset with the project's writer (``source_env``: see write_dataset)."""
    from pirl.data.lerobot import write_dataset

    names = list(dict.fromkeys(e.task for e in episodes))
    return write_dataset(root, to_lerobot_episodes(episodes), fps=FPS, tasks=[INSTRUCTIONS.get(t, t) for t in names],
                         task_names=names, robot_type="panda", source_env=source_env)
