"""The Ray side of `pirl train runner.kind=ray`: which actors exist, where they go, and their lifetimes.

Roles: env workers (simulators, :class:`RayVectorEnv`), rollout workers (policy replicas,
:class:`RolloutWorkerPool`; 0 = inference in the trainer) and learner ranks
(:class:`LearnerGroup`, ddp or fsdp, gloo or nccl; 1 = the trainer's own single-process update; on a
GPU each learner rank asks Ray for ``learner_gpus``). Placement:

- ``disaggregated``: every role asks Ray for its own resources; env workers are SPREAD over
  nodes, rollout workers go wherever their ``num_gpus`` fit.
- ``collocated``: one STRICT_PACK placement group holds a bundle per actor, so every role
  shares one node (and, with ``rollout_gpus`` < 1, one GPU).

``pipelined`` (overlap inference on one half of the env workers with simulation of the
other) is orthogonal and lives in the collector.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pirl.distributed.env import RayVectorEnv, init_ray
from pirl.errors import InputError

Placement = Literal["disaggregated", "collocated"]


class RayRunner:
    """Starts (or joins) Ray, reserves a placement group when collocated, builds each role's actors."""

    def __init__(self, *, address: Optional[str] = None, placement: Placement = "disaggregated",
                 env_workers: int = 2, rollout_workers: int = 0, learner_processes: int = 1,
                 learner_strategy: Literal["ddp", "fsdp"] = "ddp",
                 learner_backend: Literal["auto", "nccl", "gloo"] = "auto", learner_gpus: float = 0.0,
                 worker_cpus: float = 1.0, rollout_gpus: float = 0.0,
                 threads: int = 1) -> None:
        """``learner_gpus``: GPUs per learner rank, > 0 exactly when the policy is on CUDA (>= 1 for nccl)."""
        if placement not in ("disaggregated", "collocated"):
            raise ValueError(f"placement must be 'disaggregated' or 'collocated', got {placement!r}")
        self.placement, self.worker_cpus, self.rollout_gpus, self.threads = placement, worker_cpus, rollout_gpus, threads
        self.learner_strategy, self.learner_backend = learner_strategy, learner_backend
        self.learner_gpus = learner_gpus
        self.counts = {"env": env_workers, "rollout": rollout_workers, "learner": max(learner_processes - 1, 0)}
        self.started = init_ray(address)
        if address is None and self.started:
            try:
                self._check_fits(ray.cluster_resources())
            except BaseException:
                ray.shutdown()
                raise
        elif address is not None:
            self._notice_wait(address, ray.available_resources())
        self.pg = None
        if placement == "collocated":
            def bundle(gpus: float) -> dict[str, float]:
                return {"CPU": worker_cpus, **({"GPU": gpus} if gpus else {})}

            bundles = ([bundle(0)] * env_workers + [bundle(rollout_gpus)] * rollout_workers
                       + [bundle(learner_gpus)] * self.counts["learner"])
            self.pg = placement_group(bundles, strategy="STRICT_PACK")
            ray.get(self.pg.ready(), timeout=300)
        self.env: Optional[RayVectorEnv] = None
        self.pool = None
        self.learners = None

    def _shortfall(self, have: dict[str, float]) -> Optional[tuple[str, float, str]]:
        """The first resource (name, amount asked, who asks) the actors need more of than ``have`` holds, or None."""
        n = self.counts
        roles = [("env worker(s)", n["env"], {"CPU": self.worker_cpus}),
                 ("rollout worker(s)", n["rollout"], {"CPU": self.worker_cpus, "GPU": self.rollout_gpus}),
                 ("learner rank(s)", n["learner"], {"CPU": self.worker_cpus, "GPU": self.learner_gpus})]
        for res in ("CPU", "GPU"):
            asking = [(name, k, each[res]) for name, k, each in roles if k and each.get(res)]
            need = sum(k * amount for _, k, amount in asking)
            if need > have.get(res, 0.0) + 1e-9:
                return res, need, ", ".join(f"{k} {name}" for name, k, _ in asking)
        return None

    def _check_fits(self, have: dict[str, float]) -> None:
        """A Ray started here cannot grow: actors asking for more CPUs / GPUs than it has would wait forever."""
        short = self._shortfall(have)
        if short is not None:
            res, need, who = short
            fix = ("lower runner.worker_cpus (e.g. 0.5 packs two actors per core) or the actor counts" if res == "CPU"
                   else "lower runner.rollout_gpus or runner.learner_gpus (a fraction shares a GPU; rollout_gpus=0 "
                        "infers on the CPU) or the actor counts")
            raise InputError(f"runner.kind=ray: {who} need {need:g} {res}s, and the Ray started here has "
                             f"{have.get(res, 0.0):g}; they would wait forever: {fix}")

    def _notice_wait(self, address: str, free: dict[str, float]) -> None:
        """A joined cluster may autoscale or free resources later, so a shortfall is said, not refused."""
        short = self._shortfall(free)
        if short is not None:
            res, need, who = short
            print(f"runner.address={address}: {who} ask for {need:g} {res}s and the cluster has {free.get(res, 0.0):g} "
                  "free (other jobs hold the rest); the run waits until Ray can place them (Ctrl-C stops it)",
                  flush=True)

    def options(self, role: str) -> Callable[[int], dict[str, Any]]:
        """Ray actor options of the i-th actor of ``role`` ('env', 'rollout', 'learner')."""
        if self.pg is None:
            return lambda i: {}
        first = {"env": 0, "rollout": self.counts["env"], "learner": self.counts["env"] + self.counts["rollout"]}[role]
        return lambda i: {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=self.pg, placement_group_bundle_index=first + i)}

    def make_env(self, cfg: Any, num_envs: int) -> RayVectorEnv:
        self.env = RayVectorEnv(cfg, num_envs, self.counts["env"], cpus_per_worker=self.worker_cpus,
                                actor_options=self.options("env"))
        return self.env

    def rollout_policy(self, policy: torch.nn.Module) -> Any:
        """What the collector should call for actions: ``policy`` itself, or a proxy over rollout workers."""
        if not self.counts["rollout"]:
            return policy
        from pirl.distributed.rollout import RemotePolicy, RolloutWorkerPool

        self.pool = RolloutWorkerPool(policy, self.counts["rollout"], gpus_per_worker=self.rollout_gpus,
                                      cpus_per_worker=self.worker_cpus, threads=self.threads,
                                      actor_options=self.options("rollout"))
        return RemotePolicy(policy, self.pool)

    def updater(self, policy: torch.nn.Module, ppo: Any, optim: Any, seed: int) -> Any:
        """The PPO updater: the trainer's own, or rank 0 of a learner group over Ray actors (ddp or fsdp; gloo or
        nccl)."""
        if not self.counts["learner"]:
            from pirl.algorithms import PPOUpdater

            return PPOUpdater(policy, ppo, optim, seed=seed)
        from pirl.distributed.learner import LearnerGroup

        self.learners = LearnerGroup(policy, ppo, optim, world=self.counts["learner"] + 1, seed=seed,
                                     strategy=self.learner_strategy, backend=self.learner_backend, threads=self.threads,
                                     cpus_per_rank=self.worker_cpus, gpus_per_rank=self.learner_gpus,
                                     actor_options=self.options("learner"))
        return self.learners

    def weights_changed(self, policy: torch.nn.Module) -> None:
        """After an update or a checkpoint load: rollout workers use these weights from their next request on
        (learner ranks need nothing: they took the same step, and under fsdp the group has already gathered
        ``policy``'s new weights)."""
        if self.pool is not None:
            self.pool.publish(policy)

    def resumed(self, policy: torch.nn.Module) -> None:
        if self.pool is not None:  # a checkpoint load changes frozen weights too
            self.pool.publish(policy, full=True)
        if self.learners is not None:
            self.learners.load()

    @property
    def restarts(self) -> dict[str, int]:
        out = {}
        if self.env is not None:
            out["env_worker_restarts"] = self.env.restarts
        if self.pool is not None:
            out["rollout_worker_restarts"] = self.pool.restarts
        return out

    def close(self) -> None:
        for part in (self.env, self.pool, self.learners):
            if part is not None:
                part.close()
        if self.pg is not None:
            remove_placement_group(self.pg)
        if self.started:
            ray.shutdown()
