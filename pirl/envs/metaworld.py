"""MetaWorld (v3, MuJoCo) as a :class:`~pirl.envs.base.ChunkVectorEnv`.

Each gymnasium sub-environment owns one MetaWorld env per task it has been asked for
(built lazily) and executes a whole action chunk per ``step``, so a subprocess vector
(``AsyncVectorEnv``, "spawn") pays one round trip per chunk, not per action.

Contexts fix the start of an episode: the seed draws the goal and object positions from
MetaWorld's own reset distribution (``env.seed(seed)`` then a seeded ``reset``), so the
same (task, seed) always gives the same initial state. Training and held-out evaluation
seeds come from disjoint ranges (:func:`train_contexts`, :func:`eval_contexts`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Optional, Sequence, Union

import gymnasium as gym
import numpy as np

from pirl.envs import mujoco_render  # noqa: F401  (sets MUJOCO_GL before mujoco is imported)
from pirl.envs.base import EVAL_SEED_START, Context, StepResult, eval_contexts  # noqa: F401 (re-exported)
from pirl.envs.metaworld_tasks import INSTRUCTIONS, resolve_tasks

STATE_DIM = 39
ACTION_DIM = 4
MAX_EPISODE_STEPS = 500
"""MetaWorld's own episode limit."""
FPS = 80
"""Control frequency: frame_skip 5 x timestep 2.5 ms."""


@dataclass(frozen=True)
class MetaWorldConfig:
    """A vector of MetaWorld environments executing action chunks."""

    tasks: Union[str, tuple[str, ...]] = "MT10"
    """A task ('pick-place-v3'), a suite ('MT10', 'MT50', 'MT1:reach-v3'), or a tuple of task names."""
    num_envs: int = 1
    """N, sub-environments stepped together."""
    chunk: int = 4
    """Actions executed per step: the first ``chunk`` of each predicted chunk [H, D]."""
    max_episode_steps: int = MAX_EPISODE_STEPS
    """Actions after which an episode is truncated."""
    reward: Literal["sparse", "dense"] = "sparse"
    """sparse: 1 for each action after which the task is solved; dense: MetaWorld's shaped reward (0-10)."""
    terminate_on_success: bool = True
    """End the episode (terminated) at the first success."""
    camera: Optional[str] = None
    """Camera for obs['image'] (e.g. 'corner2', 'corner', 'topview', 'gripperPOV'); None = state only."""
    image_size: int = 64
    """Height and width of rendered images in pixels."""
    record: bool = False
    """Render every executed action into info['frames'] (camera, or 'corner2' if camera is None)."""
    vector: Literal["sync", "async"] = "sync"
    """sync: all sub-environments in this process; async: one subprocess each (spawn)."""

    def __post_init__(self) -> None:
        resolve_tasks(self.tasks)  # fails early, with close matches
        if self.num_envs < 1 or self.chunk < 1 or self.max_episode_steps < 1:
            raise ValueError(f"num_envs, chunk and max_episode_steps must be >= 1; got {self.num_envs}, {self.chunk}, {self.max_episode_steps}")
        if self.reward not in ("sparse", "dense"):
            raise ValueError(f"reward must be 'sparse' or 'dense', got {self.reward!r}")
        if self.vector not in ("sync", "async"):
            raise ValueError(f"vector must be 'sync' or 'async', got {self.vector!r}")
        if not 8 <= self.image_size <= 1024:
            raise ValueError(f"image_size must lie in [8, 1024], got {self.image_size}")


def train_contexts(num_tasks: int, per_task: int, start: int = 0) -> list[Context]:
    """Training contexts: seeds start .. start + per_task - 1 for every task (task-major order)."""
    if start + per_task > EVAL_SEED_START:
        raise ValueError(f"training seeds must stay below EVAL_SEED_START={EVAL_SEED_START}")
    return [Context(task, start + i) for task in range(num_tasks) for i in range(per_task)]


