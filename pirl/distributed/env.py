"""A ChunkVectorEnv whose sub-environments live in Ray actors (env workers).

Worker i owns ``make_env(cfg, n_i)`` for a contiguous slice of the N sub-environments.
``reset``/``step`` scatter contexts/actions to the workers and gather their StepResults
in order, so the result equals the single-process env's for the same contexts and actions.

Fault tolerance: a worker that dies (or exceeds ``step_timeout_s``) is replaced by a fresh
actor. The episodes it was running are reported as ended with ``info["crashed"]`` True
(terminated, reward 0), its slice ignores actions until the next ``reset``, and
``restarts`` counts replacements. The collector drops crashed episodes from the batch.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import replace
from typing import Any, Callable, Optional, Sequence

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, OutOfMemoryError, RayActorError, RayTaskError

from pirl.envs.base import Context, StepResult
from pirl.envs.registry import EnvConfig, make_env
from pirl.errors import InputError, OutOfMemory, UserError

log = logging.getLogger(__name__)


def init_ray(address: Optional[str] = None, *, num_cpus: Optional[int] = None,
             object_store_mb: Optional[int] = None) -> bool:
    """Connects to ``address`` (a cluster) or starts a local Ray; returns True if this call started it.

    Workers must be able to ``import pirl``: on a cluster install it on every node (or pass a
    runtime_env yourself before calling this).
    """
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if address is None:
        # "local", not None: None joins whatever Ray another driver on this machine started (its CPUs are
        # taken, so our actors would wait forever) and shutdown() would leave it running
        address = "local"
        kw["num_cpus"] = num_cpus
        if object_store_mb:
            kw["object_store_memory"] = object_store_mb * 2**20
    else:
        _check_reachable(address)
    try:
        ray.init(address=address, **kw)
    except ConnectionError as e:  # "auto" with no cluster running on this machine
        raise InputError(f"runner.address={address}: {e}; start a cluster with `ray start --head`, or leave "
                         "runner.address unset to start a Ray here") from e
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A ``host:port`` that does not answer fails now: Ray itself retries such an address for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", "local", a ray:// client address: Ray resolves these itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()  # [::1]:6379 too
    except OSError as e:
        raise InputError(f"runner.address={address}: no Ray cluster answers there ({e}); start one with "
                         f"`ray start --head --port={port}` on {host}, or leave runner.address unset to start a Ray "
                         "here") from e


class EnvWorker:
    """One env worker: a local ``make_env`` vector behind a Ray actor (applied with ray.remote below)."""

    def __init__(self, cfg: EnvConfig, num_envs: int, record: bool = False) -> None:
        # the worker is the process: its share of sub-environments steps in it (env.vector=async here would
        # start a further simulator process per sub-environment)
        self.error: Optional[UserError] = None
        try:
            self.env = make_env(replace(cfg, vector="sync"), num_envs, record=record)
        except UserError as e:  # missing assets, an unknown task: the driver says it in one line (``spec``)
            self.env, self.error = None, e

    def spec(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        e = self.env
        return {"chunk": e.chunk, "action_dim": e.action_dim, "state_dim": e.state_dim,
                "max_chunk_steps": e.max_chunk_steps, "task_names": tuple(e.task_names),
                "instructions": tuple(e.instructions)}

    def reset(self, contexts: Sequence[Context]) -> dict[str, np.ndarray]:
        return self.env.reset(contexts)

    def step(self, actions: np.ndarray) -> StepResult:
        return self.env.step(actions)

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def pid(self) -> int:
        import os

        return os.getpid()

    def close(self) -> None:
        if self.env is not None:
            self.env.close()


def respawn(role: str, actors: list, i: int, spawn: Callable[[int], Any], err: BaseException, restarts: int,
            max_restarts: int) -> None:
    """Puts a fresh actor in place of a dead or hung ``actors[i]``; raises once ``max_restarts`` are spent."""
    if restarts >= max_restarts:
        raise RuntimeError(f"{role} {i} failed ({type(err).__name__}) after {restarts} restarts "
                           f"(max_restarts={max_restarts})") from err
    log.warning("%s %d failed (%s: %s); starting a new one", role, i, type(err).__name__, err)
    try:
        ray.kill(actors[i], no_restart=True)  # a hung actor would otherwise keep its resources
    except Exception:  # noqa: BLE001 - already gone
        pass
    actors[i] = spawn(i)


def oom_error(role: str, i: int, held: str) -> OutOfMemory:
    """The one-line error for a worker that Ray's memory monitor killed: respawning it into the same memory
    pressure would only be killed again, so the run stops and says what to lower."""
    return OutOfMemory(f"{role} {i} was killed by Ray's memory monitor: this machine ran out of memory ({held}); "
                       "use fewer sub-environments or a smaller batch, or stop other jobs on this machine")


def _split(n: int, parts: int) -> list[int]:
    return [len(a) for a in np.array_split(np.arange(n), parts)]


def _cat_info(infos: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Concatenates per-worker info dicts: [n_i, ...] arrays along axis 0; lists of arrays ('frames')
    element-wise, shorter lists padded with their last entry (workers executed different action counts)."""
    out: dict[str, Any] = {}
    keys = [k for info in infos for k in info]
    for key in dict.fromkeys(keys):
        ref = next(info[key] for info in infos if key in info)
        if isinstance(ref, np.ndarray) and ref.ndim >= 1:
            out[key] = np.concatenate([
                info[key] if key in info else np.zeros((n, *ref.shape[1:]), ref.dtype)
                for info, n in zip(infos, sizes)
            ])
        elif isinstance(ref, list) and ref and isinstance(ref[0], np.ndarray):
            length = max(len(info.get(key, [])) for info in infos)
            cols = []
            for info, n in zip(infos, sizes):
                seq = info.get(key) or [np.zeros((n, *ref[0].shape[1:]), ref[0].dtype)]
                cols.append(seq + [seq[-1]] * (length - len(seq)))
            out[key] = [np.concatenate([c[t] for c in cols]) for t in range(length)]
        else:
            out[key] = ref  # scalars: workers agree
    return out


