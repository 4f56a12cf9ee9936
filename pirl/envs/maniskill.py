"""ManiSkill 3 (SAPIEN) as a :class:`~pirl.envs.base.ChunkVectorEnv`, on two backends.

- ``backend='cpu'``: one PhysX-CPU scene per sub-environment, in this process or one spawned
  subprocess each (:class:`~pirl.envs.chunked.GymChunkVector`); sub-environments may play
  different tasks. This is what runs (and is tested) on machines without a GPU.
- ``backend='gpu'``: ManiSkill's GPU-parallel PhysX, N scenes of one task in one process, as πRL
  trains on ManiSkill (:class:`ManiSkillGPUVectorEnv`). Ended episodes keep being simulated (a GPU
  batch cannot pause one scene) but their rewards and flags are masked out. Not testable without
  CUDA.

Observations: 'state' float32 [S]: ManiSkill's flattened privileged state in state-only mode; with
images, the robot's proprioception and the task's non-privileged extras (e.g. TCP pose, goal
position), flattened in ManiSkill's order. 'image' uint8 [s, s, 3] is the 'base_camera' (upright).
Tasks of one CPU vector with different state sizes are zero-padded to the largest.

Actions: the controller ``control_mode`` (default 'pd_joint_delta_pos': 7 joint deltas in
[-1, 1] x 0.1 rad and the gripper in [-1 close, 1 open]).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal, Optional, Sequence, Union

import gymnasium as gym
import numpy as np

from pirl.envs.base import Context, StepResult
from pirl.envs.chunked import ChunkSubEnv, GymChunkVector, VectorKind, check_actions, check_contexts
from pirl.errors import InputError

OFFLINE_TASKS = ("PickCube-v1", "PushCube-v1", "StackCube-v1", "PegInsertionSide-v1")
"""Tasks whose assets ship with the package (YCB, scene and digital-twin tasks download theirs)."""
INSTRUCTIONS = {
    "PickCube-v1": "pick up the red cube and move it to the green goal",
    "PushCube-v1": "push the cube onto the red and white target",
    "StackCube-v1": "stack the red cube on top of the green cube",
    "PegInsertionSide-v1": "insert the peg into the hole in the side of the box",
}
EPISODE_STEPS = {"PickCube-v1": 100, "PushCube-v1": 100, "StackCube-v1": 160, "PegInsertionSide-v1": 250}
"""Default limits: ~1.5x the longest motion-planner demonstration (ManiSkill registers 50/50/50/100,
tuned for RL from scratch with fast controllers; the planners' demos take 46-71, 58-63, 90-102 and
107-166 steps, so a policy cloned from them needs more)."""
FPS = 20
"""Control frequency of ManiSkill's Panda tasks (sim 100 Hz, 5 substeps)."""
_NO_LIMIT = 10**6  # ManiSkill's own TimeLimit must not end episodes: we count steps ourselves


@dataclass(frozen=True)
class ManiSkillConfig:
    """A vector of ManiSkill environments executing action chunks."""

    tasks: Union[str, tuple[str, ...]] = "PickCube-v1"
    """A task id or a tuple of them (the GPU backend takes one)."""
    num_envs: int = 1
    """N, sub-environments stepped together."""
    chunk: int = 5
    """Actions executed per step: the first ``chunk`` of each predicted chunk [H, D]."""
    max_episode_steps: Optional[int] = None
    """Actions after which an episode is truncated; None = EPISODE_STEPS, else the task's registered limit."""
    control_mode: str = "pd_joint_delta_pos"
    """ManiSkill controller, e.g. 'pd_joint_delta_pos', 'pd_joint_pos', 'pd_ee_delta_pose'."""
    reward: Literal["sparse", "dense"] = "sparse"
    """sparse: 1 for each action after which the task is solved; dense: ManiSkill's normalized dense reward (0-1)."""
    terminate_on_success: bool = True
    """End the episode (terminated) at the first success."""
    image_size: int = 0
    """Height and width of the 'base_camera' image; 0 = state only (no rendering)."""
    record: bool = False
    """Put every executed action's picture into info['frames']: ManiSkill's human render camera at render_size
    (state policies get videos too)."""
    render_size: int = 224
    """Height and width of the recorded frames (videos), independent of the policy's image_size."""
    backend: Literal["cpu", "gpu"] = "cpu"
    """cpu: PhysX CPU, one scene per sub-environment; gpu: ManiSkill's GPU-parallel PhysX (CUDA)."""
    vector: VectorKind = "sync"
    """CPU backend only. sync: all in this process; async: one spawned subprocess each."""

    def __post_init__(self) -> None:
        tasks = self.task_tuple
        if not tasks:
            raise InputError("tasks must name at least one ManiSkill task")
        if self.num_envs < 1 or self.chunk < 1:
            raise InputError(f"num_envs and chunk must be >= 1; got {self.num_envs}, {self.chunk}")
        if self.reward not in ("sparse", "dense"):
            raise InputError(f"reward must be 'sparse' or 'dense', got {self.reward!r}")
        if self.backend not in ("cpu", "gpu"):
            raise InputError(f"backend must be 'cpu' or 'gpu', got {self.backend!r}")
        if self.backend == "gpu" and len(tasks) != 1:
            raise InputError(f"the GPU backend simulates one task per vector; got {tasks} (make one vector per task)")
        if self.image_size < 0 or not 8 <= self.render_size <= 1024:
            raise InputError(f"image_size must be >= 0 and render_size in [8, 1024]; got {self.image_size}, "
                             f"{self.render_size}")

    @property
    def task_tuple(self) -> tuple[str, ...]:
        return (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)


