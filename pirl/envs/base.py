"""The contract between environments and everything else.

An environment suite is a *vector of chunked environments*: each step executes the first
``chunk`` actions of a predicted chunk [H, D] in every sub-environment, sums their rewards,
and stops early at success or at the episode's end. Rollouts are episodic: ``reset``
takes one :class:`Context` (task, seed) per sub-environment, so a group of rollouts for
GRPO/LOOP shares a context, and evaluation uses fixed held-out seeds.

Environments know nothing about policies: they speak numpy arrays and strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


EVAL_SEED_START = 1_000_000_000
"""Training contexts draw reset seeds below this; held-out evaluation seeds are EVAL_SEED_START + i."""


def eval_contexts(num_tasks: int, per_task: int, tasks: Sequence[int] | None = None) -> list["Context"]:
    """The fixed held-out contexts: seeds EVAL_SEED_START + i, i < per_task, for every task (task-major)."""
    tasks = range(num_tasks) if tasks is None else tasks
    return [Context(int(t), EVAL_SEED_START + i) for t in tasks for i in range(per_task)]


@dataclass(frozen=True)
class Context:
    """What fixes an episode's start: the task index in the suite and the reset seed."""

    task: int
    seed: int


@dataclass
class StepResult:
    """One chunk step of a vector of N environments."""

    obs: dict[str, np.ndarray]
    """Next observations; after an episode ended, the final observation of that episode."""
    reward: np.ndarray
    """[N] float32: sum of the rewards of the executed actions."""
    terminated: np.ndarray
    """[N] bool: the episode ended for a reason of the task (success with auto-termination, failure)."""
    truncated: np.ndarray
    """[N] bool: the episode hit its time limit (bootstrap from the final observation's value)."""
    success: np.ndarray
    """[N] bool: the environment's own success flag at any point of this chunk."""
    info: dict[str, Any]
    """Extras: 'frames' (list of [N, h, w, 3] uint8 if recording), 'episode_length' [N], 'crashed' [N]."""


@runtime_checkable
class ChunkVectorEnv(Protocol):
    """A vector of N chunked environments. Observations are dicts of numpy arrays with a leading N:
    'state' float32 [N, S]; optional 'image' uint8 [N, h, w, 3] (upright); 'task' int64 [N];
    'instruction' array of N strings."""

    num_envs: int
    chunk: int
    """Actions executed per step (the first ``chunk`` of each predicted [H, D] chunk)."""
    action_dim: int
    state_dim: int
    max_chunk_steps: int
    """Chunk steps after which every episode is truncated."""
    task_names: Sequence[str]
    instructions: Sequence[str]
    """One English instruction per task index."""

    def reset(self, contexts: Sequence[Context]) -> dict[str, np.ndarray]:
        """Starts a new episode in every sub-environment from its context."""
        ...

    def step(self, actions: np.ndarray) -> StepResult:
        """Executes actions [N, H, D] (H >= chunk). Sub-environments whose episode already ended
        ignore their actions and report reward 0, terminated/truncated False."""
        ...

    def close(self) -> None: ...
