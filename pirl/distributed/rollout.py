"""Rollout workers: batched policy inference in Ray actors, weights synced by version.

A :class:`RemotePolicy` stands in for the policy inside the rollout collector: ``prepare``
stays local (the buffer stores the trainer's own observation tensors), ``act`` and
``value`` split the batch over the workers' replicas and concatenate the answers.

Weights travel through the object store, never disk: :meth:`RolloutWorkerPool.publish`
``ray.put``-s CPU tensors (as raw-byte numpy arrays, :mod:`pirl.distributed.store`) once per
update and bumps a version; every request carries the
:class:`WeightRefs` and a worker loads weights only when its versions differ. So a restarted
worker (new actor, versions -1) picks up the current weights on its first request, and a
previous version's object is freed once the pool drops its ref. When part of the policy is
frozen (``requires_grad`` False, e.g. π0's VLM with ``set_trainable('expert')``) only the
first publish ships the full state (the *base*); later ones ship the trainable parameters and
the buffers (the *delta*), a tenth of π0's bytes. Frozen weights are taken to be unchanged
between publishes: after changing them otherwise (a checkpoint load) publish with ``full=True``.

Sampling noise: with one worker on the trainer's device type the trainer's generator state
is shipped with the request and the advanced state comes back, so the rollouts are the
local ones number for number (and the checkpointed generator stays the source of truth).
With several workers each shard gets a generator seeded from one draw of the trainer's
generator: reproducible and resumable, equal in distribution to local sampling.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, OutOfMemoryError, RayActorError
from torch import Tensor

from pirl.distributed.env import oom_error, respawn
from pirl.distributed.pipeline import cat_outputs
from pirl.distributed.store import from_store, stored_bytes, to_store


@dataclass(frozen=True)
class WeightRefs:
    """What every request carries: the full state published last (``base``) and the trainable part published
    since (``delta``, None right after a full publish), each behind a list so Ray passes the ref, not the object."""

    version: int
    base_version: int
    base: list
    delta: list


def _to(out: Any, device: torch.device | str) -> Any:
    """An ActOutput with every tensor on ``device``."""
    return replace(out, actions=out.actions.to(device), chain=out.chain.to(device), log_prob=out.log_prob.to(device),
                   value=None if out.value is None else out.value.to(device))


class RolloutWorker:
    """One policy replica behind a Ray actor (applied with ray.remote in the pool)."""

    def __init__(self, skeleton: Any, device: str, threads: int = 1) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        # skeleton is the pickled module (nested in a list so Ray hands us the ref, not a copy per call)
        self.policy = ray.get(skeleton[0]).to(self.device).eval()
        self.version = self.base_version = -1
        self.generator = torch.Generator(device=self.device)

    def _sync(self, w: WeightRefs) -> None:
        if w.base_version != self.base_version:
            self.policy.load_state_dict(from_store(ray.get(w.base[0]), copy=False))
            self.base_version, self.version = w.base_version, -1
        if w.version != self.version:
            if w.delta[0] is not None:
                unexpected = self.policy.load_state_dict(from_store(ray.get(w.delta[0]), copy=False), strict=False).unexpected_keys
                if unexpected:
                    raise KeyError(f"published weights this policy does not have: {unexpected[:5]}")
            self.version = w.version

    def _rng(self, rng: tuple[str, Any]) -> None:
        kind, value = rng
        if kind == "state":
            self.generator.set_state(value)
        else:
            self.generator.manual_seed(int(value))

    @torch.no_grad()
    def act(self, weights: WeightRefs, obs: dict[str, Tensor], sampler: Any,
            rng: tuple[str, Any]) -> tuple[Any, Tensor]:
        """(ActOutput on CPU, generator state after sampling)."""
        self._sync(weights)
        self._rng(rng)
        out = self.policy.act({k: v.to(self.device) for k, v in obs.items()}, sampler, generator=self.generator)
        return _to(out, "cpu"), self.generator.get_state()

    @torch.no_grad()
    def value(self, weights: WeightRefs, obs: dict[str, Tensor]) -> Tensor:
        self._sync(weights)
        return self.policy.value({k: v.to(self.device) for k, v in obs.items()}).cpu()

    def loaded_version(self) -> int:
        return self.version

    def device_name(self) -> str:
        """Where this replica's weights live, e.g. 'cuda:0 (NVIDIA H200)' (tests, monitoring)."""
        dev = next(self.policy.parameters()).device
        return f"{dev} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else str(dev)

    def pid(self) -> int:
        import os

        return os.getpid()

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