def _registered(task: str):
    import mani_skill.envs  # noqa: F401  (registers the tasks)
    from mani_skill.utils.registration import REGISTERED_ENVS

    if task not in REGISTERED_ENVS:
        import difflib

        near = difflib.get_close_matches(task, list(REGISTERED_ENVS), n=3)
        raise InputError(f"unknown ManiSkill task {task!r}; did you mean {near}? (offline tasks: {OFFLINE_TASKS})")
    return REGISTERED_ENVS[task]


def episode_limit(cfg: ManiSkillConfig, task: str) -> int:
    if cfg.max_episode_steps:
        return cfg.max_episode_steps
    return EPISODE_STEPS.get(task) or int(_registered(task).max_episode_steps or 100)


def make_raw(task: str, *, num_envs: int, control_mode: str, image_size: int, reward: str, gpu: bool,
             render: bool = False, render_size: int = 0) -> gym.Env:
    """The underlying ManiSkill env (batched torch tensors; leading dim num_envs)."""
    _registered(task)
    kw: dict[str, Any] = dict(
        num_envs=num_envs, control_mode=control_mode, obs_mode="rgb" if image_size else "state",
        reward_mode="normalized_dense" if reward == "dense" else "sparse",
        sim_backend="physx_cuda" if gpu else "physx_cpu", render_backend="gpu" if gpu else "cpu",
        max_episode_steps=_NO_LIMIT, render_mode="rgb_array" if render else None,
    )
    if image_size:
        kw["sensor_configs"] = dict(width=image_size, height=image_size)
    if render and render_size:
        kw["human_render_camera_configs"] = dict(width=render_size, height=render_size)
    try:
        return gym.make(task, **kw)
    except AssertionError as e:  # ManiSkill asserts on an unsupported controller
        if "supported modes" not in str(e):
            raise
        raise InputError(f"ManiSkill control_mode {control_mode!r} for {task}: {e}") from None


def _render(env: gym.Env) -> np.ndarray:
    """[N, s, s, 3] uint8 from the human render camera (render_mode='rgb_array')."""
    return _np(env.render()).astype(np.uint8)


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def extract_obs(raw: Any, pixels: bool) -> dict[str, np.ndarray]:
    """ManiSkill's batched observation -> {'state' [B, S] float32, 'image' [B, s, s, 3] uint8}."""
    if not pixels:
        return {"state": _np(raw).astype(np.float32)}
    from mani_skill.utils.common import flatten_state_dict

    state = flatten_state_dict({"agent": raw["agent"], "extra": raw["extra"]}, use_torch=True)
    return {"state": _np(state).astype(np.float32), "image": _np(raw["sensor_data"]["base_camera"]["rgb"]).astype(np.uint8)}


def _flag(info: dict, key: str, n: int) -> np.ndarray:
    return _np(info[key]).astype(bool).reshape(n) if key in info else np.zeros(n, dtype=bool)


