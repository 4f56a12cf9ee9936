"""A :class:`~pirl.envs.base.ChunkVectorEnv` built from single chunked sub-environments.

Simulators that run scenes on the CPU (LIBERO, MetaWorld, ManiSkill's CPU backend) share this code:
a subclass of :class:`ChunkSubEnv` says how to load a task, start an episode from a seed,
execute one action and observe; :class:`GymChunkVector` runs N of them in gymnasium's
``SyncVectorEnv`` or ``AsyncVectorEnv`` ("spawn": simulators holding EGL/Vulkan contexts hang
after ``fork``) and executes a whole chunk per round trip.
"""

from __future__ import annotations

import math
import os
from abc import abstractmethod
from typing import Any, Callable, Literal, Optional, Sequence

import gymnasium as gym
import numpy as np

from pirl.envs.base import Context, StepResult
from pirl.errors import InputError


class ChunkSubEnv(gym.Env):
    """One sub-environment that can play any task of a suite and executes a chunk per ``step``.

    Episode ends travel in ``info`` (gymnasium's terminated/truncated stay False), because a
    vector with autoreset disabled refuses to step an ended sub-environment, whereas the
    ChunkVectorEnv protocol lets ended sub-environments ignore their actions.
    """

    def __init__(self, index: int, chunk: int, max_episode_steps: int, terminate_on_success: bool = True,
                 record: bool = False) -> None:
        self.index, self.chunk, self.max_episode_steps = index, chunk, max_episode_steps
        self.terminate_on_success, self.record = terminate_on_success, record
        self._task: Optional[int] = None
        self._ended = True
        self._length = 0
        self._obs: dict[str, np.ndarray] = {}
        self._last_frame: Optional[np.ndarray] = None

    # -- what a simulator implements ----------------------------------------------------------
    @abstractmethod
    def load_task(self, task: int) -> None:
        """Makes ``task`` the current task (building its scene if needed)."""

    @abstractmethod
    def start(self, seed: int) -> None:
        """Starts an episode of the current task from ``seed`` (including any warm-up)."""

    @abstractmethod
    def act(self, action: np.ndarray) -> tuple[float, bool, bool]:
        """Executes one action; returns (reward, success, crashed)."""

    @abstractmethod
    def observe(self) -> dict[str, np.ndarray]:
        """The current observation (no leading N)."""

    def release_task(self) -> None:
        """Gives up the current task's scene before a reset to another task (pooled simulators)."""

    def release_changed_tasks(self, tasks: Sequence[int]) -> None:
        """Called on every sub-env before a vector reset, so pooled scenes are freed before any is taken."""
        if self._task is not None and int(tasks[self.index]) != self._task:
            self.release_task()
            self._task = None

    def frame(self) -> np.ndarray:
        """A picture of the scene for videos; defaults to the observation's 'image'."""
        return self.observe()["image"]

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        if seed is None or options is None or "tasks" not in options:
            raise ValueError("reset needs a seed and options={'tasks': [...]} (use the vector's reset(contexts))")
        task = int(options["tasks"][self.index])
        if task != self._task:
            self.load_task(task)
            self._task = task
        self.start(int(seed))
        self._ended, self._length = False, 0
        self._obs = self.observe()
        self._last_frame = self.frame() if self.record else None
        return self._obs, {}

    def step(self, action: np.ndarray):
        frames: list[np.ndarray] = []
        reward, success, terminated, truncated, crashed, executed = 0.0, False, False, False, False, 0
        if not self._ended:
            for a in np.asarray(action, dtype=np.float32)[: self.chunk]:
                r, solved, bad = self.act(a)
                executed += 1
                self._length += 1
                reward += r
                success |= solved
                if self.record:
                    frames.append(self.frame())
                if bad:  # the simulation went unstable: the episode cannot go on
                    crashed = terminated = True
                    break
                if solved and self.terminate_on_success:
                    terminated = True
                    break
                if self._length >= self.max_episode_steps:
                    truncated = True
                    break
            self._obs = self.observe()
            self._ended = terminated or truncated
        info: dict[str, Any] = {
            "success": success, "terminated": terminated, "truncated": truncated, "crashed": crashed,
            "episode_length": self._length, "executed": executed,
        }
        if self.record:
            if frames:
                self._last_frame = frames[-1]
            # a fixed [chunk, h, w, 3] so that vectors can batch it
            info["frames"] = np.stack(frames + [self._last_frame] * (self.chunk - len(frames)))
        return self._obs, reward, False, False, info


VectorKind = Literal["sync", "async"]