class _ChunkSubEnv(gym.Env):
    """One sub-environment: any of the suite's tasks, one action chunk per step.

    Episode ends are reported in ``info`` (terminated/truncated stay False towards gymnasium),
    because a vector with autoreset disabled refuses to step an ended sub-environment, and
    the ChunkVectorEnv protocol lets ended sub-environments ignore their actions instead.
    """

    def __init__(self, index: int, task_names: tuple[str, ...], cfg: MetaWorldConfig) -> None:
        self.index, self.task_names, self.cfg = index, task_names, cfg
        self.action_space = gym.spaces.Box(-1.0, 1.0, (cfg.chunk, ACTION_DIM), np.float32)
        spaces: dict[str, gym.Space] = {"state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)}
        s = cfg.image_size
        if cfg.camera is not None:
            spaces["image"] = gym.spaces.Box(0, 255, (s, s, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self._envs: dict[int, Any] = {}
        self._renderers: dict[tuple[int, str], Any] = {}
        self._task: Optional[int] = None
        self._ended = True
        self._length = 0
        self._obs: Optional[dict[str, np.ndarray]] = None
        self._last_frame: Optional[np.ndarray] = None

    # -- construction -------------------------------------------------------------------------
    def _env(self, task: int):
        if task not in self._envs:
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS

            env = ALL_V3_ENVIRONMENTS[self.task_names[task]]()
            if env._partially_observable:  # MT benchmarks observe the goal (39-D state)
                env._partially_observable = False
                env.__dict__.pop("sawyer_observation_space", None)  # a cached_property
            env._freeze_rand_vec = False
            env.seeded_rand_vec = True  # goal/object positions from env.np_random
            env._set_task_called = True
            env.max_path_length = self.cfg.max_episode_steps
            self._envs[task] = env
        return self._envs[task]

    def _render(self, camera: str) -> np.ndarray:
        from pirl.envs.mujoco_render import ModelRenderer

        key = (self._task, camera)
        if key not in self._renderers:
            env = self._envs[self._task]
            self._renderers[key] = ModelRenderer(env.model, camera, self.cfg.image_size, self.cfg.image_size)
        return self._renderers[key].render(self._envs[self._task].data)

    def _observe(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        obs = {"state": np.asarray(raw, dtype=np.float32)}
        if self.cfg.camera is not None:
            obs["image"] = self._render(self.cfg.camera)
        return obs

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        if seed is None or options is None or "tasks" not in options:
            raise ValueError("reset needs a seed and options={'tasks': [...]} (use MetaWorldVectorEnv.reset(contexts))")
        task = int(options["tasks"][self.index])
        if not 0 <= task < len(self.task_names):
            raise ValueError(f"task index {task} out of range for {len(self.task_names)} tasks {list(self.task_names)}")
        self._task = task
        env = self._env(task)
        env.seed(int(seed))
        raw, _ = env.reset()
        self._ended, self._length = False, 0
        self._obs = self._observe(raw)
        self._last_frame = self._render(self._record_camera) if self.cfg.record else None
        return self._obs, {}

    @property
    def _record_camera(self) -> str:
        return self.cfg.camera or "corner2"

    def step(self, action: np.ndarray):
        cfg = self.cfg
        frames: list[np.ndarray] = []
        reward, success, terminated, truncated, crashed, executed = 0.0, False, False, False, False, 0
        if not self._ended:
            env = self._envs[self._task]
            for a in np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0):
                raw, r, _, _, info = env.step(a)
                executed += 1
                self._length += 1
                solved = bool(info["success"] > 0)
                success |= solved
                reward += float(solved) if cfg.reward == "sparse" else float(r)
                if cfg.record:
                    frames.append(self._render(self._record_camera))
                if env._did_see_sim_exception:  # MuJoCo went unstable: the episode cannot go on
                    crashed = terminated = True
                    break
                if solved and cfg.terminate_on_success:
                    terminated = True
                    break
                if self._length >= cfg.max_episode_steps:
                    truncated = True
                    break
            self._obs = self._observe(raw)
            self._ended = terminated or truncated
        info_out: dict[str, Any] = {
            "success": success,
            "terminated": terminated,
            "truncated": truncated,
            "crashed": crashed,
            "episode_length": self._length,
            "executed": executed,
        }
        if cfg.record:
            if frames:
                self._last_frame = frames[-1]
            pad = [self._last_frame] * (cfg.chunk - len(frames))
            info_out["frames"] = np.stack(frames + pad)  # fixed [chunk, h, w, 3] so vectors can batch it
        return self._obs, reward, False, False, info_out

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        for env in self._envs.values():
            env.close()
        self._renderers.clear()
        self._envs.clear()


class MetaWorldVectorEnv:
    """N MetaWorld sub-environments behind the :class:`~pirl.envs.base.ChunkVectorEnv` protocol."""

    def __init__(self, cfg: MetaWorldConfig) -> None:
        self.cfg = cfg
        self.task_names: tuple[str, ...] = resolve_tasks(cfg.tasks)
        self.instructions: tuple[str, ...] = tuple(INSTRUCTIONS[t] for t in self.task_names)
        self.num_envs, self.chunk = cfg.num_envs, cfg.chunk
        self.action_dim, self.state_dim = ACTION_DIM, STATE_DIM
        self.max_chunk_steps = math.ceil(cfg.max_episode_steps / cfg.chunk)
        self.fps = FPS
        fns = [partial(_ChunkSubEnv, i, self.task_names, cfg) for i in range(cfg.num_envs)]
        mode = gym.vector.AutoresetMode.DISABLED
        if cfg.vector == "async":
            self._vec = gym.vector.AsyncVectorEnv(fns, context="spawn", autoreset_mode=mode)
        else:
            self._vec = gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
        self._tasks = np.zeros(cfg.num_envs, dtype=np.int64)
        self._ended = np.ones(cfg.num_envs, dtype=bool)

    def _full_obs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: np.asarray(v) for k, v in obs.items()}
        out["task"] = self._tasks.copy()
        out["instruction"] = np.array([self.instructions[t] for t in self._tasks], dtype=object)
        return out

    def reset(self, contexts: Sequence[Context]) -> dict[str, np.ndarray]:
        """Starts an episode in every sub-environment from its (task, seed) context."""
        if len(contexts) != self.num_envs:
            raise ValueError(f"reset got {len(contexts)} contexts for {self.num_envs} sub-environments (one each)")
        for c in contexts:
            if not 0 <= c.task < len(self.task_names):
                raise ValueError(f"context task {c.task} out of range: this env has tasks 0..{len(self.task_names) - 1} {list(self.task_names)}")
        self._tasks = np.array([c.task for c in contexts], dtype=np.int64)
        obs, _ = self._vec.reset(seed=[int(c.seed) for c in contexts], options={"tasks": self._tasks.tolist()})
        self._ended[:] = False
        return self._full_obs(obs)

    def step(self, actions: np.ndarray) -> StepResult:
        """Executes the first ``chunk`` actions of every chunk in ``actions`` [N, H, D]."""
        actions = np.asarray(actions, dtype=np.float32)
        N, D = self.num_envs, self.action_dim
        if actions.ndim != 3 or actions.shape[0] != N or actions.shape[2] != D or actions.shape[1] < self.chunk:
            raise ValueError(
                f"actions of shape {actions.shape}; expected [N={N}, H>={self.chunk}, D={D}] "
                f"(a batch of action chunks; a single action a [D] is actions[None, None])"
            )
        if not np.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf; check the policy's output (and its normaliser stats)")
        obs, reward, _, _, info = self._vec.step(np.ascontiguousarray(actions[:, : self.chunk]))
        was_ended = self._ended.copy()
        terminated = np.asarray(info["terminated"], dtype=bool) & ~was_ended
        truncated = np.asarray(info["truncated"], dtype=bool) & ~was_ended
        self._ended |= terminated | truncated
        extras: dict[str, Any] = {
            "episode_length": np.asarray(info["episode_length"], dtype=np.int64),
            "crashed": np.asarray(info["crashed"], dtype=bool),
            "executed": np.asarray(info["executed"], dtype=np.int64),
        }
        if self.cfg.record:
            n = int(extras["executed"].max())
            frames = np.asarray(info["frames"])  # [N, chunk, h, w, 3]
            extras["frames"] = [frames[:, i] for i in range(n)]
        return StepResult(
            obs=self._full_obs(obs),
            reward=np.asarray(reward, dtype=np.float32),
            terminated=terminated,
            truncated=truncated,
            success=np.asarray(info["success"], dtype=bool) & ~was_ended,
            info=extras,
        )

    @property
    def ended(self) -> np.ndarray:
        """[N] bool: sub-environments whose episode has ended since the last reset."""
        return self._ended.copy()

    def close(self) -> None:
        self._vec.close()

    def __enter__(self) -> "MetaWorldVectorEnv":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_metaworld(cfg: Optional[MetaWorldConfig] = None, **overrides: Any) -> MetaWorldVectorEnv:
    """A MetaWorld ChunkVectorEnv: ``make_metaworld(tasks='MT10', num_envs=8, chunk=4, camera='corner2')``."""
    if cfg is None:
        cfg = MetaWorldConfig(**overrides)
    elif overrides:
        from dataclasses import replace

        cfg = replace(cfg, **overrides)
    return MetaWorldVectorEnv(cfg)