def cat_results(results: list[StepResult], sizes: list[int]) -> StepResult:
    """One StepResult from per-worker results, in worker order."""
    return StepResult(
        obs={k: np.concatenate([r.obs[k] for r in results]) for k in results[0].obs},
        reward=np.concatenate([r.reward for r in results]),
        terminated=np.concatenate([r.terminated for r in results]),
        truncated=np.concatenate([r.truncated for r in results]),
        success=np.concatenate([r.success for r in results]),
        info=_cat_info([r.info for r in results], sizes),
    )


class RayVectorEnv:
    """N sub-environments in ``workers`` Ray actors; implements :class:`pirl.envs.base.ChunkVectorEnv`."""

    def __init__(self, cfg: EnvConfig, num_envs: int, workers: int = 2, *, record: bool = False,
                 cpus_per_worker: float = 1.0, step_timeout_s: Optional[float] = None,
                 max_restarts: int = 100, actor_options: Optional[Callable[[int], dict]] = None) -> None:
        if not 1 <= workers <= num_envs:
            raise ValueError(f"workers must lie in [1, num_envs={num_envs}], got {workers}")
        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised: call pirl.distributed.init_ray() (or ray.init) first")
        self.cfg, self.num_envs, self.record = cfg, num_envs, record
        self.sizes = _split(num_envs, workers)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.step_timeout_s, self.max_restarts = step_timeout_s, max_restarts
        # SPREAD: env workers are CPU-bound simulators; packing them onto one node wastes the others
        self.actor_options = actor_options or (lambda i: {})  # e.g. a placement-group bundle per worker
        # no Ray task events: one call per worker per chunk step would pile up event records in the GCS
        # (measured by bench/bench_ray_gcs.py)
        self._actor_cls = ray.remote(num_cpus=cpus_per_worker, max_restarts=0, scheduling_strategy="SPREAD",
                                     enable_task_events=False)(EnvWorker)
        self.workers = [self._spawn(i) for i in range(workers)]
        spec = self._first_spec()  # waits until every worker has built its envs
        self.chunk, self.action_dim, self.state_dim = spec["chunk"], spec["action_dim"], spec["state_dim"]
        self.max_chunk_steps = spec["max_chunk_steps"]
        self.task_names, self.instructions = spec["task_names"], spec["instructions"]
        self.restarts = 0
        """Env workers replaced after dying or hanging since construction."""
        self._contexts: list[list[Context]] = [[] for _ in range(workers)]
        self._last_obs: list[Optional[dict[str, np.ndarray]]] = [None] * workers
        self._ended = [np.ones(n, bool) for n in self.sizes]
        self._length = [np.zeros(n, np.int64) for n in self.sizes]
        self._down = [False] * workers  # replaced mid-episode: ignore actions until the next reset
        self._pending: dict[int, Any] = {}

    # -- workers -----------------------------------------------------------------------------
    def _first_spec(self) -> dict[str, Any]:
        specs, errors = [], []
        for i, ref in enumerate([w.spec.remote() for w in self.workers]):  # each one read: no unread error later
            try:
                specs.append(ray.get(ref))
            except RayTaskError as e:
                errors.append(e)
            except OutOfMemoryError:
                self.close()
                raise self._oom(i) from None
        if errors:
            self.close()
            cause = errors[0].cause
            if isinstance(cause, UserError):  # the user's mistake, not the worker's failure: one line, no traceback
                raise cause from None
            raise errors[0]
        return specs[0]

    def _spawn(self, i: int):
        return self._actor_cls.options(**self.actor_options(i)).remote(self.cfg, self.sizes[i], self.record)

    def _replace(self, i: int, err: BaseException) -> None:
        respawn("env worker", self.workers, i, self._spawn, err, self.restarts, self.max_restarts)
        self.restarts += 1

    def _get(self, ref: Any, i: int) -> Any:
        try:
            return ray.get(ref, timeout=self.step_timeout_s)
        except OutOfMemoryError:
            raise self._oom(i) from None

    def _oom(self, i: int) -> OutOfMemory:
        return oom_error("env worker", i, f"{self.sizes[i]} sub-environments in that worker, {self.num_envs} on "
                         f"{len(self.sizes)} workers")

    def worker_slice(self, i: int) -> slice:
        """The sub-environments of worker i."""
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def stages(self, n: int = 2) -> list[list[int]]:
        """Workers split into ``n`` contiguous stages (for pipelining); needs >= n workers."""
        if len(self.workers) < n:
            raise ValueError(f"{n} pipeline stages need >= {n} env workers, got {len(self.workers)}")
        return [list(map(int, a)) for a in np.array_split(np.arange(len(self.workers)), n)]

    def stage_slice(self, workers: Sequence[int]) -> slice:
        """The sub-environments of a contiguous run of workers."""
        return slice(int(self.offsets[workers[0]]), int(self.offsets[workers[-1] + 1]))

    # -- ChunkVectorEnv ----------------------------------------------------------------------
    def reset(self, contexts: Sequence[Context]) -> dict[str, np.ndarray]:
        if len(contexts) != self.num_envs:
            raise ValueError(f"reset got {len(contexts)} contexts for {self.num_envs} sub-environments (one each)")
        self.drain()
        parts = [list(contexts[self.worker_slice(i)]) for i in range(len(self.workers))]
        refs = [w.reset.remote(p) for w, p in zip(self.workers, parts)]
        obs = []
        for i, ref in enumerate(refs):
            while True:
                try:
                    obs.append(self._get(ref, i))
                    break
                except (RayActorError, GetTimeoutError) as e:  # nothing ran yet: a fresh worker resets instead
                    self._replace(i, e)
                    ref = self.workers[i].reset.remote(parts[i])
            self._contexts[i], self._last_obs[i] = parts[i], obs[-1]
            self._ended[i] = np.zeros(self.sizes[i], bool)  # fresh arrays: Ray hands out read-only ones
            self._length[i] = np.zeros(self.sizes[i], np.int64)
            self._down[i] = False
        return {k: np.concatenate([o[k] for o in obs]) for k in obs[0]}

    def step(self, actions: np.ndarray) -> StepResult:
        all_workers = list(range(len(self.workers)))
        self.step_async(actions, all_workers)
        return self.step_wait(all_workers)

    def step_async(self, actions: np.ndarray, workers: Sequence[int]) -> None:
        """Sends actions [n, H, D] for the sub-environments of ``workers`` (contiguous) without waiting."""
        actions = np.asarray(actions, dtype=np.float32)
        s = self.stage_slice(workers)
        if actions.ndim != 3 or actions.shape[0] != s.stop - s.start:
            raise ValueError(f"actions must be [n={s.stop - s.start}, H, D] for workers {list(workers)}, "
                             f"got {actions.shape}")
        for i in workers:
            if i in self._pending:
                raise RuntimeError(f"env worker {i} already has a step in flight")
            w = self.worker_slice(i)
            part = actions[w.start - s.start : w.stop - s.start]
            self._pending[i] = None if self._down[i] else self.workers[i].step.remote(part)

    def step_wait(self, workers: Sequence[int]) -> StepResult:
        """Gathers the steps sent by :meth:`step_async` for ``workers`` into one StepResult."""
        results = []
        for i in workers:
            ref = self._pending.pop(i)
            res = None
            if ref is not None:
                try:
                    res = self._get(ref, i)
                except (RayActorError, GetTimeoutError) as e:
                    self._replace(i, e)
                    res = self._crashed_result(i)
                    self._down[i] = True
            else:
                res = self._ended_result(i)
            self._ended[i] = self._ended[i] | res.terminated | res.truncated
            self._length[i] = np.asarray(res.info.get("episode_length", self._length[i]))
            self._last_obs[i] = res.obs
            results.append(res)
        return cat_results(results, [self.sizes[i] for i in workers])

    def _ended_result(self, i: int, crashed: Optional[np.ndarray] = None) -> StepResult:
        n = self.sizes[i]
        z = np.zeros(n, bool)
        return StepResult(
            obs=self._last_obs[i], reward=np.zeros(n, np.float32),
            terminated=z if crashed is None else crashed.copy(), truncated=z.copy(), success=z.copy(),
            info={"episode_length": self._length[i].copy(), "crashed": z.copy() if crashed is None else crashed},
        )

    def _crashed_result(self, i: int) -> StepResult:
        """The running episodes of a dead worker end here, terminated and flagged crashed."""
        return self._ended_result(i, crashed=~self._ended[i])

    def drain(self) -> None:
        """Waits for steps in flight and discards them (a pipelined collector stops with one step ahead)."""
        for i in list(self._pending):
            ref = self._pending.pop(i)
            if ref is not None:
                try:
                    self._get(ref, i)
                except (RayActorError, GetTimeoutError) as e:
                    self._replace(i, e)

    def pids(self) -> list[int]:
        """Process ids of the env workers (tests, monitoring)."""
        return ray.get([w.pid.remote() for w in self.workers])

    def close(self) -> None:
        for w in self.workers:
            try:
                ray.get(w.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - a dead worker has nothing to close
                pass
            ray.kill(w, no_restart=True)
        self.workers, self._pending = [], {}