def max_async_envs() -> int:
    """The most sub-environments ``vector='async'`` starts (one simulator process each): twice the CPUs, at least 8.
    More processes than cores add no speed, and each holds a whole simulator (~0.6 GB for LIBERO), so 48 of
    them exhaust a 24 GB machine; a Ray runner hosts many sub-environments per process instead."""
    return max(8, 2 * (os.cpu_count() or 1))


class GymChunkVector:
    """N :class:`ChunkSubEnv` behind the ChunkVectorEnv protocol (see :mod:`pirl.envs.base`)."""

    def __init__(self, make_sub: Callable[[int], ChunkSubEnv], *, num_envs: int, chunk: int, action_dim: int,
                 state_dim: int, max_episode_steps: int, task_names: Sequence[str], instructions: Sequence[str],
                 vector: VectorKind = "sync", record: bool = False, pooled: bool = False) -> None:
        if vector not in ("sync", "async"):
            raise ValueError(f"vector must be 'sync' or 'async', got {vector!r}")
        if vector == "async" and num_envs > max_async_envs():
            raise InputError(
                f"env.vector=async starts one simulator process per sub-environment: {num_envs} here, on "
                f"{os.cpu_count()} CPUs, each holding a whole simulator; use runner.kind=ray runner.env_workers=<cores> "
                f"(each worker steps its share of the sub-environments in one process) or at most {max_async_envs()} "
                "sub-environments")
        self.num_envs, self.chunk = num_envs, chunk
        self.action_dim, self.state_dim = action_dim, state_dim
        self.max_chunk_steps = math.ceil(max_episode_steps / chunk)
        self.task_names, self.instructions = tuple(task_names), tuple(instructions)
        self.record = record
        self.pooled = pooled
        fns = [_Factory(make_sub, i) for i in range(num_envs)]
        mode = gym.vector.AutoresetMode.DISABLED
        if vector == "async":
            self._vec = gym.vector.AsyncVectorEnv(fns, context="spawn", autoreset_mode=mode)
        else:
            self._vec = gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
        self._tasks = np.zeros(num_envs, dtype=np.int64)
        self._ended = np.ones(num_envs, dtype=bool)

    def _full_obs(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k: np.asarray(v) for k, v in obs.items()}
        out["task"] = self._tasks.copy()
        out["instruction"] = np.array([self.instructions[t] for t in self._tasks], dtype=object)
        return out

    def reset(self, contexts: Sequence[Context]) -> dict[str, np.ndarray]:
        """Starts an episode in every sub-environment from its (task, seed) context."""
        check_contexts(contexts, self.num_envs, self.task_names)
        self._tasks = np.array([c.task for c in contexts], dtype=np.int64)
        if self.pooled:
            self._vec.call("release_changed_tasks", self._tasks.tolist())
        obs, _ = self._vec.reset(seed=[int(c.seed) for c in contexts], options={"tasks": self._tasks.tolist()})
        self._ended[:] = False
        return self._full_obs(obs)

    def step(self, actions: np.ndarray) -> StepResult:
        """Executes the first ``chunk`` actions of every chunk in ``actions`` [N, H, D]."""
        actions = check_actions(actions, self.num_envs, self.chunk, self.action_dim)
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
        if self.record:
            frames = np.asarray(info["frames"])  # [N, chunk, h, w, 3]
            extras["frames"] = [frames[:, i] for i in range(int(extras["executed"].max()))]
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

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Factory:
    """A picklable ``() -> sub-env`` (spawned workers rebuild the sub-environment from it)."""

    def __init__(self, make_sub: Callable[[int], ChunkSubEnv], index: int) -> None:
        self.make_sub, self.index = make_sub, index

    def __call__(self) -> ChunkSubEnv:
        return self.make_sub(self.index)


def check_contexts(contexts: Sequence[Context], num_envs: int, task_names: Sequence[str]) -> None:
    if len(contexts) != num_envs:
        raise ValueError(f"reset got {len(contexts)} contexts for {num_envs} sub-environments (one each)")
    for c in contexts:
        if not 0 <= c.task < len(task_names):
            raise ValueError(f"context task {c.task} out of range: tasks are 0..{len(task_names) - 1} {list(task_names)}")


def check_actions(actions: np.ndarray, num_envs: int, chunk: int, action_dim: int) -> np.ndarray:
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 3 or actions.shape[0] != num_envs or actions.shape[2] != action_dim or actions.shape[1] < chunk:
        raise ValueError(f"actions of shape {actions.shape}; expected [N={num_envs}, H>={chunk}, D={action_dim}] "
                         f"(a batch of action chunks; a single action a [D] is actions[None, None])")
    if not np.isfinite(actions).all():
        raise ValueError("actions contain NaN or inf; check the policy's output (and its normaliser stats)")
    return actions