# -- CPU backend ------------------------------------------------------------------------------------
class ManiSkillSubEnv(ChunkSubEnv):
    """One PhysX-CPU ManiSkill scene; rebuilt when a reset asks for another task."""

    def __init__(self, index: int, cfg: ManiSkillConfig, action_dim: int, state_dim: int) -> None:
        tasks = cfg.task_tuple
        super().__init__(index, cfg.chunk, episode_limit(cfg, tasks[0]), cfg.terminate_on_success, cfg.record)
        self.cfg, self.state_dim = cfg, state_dim
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (cfg.chunk, action_dim), np.float32)
        spaces: dict[str, gym.Space] = {"state": gym.spaces.Box(-np.inf, np.inf, (state_dim,), np.float32)}
        if cfg.image_size:
            spaces["image"] = gym.spaces.Box(0, 255, (cfg.image_size, cfg.image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self._env: Optional[gym.Env] = None
        self._raw: Any = None
        self._info: Optional[dict] = None

    def load_task(self, task: int) -> None:
        if self._env is not None:
            self._env.close()
        name = self.cfg.task_tuple[task]
        self.max_episode_steps = episode_limit(self.cfg, name)
        self._env = make_raw(name, num_envs=1, control_mode=self.cfg.control_mode, image_size=self.cfg.image_size,
                             reward=self.cfg.reward, gpu=False, render=self.cfg.record, render_size=self.cfg.render_size)

    def frame(self) -> np.ndarray:
        """The human render camera at render_size (videos), not the policy's camera."""
        return _render(self._env)[0]

    def start(self, seed: int) -> None:
        self._raw, _ = self._env.reset(seed=seed)
        self._info: Optional[dict] = None

    def act(self, action: np.ndarray) -> tuple[float, bool, bool]:
        # BaseEnv.step minus get_obs: observations (camera renders) are made once per chunk, by
        # observe(). Mirrors mani-skill 3.0.x's step(); its TimeLimit is disabled (_NO_LIMIT).
        u = self._env.unwrapped
        a = u._step_action(action[None])
        u._elapsed_steps += 1
        self._info = info = u.get_info()
        ok = bool(_flag(info, "success", 1)[0])
        if self.cfg.reward == "sparse":
            reward = float(ok)
        else:
            reward = float(_np(u.get_reward(obs=None, action=a, info=info)).reshape(-1)[0])
        qpos = _np(u.agent.robot.get_qpos())
        return reward, ok, not np.isfinite(qpos).all()

    def observe(self) -> dict[str, np.ndarray]:
        if self._info is not None:
            self._raw = self._env.unwrapped.get_obs(self._info)
            self._info = None
        obs = {k: v[0] for k, v in extract_obs(self._raw, self.cfg.image_size > 0).items()}
        s = obs["state"]
        if s.shape[0] < self.state_dim:  # tasks of different state sizes share one vector
            obs["state"] = np.concatenate([s, np.zeros(self.state_dim - s.shape[0], np.float32)])
        return obs

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


_PROBES: dict[tuple, tuple[int, int]] = {}


def _probe(task: str, control_mode: str, image_size: int) -> tuple[int, int]:
    """(action_dim, state_dim) of a task, from a throwaway CPU env (cached; ~0.5 s)."""
    key = (task, control_mode, image_size)
    if key not in _PROBES:
        env = make_raw(task, num_envs=1, control_mode=control_mode, image_size=image_size, reward="sparse", gpu=False)
        raw, _ = env.reset(seed=0)
        _PROBES[key] = (int(env.action_space.shape[-1]), int(extract_obs(raw, image_size > 0)["state"].shape[-1]))
        env.close()
    return _PROBES[key]


class ManiSkillVectorEnv(GymChunkVector):
    """N PhysX-CPU ManiSkill sub-environments behind the ChunkVectorEnv protocol."""

    def __init__(self, cfg: ManiSkillConfig) -> None:
        self.cfg, self.fps = cfg, FPS
        tasks = cfg.task_tuple
        dims = [_probe(t, cfg.control_mode, cfg.image_size) for t in tasks]
        if len({a for a, _ in dims}) != 1:
            raise InputError(f"tasks {tasks} have different action sizes {[a for a, _ in dims]} under {cfg.control_mode}")
        state_dim = max(s for _, s in dims)
        super().__init__(
            partial(ManiSkillSubEnv, cfg=cfg, action_dim=dims[0][0], state_dim=state_dim), num_envs=cfg.num_envs, chunk=cfg.chunk,
            action_dim=dims[0][0], state_dim=state_dim, max_episode_steps=max(episode_limit(cfg, t) for t in tasks),
            task_names=tasks, instructions=[INSTRUCTIONS.get(t, t) for t in tasks], vector=cfg.vector, record=cfg.record)


# -- GPU backend ------------------------------------------------------------------------------------
class ManiSkillGPUVectorEnv:
    """N scenes of one task in ManiSkill's GPU-parallel PhysX (CUDA), behind the ChunkVectorEnv protocol."""

    def __init__(self, cfg: ManiSkillConfig) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("ManiSkill's GPU backend needs CUDA; use ManiSkillConfig(backend='cpu') on this machine")
        self.cfg, self.fps = cfg, FPS
        task = cfg.task_tuple[0]
        self.task_names, self.instructions = (task,), (INSTRUCTIONS.get(task, task),)
        self.num_envs, self.chunk = cfg.num_envs, cfg.chunk
        self._limit = episode_limit(cfg, task)
        self.max_chunk_steps = -(-self._limit // cfg.chunk)
        self._env = make_raw(task, num_envs=cfg.num_envs, control_mode=cfg.control_mode, image_size=cfg.image_size,
                             reward=cfg.reward, gpu=True, render=cfg.record, render_size=cfg.render_size)
        self.action_dim = int(self._env.action_space.shape[-1])
        self._device = self._env.unwrapped.device
        self._raw: Any = None
        self.state_dim = 0
        self._ended = np.ones(cfg.num_envs, dtype=bool)
        self._length = np.zeros(cfg.num_envs, dtype=np.int64)

    def _obs(self) -> dict[str, np.ndarray]:
        out = extract_obs(self._raw, self.cfg.image_size > 0)
        out["task"] = np.zeros(self.num_envs, dtype=np.int64)
        out["instruction"] = np.array([self.instructions[0]] * self.num_envs, dtype=object)
        return out

    def reset(self, contexts: Sequence[Context]) -> dict[str, np.ndarray]:
        """Resets all N scenes; each scene's placement comes from its context's seed."""
        check_contexts(contexts, self.num_envs, self.task_names)
        self._raw, _ = self._env.reset(seed=[int(c.seed) for c in contexts])
        self._ended[:] = False
        self._length[:] = 0
        obs = self._obs()
        self.state_dim = int(obs["state"].shape[-1])
        return obs

    def step(self, actions: np.ndarray) -> StepResult:
        import torch

        actions = check_actions(actions, self.num_envs, self.chunk, self.action_dim)
        a = torch.as_tensor(actions[:, : self.chunk], device=self._device)
        N = self.num_envs
        was_ended = self._ended.copy()
        reward = np.zeros(N, np.float32)
        success, terminated, truncated, crashed = (np.zeros(N, bool) for _ in range(4))
        executed = np.zeros(N, np.int64)
        frames: list[np.ndarray] = []
        for i in range(self.chunk):
            live = ~self._ended
            if not live.any():
                break
            self._raw, r, _, _, info = self._env.step(a[:, i])
            ok = _flag(info, "success", N)
            r = ok.astype(np.float32) if self.cfg.reward == "sparse" else _np(r).astype(np.float32).reshape(N)
            reward += np.where(live, r, 0.0)
            executed += live
            self._length += live
            success |= ok & live
            if self.cfg.record:
                frames.append(_render(self._env))
            bad = live & ~np.isfinite(extract_obs(self._raw, self.cfg.image_size > 0)["state"]).all(-1)
            crashed |= bad
            term = live & (bad | (ok & self.cfg.terminate_on_success))
            trunc = live & ~term & (self._length >= self._limit)
            terminated |= term
            truncated |= trunc
            self._ended |= term | trunc
        info_out: dict[str, Any] = {"episode_length": self._length.copy(), "crashed": crashed, "executed": executed}
        if self.cfg.record:
            info_out["frames"] = frames
        return StepResult(obs=self._obs(), reward=reward, terminated=terminated, truncated=truncated,
                          success=success & ~was_ended, info=info_out)

    @property
    def ended(self) -> np.ndarray:
        return self._ended.copy()

    def close(self) -> None:
        self._env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_maniskill(cfg: Optional[ManiSkillConfig] = None, **overrides: Any):
    """A ManiSkill ChunkVectorEnv: ``make_maniskill(tasks='PickCube-v1', num_envs=4)``;
    ``backend='gpu'`` gives :class:`ManiSkillGPUVectorEnv` (CUDA)."""
    cfg = replace(cfg, **overrides) if cfg is not None else ManiSkillConfig(**overrides)
    return ManiSkillGPUVectorEnv(cfg) if cfg.backend == "gpu" else ManiSkillVectorEnv(cfg)
