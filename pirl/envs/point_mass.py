"""A vectorised, chunked 2-D point mass: the smallest real task for RL tests (pure numpy).

The point starts at a seeded random position in the box [-1, 1]^2 and must reach the
task's goal disk. Actions are velocity commands clipped to [-1, 1] per axis; each action
moves the point by ``speed * action``. The reward is sparse: 1 on the chunk where the
point enters the goal (the episode then terminates), 0 otherwise; an episode that has not
succeeded after ``max_chunk_steps`` chunks is truncated.

Observation: 'state' [N, 4] float32 = (x, y, goal_x, goal_y), 'task' [N] int64,
'instruction' [N] strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from pirl.envs.base import Context, StepResult
from pirl.errors import InputError

# Four goal regions, one per quadrant; a task is one of them with its instruction.
DEFAULT_GOALS: tuple[tuple[float, float], ...] = ((0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5))
_NAMES = ("top right", "top left", "bottom left", "bottom right")


@dataclass(frozen=True)
class PointMassConfig:
    """Geometry and timing of :class:`PointMassEnv`."""

    num_tasks: int = 1
    """Tasks (goal regions) in the suite, taken from DEFAULT_GOALS (1-4)."""
    chunk: int = 4
    """Actions executed per env step."""
    max_chunk_steps: int = 8
    """Chunk steps before truncation."""
    speed: float = 0.1
    """Displacement per action of magnitude 1 on one axis."""
    goal_radius: float = 0.15
    """Radius of the goal disk."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_tasks <= len(DEFAULT_GOALS):
            raise InputError(f"num_tasks must lie in [1, {len(DEFAULT_GOALS)}], got {self.num_tasks}")
        for name in ("chunk", "max_chunk_steps"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.speed > 0 and self.goal_radius > 0):
            raise InputError(f"speed and goal_radius must be > 0, got {self.speed}, {self.goal_radius}")


class PointMassEnv:
    """N point masses stepping in lockstep; implements :class:`pirl.envs.base.ChunkVectorEnv`."""

    action_dim = 2
    state_dim = 4

    def __init__(self, num_envs: int, cfg: PointMassConfig = PointMassConfig()) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs, self.cfg = num_envs, cfg
        self.chunk, self.max_chunk_steps = cfg.chunk, cfg.max_chunk_steps
        self.goals = np.asarray(DEFAULT_GOALS[: cfg.num_tasks], dtype=np.float32)
        self.task_names = tuple(f"reach_{n.replace(' ', '_')}" for n in _NAMES[: cfg.num_tasks])
        self.instructions = tuple(f"move the point to the {n} target" for n in _NAMES[: cfg.num_tasks])
        self.pos = np.zeros((num_envs, 2), np.float32)
        self.task = np.zeros(num_envs, np.int64)
        self.steps = np.zeros(num_envs, np.int64)
        self.actions_done = np.zeros(num_envs, np.int64)
        self.done = np.ones(num_envs, bool)

    @staticmethod
    def start_position(seed: int, goal: np.ndarray, radius: float) -> np.ndarray:
        """The seeded start: uniform in the box, outside the goal disk (resampled until it is)."""
        rng = np.random.default_rng(seed)
        while True:
            p = rng.uniform(-1.0, 1.0, size=2).astype(np.float32)
            if np.linalg.norm(p - goal) > radius:
                return p

    def reset(self, contexts: Sequence[Context]) -> dict[str, np.ndarray]:
        if len(contexts) != self.num_envs:
            raise ValueError(f"reset needs one context per sub-env: got {len(contexts)} for {self.num_envs}")
        for i, c in enumerate(contexts):
            if not 0 <= c.task < len(self.goals):
                raise ValueError(f"context {i} has task {c.task}; this suite has {len(self.goals)} task(s)")
            self.task[i] = c.task
            self.pos[i] = self.start_position(c.seed, self.goals[c.task], self.cfg.goal_radius)
        self.steps[:] = 0
        self.actions_done[:] = 0
        self.done[:] = False
        return self._obs()

    def _obs(self) -> dict[str, np.ndarray]:
        state = np.concatenate([self.pos, self.goals[self.task]], axis=1).astype(np.float32)
        return {
            "state": state,
            "task": self.task.copy(),
            "instruction": np.asarray([self.instructions[t] for t in self.task]),
        }

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions, dtype=np.float32)
        N = self.num_envs
        if actions.ndim != 3 or actions.shape[0] != N or actions.shape[2] != 2 or actions.shape[1] < self.chunk:
            raise ValueError(f"actions must be [N={N}, H>={self.chunk}, 2], got {actions.shape}")
        if not np.isfinite(actions).all():
            raise ValueError("actions contain NaN/inf")
        running = ~self.done
        success = np.zeros(N, bool)
        goal = self.goals[self.task]
        for h in range(self.chunk):
            move = running & ~success
            self.pos[move] += self.cfg.speed * np.clip(actions[move, h], -1.0, 1.0)
            np.clip(self.pos, -1.0, 1.0, out=self.pos)
            self.actions_done[move] += 1
            success |= move & (np.linalg.norm(self.pos - goal, axis=1) <= self.cfg.goal_radius)
        self.steps[running] += 1
        terminated = success & running
        truncated = running & ~terminated & (self.steps >= self.max_chunk_steps)
        self.done |= terminated | truncated
        return StepResult(
            obs=self._obs(),
            reward=terminated.astype(np.float32),
            terminated=terminated,
            truncated=truncated,
            success=success,
            info={"episode_length": self.actions_done.copy(), "crashed": np.zeros(N, bool)},
        )

    def close(self) -> None:
        pass


def expert_actions(state: np.ndarray, horizon: int, *, gain: float = 1.0, angle: float = 0.0,
                   noise: float = 0.0, rng: Optional[np.random.Generator] = None,
                   speed: float = 0.1) -> np.ndarray:
    """A scripted expert chunk [N, H, 2] from states [N, 4], rolled forward in open loop.

    ``gain`` scales the velocity (< 1: a slow demonstrator), ``angle`` (radians) rotates it
    (a biased demonstrator), ``noise`` adds Gaussian noise per action.
    """
    rng = rng or np.random.default_rng(0)
    pos, goal = state[:, :2].astype(np.float32).copy(), state[:, 2:4]
    c, s = np.cos(angle), np.sin(angle)
    rot = np.asarray([[c, -s], [s, c]], np.float32)
    out = np.zeros((state.shape[0], horizon, 2), np.float32)
    for h in range(horizon):
        d = goal - pos
        a = d / np.maximum(np.abs(d).max(axis=1, keepdims=True), 1e-6)  # full speed on the larger axis
        a = a * np.minimum(1.0, np.linalg.norm(d, axis=1, keepdims=True) / speed)  # no overshoot
        a = gain * a @ rot.T + noise * rng.standard_normal(a.shape).astype(np.float32)
        out[:, h] = np.clip(a, -1.0, 1.0)
        pos = np.clip(pos + speed * out[:, h], -1.0, 1.0)
    return out
