"""MetaWorld (v3, MuJoCo) as a :class:`~pirl.envs.base.ChunkVectorEnv`.

Each gymnasium sub-environment borrows a MetaWorld env of its episode's task from a pool shared by
the sub-environments of one process, and executes a whole action chunk per ``step``, so a
subprocess vector (``AsyncVectorEnv``, "spawn") pays one round trip per chunk, not per action.
The pool holds at most as many envs of a task as sub-environments ran it at once: one env per
(sub-env, task), as before, grew to 9 GB per process on MT10 with 58 sub-envs (16-45 MB each).

Contexts fix the start of an episode: the seed draws the goal and object positions from
MetaWorld's own reset distribution (``env.seed(seed)`` then a seeded ``reset``), so the
same (task, seed) always gives the same initial state. Training and held-out evaluation
seeds come from disjoint ranges (:func:`train_contexts`, :func:`eval_contexts`).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Optional, Union

import gymnasium as gym
import numpy as np

from pirl.envs import mujoco_render  # noqa: F401  (sets MUJOCO_GL before mujoco is imported)
from pirl.envs.base import EVAL_SEED_START, Context, eval_contexts  # noqa: F401 (re-exported)
from pirl.envs.chunked import ChunkSubEnv, GymChunkVector
from pirl.envs.metaworld_tasks import INSTRUCTIONS, resolve_tasks
from pirl.errors import InputError

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
    render_size: int = 224
    """Height and width of the recorded frames (independent of image_size, which is what the policy sees)."""
    record: bool = False
    """Render every executed action into info['frames'] (camera, or 'corner2' if camera is None), at render_size."""
    vector: Literal["sync", "async"] = "sync"
    """sync: all sub-environments in this process; async: one subprocess each (spawn)."""

    def __post_init__(self) -> None:
        resolve_tasks(self.tasks)  # fails early, with close matches
        if self.num_envs < 1 or self.chunk < 1 or self.max_episode_steps < 1:
            raise InputError(f"num_envs, chunk and max_episode_steps must be >= 1; got {self.num_envs}, {self.chunk}, {self.max_episode_steps}")
        if self.reward not in ("sparse", "dense"):
            raise InputError(f"reward must be 'sparse' or 'dense', got {self.reward!r}")
        if self.vector not in ("sync", "async"):
            raise InputError(f"vector must be 'sync' or 'async', got {self.vector!r}")
        if not 8 <= self.image_size <= 1024 or not 8 <= self.render_size <= 1024:
            raise InputError(f"image_size and render_size must lie in [8, 1024], got {self.image_size}, {self.render_size}")


def train_contexts(num_tasks: int, per_task: int, start: int = 0) -> list[Context]:
    """Training contexts: seeds start .. start + per_task - 1 for every task (task-major order)."""
    if start + per_task > EVAL_SEED_START:
        raise ValueError(f"training seeds must stay below EVAL_SEED_START={EVAL_SEED_START}")
    return [Context(task, start + i) for task in range(num_tasks) for i in range(per_task)]


@dataclass(eq=False)
class _Slot:
    """A MetaWorld env and the renderers bound to its model."""

    task: int
    env: Any
    renderers: dict[tuple[str, int], Any] = field(default_factory=dict)

    def close(self) -> None:
        for r in self.renderers.values():
            r.close()
        self.renderers.clear()
        self.env.close()


class EnvPool:
    """MetaWorld envs by task, lent to sub-environments for one episode's task at a time.

    A (task, seed) reset fully determines the episode, so which pooled instance serves it does not
    matter. Pickles empty: each subprocess of an async vector gets its own pool.
    """

    def __init__(self, task_names: tuple[str, ...], cfg: MetaWorldConfig) -> None:
        self.task_names, self.cfg = task_names, cfg
        self._free: dict[int, list[_Slot]] = {}
        self.built = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"task_names": self.task_names, "cfg": self.cfg, "_free": {}, "built": 0}

    def take(self, task: int) -> _Slot:
        free = self._free.get(task)
        if free:
            return free.pop()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        env = ALL_V3_ENVIRONMENTS[self.task_names[task]]()
        if env._partially_observable:  # MT benchmarks observe the goal (39-D state)
            env._partially_observable = False
            env.__dict__.pop("sawyer_observation_space", None)  # a cached_property
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True  # goal/object positions from env.np_random
        env._set_task_called = True
        env.max_path_length = self.cfg.max_episode_steps
        self.built += 1
        return _Slot(task, env)

    def give(self, slot: _Slot) -> None:
        self._free.setdefault(slot.task, []).append(slot)

    def close(self) -> None:
        """Closes the idle envs (lent ones come back and are closed by their sub-env's close)."""
        for free in self._free.values():
            for slot in free:
                slot.close()
        self._free.clear()


_POOLS: "weakref.WeakValueDictionary[tuple, EnvPool]" = weakref.WeakValueDictionary()


def shared_pool(task_names: tuple[str, ...], cfg: MetaWorldConfig) -> EnvPool:
    """The process's pool for these tasks and episode limit: training and evaluation vectors share it."""
    key = (task_names, cfg.max_episode_steps)
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = EnvPool(task_names, cfg)
    return pool


class MetaWorldSubEnv(ChunkSubEnv):
    """One sub-environment: any of the suite's tasks, its env borrowed from ``pool`` per task."""

    def __init__(self, index: int, task_names: tuple[str, ...], cfg: MetaWorldConfig,
                 pool: Optional[EnvPool] = None) -> None:
        super().__init__(index, cfg.chunk, cfg.max_episode_steps, cfg.terminate_on_success, cfg.record)
        self.task_names, self.cfg = task_names, cfg
        self.pool = pool if pool is not None else EnvPool(task_names, cfg)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (cfg.chunk, ACTION_DIM), np.float32)
        spaces: dict[str, gym.Space] = {"state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)}
        s = cfg.image_size
        if cfg.camera is not None:
            spaces["image"] = gym.spaces.Box(0, 255, (s, s, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self._slot: Optional[_Slot] = None
        self._raw: Optional[np.ndarray] = None

    @property
    def _env(self) -> Any:
        return self._slot.env if self._slot is not None else None

    def load_task(self, task: int) -> None:
        if not 0 <= task < len(self.task_names):
            raise ValueError(f"task index {task} out of range for {len(self.task_names)} tasks {list(self.task_names)}")
        self.release_task()
        self._slot = self.pool.take(task)

    def release_task(self) -> None:
        if self._slot is not None:
            self.pool.give(self._slot)
            self._slot = None

    def start(self, seed: int) -> None:
        self._env.seed(seed)
        self._raw, _ = self._env.reset()

    def act(self, action: np.ndarray) -> tuple[float, bool, bool]:
        self._raw, r, _, _, info = self._env.step(np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0))
        solved = bool(info["success"] > 0)
        reward = float(solved) if self.cfg.reward == "sparse" else float(r)
        return reward, solved, bool(self._env._did_see_sim_exception)  # MuJoCo went unstable

    def observe(self) -> dict[str, np.ndarray]:
        obs = {"state": np.asarray(self._raw, dtype=np.float32)}
        if self.cfg.camera is not None:
            obs["image"] = self._render(self.cfg.camera, self.cfg.image_size)
        return obs

    def frame(self) -> np.ndarray:
        return self._render(self.cfg.camera or "corner2", self.cfg.render_size)

    def _render(self, camera: str, size: int) -> np.ndarray:
        from pirl.envs.mujoco_render import ModelRenderer

        slot = self._slot
        if (camera, size) not in slot.renderers:
            slot.renderers[camera, size] = ModelRenderer(slot.env.model, camera, size, size)
        return slot.renderers[camera, size].render(slot.env.data)

    def close(self) -> None:
        if self._slot is not None:
            self._slot.close()
            self._slot = None
        self.pool.close()


class MetaWorldVectorEnv(GymChunkVector):
    """N MetaWorld sub-environments behind the :class:`~pirl.envs.base.ChunkVectorEnv` protocol."""

    def __init__(self, cfg: MetaWorldConfig) -> None:
        self.cfg, self.fps = cfg, FPS
        task_names = resolve_tasks(cfg.tasks)
        super().__init__(
            partial(MetaWorldSubEnv, task_names=task_names, cfg=cfg, pool=shared_pool(task_names, cfg)),
            num_envs=cfg.num_envs, chunk=cfg.chunk,
            action_dim=ACTION_DIM, state_dim=STATE_DIM, max_episode_steps=cfg.max_episode_steps,
            task_names=task_names, instructions=[INSTRUCTIONS[t] for t in task_names],
            vector=cfg.vector, record=cfg.record, pooled=True)


def make_metaworld(cfg: Optional[MetaWorldConfig] = None, **overrides: Any) -> MetaWorldVectorEnv:
    """A MetaWorld ChunkVectorEnv: ``make_metaworld(tasks='MT10', num_envs=8, chunk=4, camera='corner2')``."""
    if cfg is None:
        cfg = MetaWorldConfig(**overrides)
    elif overrides:
        from dataclasses import replace

        cfg = replace(cfg, **overrides)
    return MetaWorldVectorEnv(cfg)