def _split(n: int, parts: int) -> list[slice]:
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class RolloutWorkerPool:
    """``workers`` policy replicas in Ray actors; ``gpus_per_worker`` > 0 puts each on a (share of a) GPU."""

    def __init__(self, policy: torch.nn.Module, workers: int = 1, *, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0, threads: int = 1, timeout_s: Optional[float] = None,
                 max_restarts: int = 100, actor_options: Optional[Callable[[int], dict]] = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised: call pirl.distributed.init_ray() (or ray.init) first")
        self.device = "cuda" if gpus_per_worker > 0 else "cpu"
        self.threads, self.timeout_s, self.max_restarts = threads, timeout_s, max_restarts
        self.actor_options = actor_options or (lambda i: {})
        # a CUDA module would unpickle only where CUDA exists: ship a CPU copy
        cpu = policy if next(policy.parameters()).device.type == "cpu" else copy.deepcopy(policy).cpu()
        self._skeleton = ray.put(cpu)
        self._cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0,
                               enable_task_events=False)(RolloutWorker)  # one call per chunk step: see EnvWorkers
        self.workers = [self._spawn(i) for i in range(workers)]
        self.restarts = 0
        """Rollout workers replaced after dying or hanging."""
        self.version = self.base_version = -1
        self._base: list = [None]
        self._delta: list = [None]
        self._frozen: Optional[frozenset[str]] = None
        self.last_publish_bytes = 0
        """Bytes the last :meth:`publish` put into the object store (monitoring, benchmarks)."""
        self.publish(policy)

    def _spawn(self, i: int):
        return self._cls.options(**self.actor_options(i)).remote([self._skeleton], self.device, self.threads)

    def publish(self, policy: torch.nn.Module, *, full: bool = False) -> int:
        """Makes ``policy``'s current weights the ones every later request runs with; returns the version.

        Ships the full state the first time, with ``full``, when nothing is frozen, or when the frozen set
        changed; else only what is not frozen (trainable parameters and buffers)."""
        frozen = frozenset(n for n, p in policy.named_parameters() if not p.requires_grad)
        rebase = full or not frozen or frozen != self._frozen
        # ray.put copies the arrays into the store before returning: they may alias the live weights
        state = to_store({k: v for k, v in policy.state_dict().items() if rebase or k not in frozen})
        # the previous version's objects are freed with their last refs
        if rebase:
            self._base, self._delta, self._frozen = [ray.put(state)], [None], frozen
            self.base_version += 1
        else:
            self._delta = [ray.put(state)]
        self.last_publish_bytes = stored_bytes(state)
        self.version += 1
        return self.version

    def _refs(self) -> WeightRefs:
        return WeightRefs(self.version, self.base_version, self._base, self._delta)

    def _call(self, method: str, shards: list[slice], make_args: Callable[[int], tuple]) -> list[Any]:
        """Calls ``method`` on worker i with make_args(i) for each shard; replaces dead workers and retries
        (requests are pure functions of their arguments, so a retry returns what the dead worker would have)."""
        refs = [getattr(self.workers[i], method).remote(self._refs(), *make_args(i)) for i in range(len(shards))]
        out = []
        for i, ref in enumerate(refs):
            while True:
                try:
                    out.append(ray.get(ref, timeout=self.timeout_s))
                    break
                except OutOfMemoryError:
                    raise oom_error("rollout worker", i, f"{method} on {shards[i].stop - shards[i].start} samples") from None
                except (RayActorError, GetTimeoutError) as e:
                    self._replace(i, e)
                    ref = getattr(self.workers[i], method).remote(self._refs(), *make_args(i))
        return out

    def _replace(self, i: int, err: BaseException) -> None:
        respawn("rollout worker", self.workers, i, self._spawn, err, self.restarts, self.max_restarts)
        self.restarts += 1

    def act(self, obs: dict[str, Tensor], sampler: Any, generator: Optional[torch.Generator]) -> Any:
        n = len(next(iter(obs.values())))
        cuts = _split(n, len(self.workers))
        cpu_obs = {k: v.cpu() for k, v in obs.items()}
        exact = len(cuts) == 1 and generator is not None and generator.device.type == self.device
        if exact:
            rngs = [("state", generator.get_state())]
        else:
            base = 0 if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
            rngs = [("seed", base + i) for i in range(len(cuts))]
        results = self._call("act", cuts, lambda i: ({k: v[cuts[i]] for k, v in cpu_obs.items()}, sampler, rngs[i]))
        if exact:
            generator.set_state(results[0][1])
        return cat_outputs([r[0] for r in results])

    def value(self, obs: dict[str, Tensor]) -> Tensor:
        n = len(next(iter(obs.values())))
        cuts = _split(n, len(self.workers))
        cpu_obs = {k: v.cpu() for k, v in obs.items()}
        return torch.cat(self._call("value", cuts, lambda i: ({k: v[cuts[i]] for k, v in cpu_obs.items()},)))

    def versions(self) -> list[int]:
        """The weight version each worker has loaded (tests, monitoring)."""
        return ray.get([w.loaded_version.remote() for w in self.workers])

    def pids(self) -> list[int]:
        return ray.get([w.pid.remote() for w in self.workers])

    def device_names(self) -> list[str]:
        """Each worker's weight device (see RolloutWorker.device_name)."""
        return ray.get([w.device_name.remote() for w in self.workers])

    def close(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers, self._base, self._delta = [], [None], [None]


class RemotePolicy:
    """What the rollout collector needs from a policy, with inference on a RolloutWorkerPool.

    ``prepare`` is the local policy's (observations are prepared once, in the trainer, on its
    device); ``act`` / ``value`` run remotely and come back on the trainer's device.
    """

    def __init__(self, policy: torch.nn.Module, pool: RolloutWorkerPool) -> None:
        self.local, self.pool = policy, pool

    def prepare(self, obs: dict[str, Any]) -> dict[str, Tensor]:
        return self.local.prepare(obs)

    def act(self, obs: dict[str, Tensor], sampler: Any, *, generator: Optional[torch.Generator] = None) -> Any:
        out = self.pool.act(obs, sampler, generator)
        dev = self.local.device()
        return out if dev.type == "cpu" else _to(out, dev)

    def value(self, obs: dict[str, Tensor]) -> Tensor:
        return self.pool.value(obs).to(self.local.device())
