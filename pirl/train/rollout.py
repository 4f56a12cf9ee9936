"""Rollout collection: wires a ChunkVectorEnv and a policy into RolloutBuffers.

The collector is the one place that knows both sides: it chooses contexts (G sub-envs
share one (task, seed) context, N = groups x G), resets, steps until every episode has
ended, stores what the algorithms need, and bootstraps truncated episodes from the value
of their final observation. With a group filter on, it keeps rolling out fresh contexts
until enough informative groups are collected (RIPT-VLA dynamic sampling), within a
bounded number of tries; groups cut short by a crashed simulator are re-collected the same way.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from pirl.algorithms.advantages import filter_groups_by_success, filter_uniform_groups
from pirl.algorithms.buffer import RolloutBuffer
from pirl.envs.base import EVAL_SEED_START, ChunkVectorEnv, Context, StepResult
from pirl.errors import NonFiniteError
from pirl.flow import SamplerConfig

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = EVAL_SEED_START
Obs = dict[str, Tensor]


def actions_for_env(actions: Tensor) -> np.ndarray:
    """A policy's action chunk as a numpy array for the simulator; raises :class:`~pirl.errors.NonFiniteError` on
    NaN / inf (a simulator fed NaN goes on with NaN states, and the failure would surface far from its cause)."""
    out = actions.detach().cpu().numpy()
    bad = ~np.isfinite(out)
    if bad.any():
        raise NonFiniteError(f"the policy produced non-finite actions (NaN/inf) in {int(bad.sum())} of {out.size} elements")
    return out


TASK_SAMPLING = ("uniform", "adaptive", "failing")
"""How a multi-task collector spreads its contexts over the tasks (CollectorConfig.task_sampling)."""


@dataclass(frozen=True)
class CollectorConfig:
    """What one rollout batch is made of."""

    num_groups: int
    """Contexts per environment batch; the env must have num_groups x group_size sub-envs."""
    group_size: int = 1
    """G, rollouts per context (GRPO / LOOP need >= 2; 1 for PPO with a critic)."""
    tasks: Optional[tuple[int, ...]] = None
    """Task indices to sample contexts from (uniformly); None = every task of the env."""
    group_filter: Literal["none", "nonuniform", "success_range"] = "none"
    """none; nonuniform: drop groups whose outcomes are all equal (RIPT-VLA); success_range: keep groups
    whose mean success lies in success_range (πRL)."""
    success_range: tuple[float, float] = (0.1, 0.9)
    """[lo, hi] for the success_range filter."""
    filter_on: Literal["success", "return"] = "success"
    """What the nonuniform filter compares within a group."""
    min_groups: Optional[int] = None
    """With a filter: keep rolling out until this many informative groups are kept; None = num_groups."""
    max_tries: int = 4
    """At most this many environment batches per collect() call: more than one only with a filter, or when
    crashed episodes' groups must be re-collected."""
    seed: int = 0
    """Seeds the context sampler (tasks and reset seeds) and the policy's sampling noise."""
    task_sampling: Literal["uniform", "adaptive", "failing"] = "uniform"
    """uniform; adaptive: draw tasks with weight floor + 4 s (1 - s), s = the task's running rollout success,
    so the batch goes to tasks still being learned instead of solved (or hopeless) ones; failing: weight
    floor + (1 - s), so the tasks that succeed least get the most rollouts (a weak task whose few successes are
    its only signal gets more of them)."""
    adaptive_floor: float = 0.1
    """adaptive / failing: every task keeps at least this weight (solved tasks are still rehearsed)."""
    adaptive_rate: float = 0.3
    """adaptive / failing: weight of the newest batch in the running per-task success."""

    def __post_init__(self) -> None:
        if self.task_sampling not in TASK_SAMPLING:
            raise ValueError(f"task_sampling must be one of {', '.join(TASK_SAMPLING)}, got {self.task_sampling!r}")
        if not 0.0 < self.adaptive_floor or not 0.0 < self.adaptive_rate <= 1.0:
            raise ValueError(f"need adaptive_floor > 0 and 0 < adaptive_rate <= 1, got {self.adaptive_floor}, "
                             f"{self.adaptive_rate}")
        if self.num_groups < 1 or self.group_size < 1:
            raise ValueError(f"need num_groups >= 1 and group_size >= 1, got {self.num_groups}, {self.group_size}")
        if self.group_filter not in ("none", "nonuniform", "success_range"):
            raise ValueError(f"group_filter must be 'none', 'nonuniform' or 'success_range', got {self.group_filter!r}")
        lo, hi = self.success_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"success_range must satisfy 0 <= lo <= hi <= 1, got {self.success_range}")
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {self.max_tries}")
        if self.min_groups is not None and self.min_groups < 1:
            raise ValueError(f"min_groups must be >= 1 or None, got {self.min_groups}")

    @property
    def num_envs(self) -> int:
        return self.num_groups * self.group_size


@dataclass
class Rollout:
    """One collect() call: buffers (one per try that kept a group) and rollout metrics."""

    buffers: list[RolloutBuffer]
    metrics: dict[str, float]


class RolloutCollector:
    """Collects episodic rollouts of ``policy`` in ``env`` (policy: prepare / act / value)."""

    def __init__(self, env: ChunkVectorEnv, policy, sampler: SamplerConfig, cfg: CollectorConfig,
                 device: torch.device | str = "cpu") -> None:
        if env.num_envs != cfg.num_envs:
            raise ValueError(f"env has {env.num_envs} sub-envs; collector needs num_groups x group_size = {cfg.num_envs}")
        tasks = cfg.tasks if cfg.tasks is not None else tuple(range(len(env.task_names)))
        bad = [t for t in tasks if not 0 <= t < len(env.task_names)]
        if bad or not tasks:
            raise ValueError(f"tasks {bad or tasks} not in the env's {len(env.task_names)} task(s)")
        self.env, self.policy, self.sampler, self.cfg, self.device = env, policy, sampler, cfg, torch.device(device)
        self.tasks = tasks
        self.rng = np.random.default_rng(cfg.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.timing = {"inference_s": 0.0, "sim_s": 0.0}
        """Seconds of the last collect in policy inference and in env.step (the sequential schedule)."""
        self.next_group_id = 0
        self.next_context_id = 0
        # running rollout success per task (adaptive / failing task sampling); 0.5 = no information yet
        self.task_success = np.full(len(env.task_names), 0.5)

    def task_probs(self) -> Optional[np.ndarray]:
        """Probabilities of drawing each task in ``self.tasks`` (None = uniform)."""
        if self.cfg.task_sampling == "uniform":
            return None
        s = self.task_success[np.asarray(self.tasks)]
        spread = 4.0 * s * (1.0 - s) if self.cfg.task_sampling == "adaptive" else 1.0 - s
        w = self.cfg.adaptive_floor + spread
        return w / w.sum()

    def _update_task_success(self, contexts: Sequence[Context], ep: dict[str, np.ndarray]) -> None:
        task = np.asarray([c.task for c in contexts])
        ok = ~ep["crashed"]
        for t in np.unique(task[ok]):
            rate = float(ep["success"][ok & (task == t)].mean())
            self.task_success[t] += self.cfg.adaptive_rate * (rate - self.task_success[t])

    def sample_contexts(self) -> tuple[list[Context], np.ndarray, np.ndarray]:
        """num_groups fresh contexts, each repeated G times: (contexts [N], group ids [N], context ids [N])."""
        G, n = self.cfg.group_size, self.cfg.num_groups
        tasks, seeds = self.draw_starts(n)
        contexts = [Context(int(t), int(s)) for t, s in zip(tasks, seeds) for _ in range(G)]
        groups = np.repeat(np.arange(self.next_group_id, self.next_group_id + n), G)
        ctx_ids = np.repeat(np.arange(self.next_context_id, self.next_context_id + n), G)
        self.next_group_id += n
        self.next_context_id += n
        return contexts, groups, ctx_ids

    def draw_starts(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The task and reset seed of ``n`` fresh contexts (tasks by ``task_probs``, seeds below the held-out ones)."""
        tasks = self.rng.choice(np.asarray(self.tasks), size=n, p=self.task_probs())
        return tasks, self.rng.integers(0, EVAL_SEED_OFFSET, size=n)

    def run_episodes(self, contexts: Sequence[Context], sampler: SamplerConfig,
                     buffer: Optional[RolloutBuffer] = None,
                     generator: Optional[torch.Generator] = None) -> dict[str, np.ndarray]:
        """Resets to ``contexts`` and steps until every episode ended; fills ``buffer`` if given.

        Returns per-env arrays: success, return, length (actions executed), chunk_steps.
        """
        env, policy, N = self.env, self.policy, self.env.num_envs
        generator = generator or self.generator
        obs_np = env.reset(contexts)
        running = np.ones(N, bool)
        success = np.zeros(N, bool)
        crashed = np.zeros(N, bool)
        ret = np.zeros(N, np.float64)
        chunk_steps = np.zeros(N, np.int64)
        length = np.zeros(N, np.int64)
        steps = self.steps(obs_np, sampler, generator)
        try:
            for obs, out, res in steps:
                reward = np.where(running, res.reward, 0.0).astype(np.float32)
                if not np.isfinite(reward).all():
                    raise ValueError(f"the environment returned non-finite rewards: {reward[~np.isfinite(reward)][:4]}")
                terminated, truncated = res.terminated & running, res.truncated & running
                step_success = res.success & running
                crashed |= np.asarray(res.info.get("crashed", False), bool) & running
                if buffer is not None:
                    t = torch.from_numpy
                    buffer.add(obs, out.chain, out.log_prob, out.value, t(reward), t(terminated), t(truncated),
                               t(running.copy()), t(step_success))
                    if truncated.any() and out.value is not None:
                        # bootstrap: V(final observation) of the episodes cut by the time limit
                        idx = np.flatnonzero(truncated)
                        final = policy.prepare({k: v[idx] for k, v in res.obs.items()})
                        with torch.no_grad():
                            buffer.set_bootstrap(torch.from_numpy(idx), policy.value(final))
                ret += reward
                success |= step_success
                chunk_steps += running
                length = np.asarray(res.info.get("episode_length", chunk_steps * env.chunk))
                running &= ~(terminated | truncated)
                if not running.any():
                    break
        finally:
            steps.close()  # a pipelined stepper waits for its steps in flight
        if running.any():
            raise RuntimeError(
                f"{int(running.sum())} episode(s) neither terminated nor truncated within max_chunk_steps="
                f"{env.max_chunk_steps}; the env must truncate at its time limit"
            )
        return {"success": success, "return": ret, "length": length, "chunk_steps": chunk_steps, "crashed": crashed}

    def steps(self, obs_np: dict[str, np.ndarray], sampler: SamplerConfig,
              generator: torch.Generator) -> Iterator[tuple[Obs, Any, StepResult]]:
        """(prepared obs, policy output, step result) for every chunk step of all N envs, until closed.

        The sequential schedule: act on all N, then step all N. PipelinedCollector overrides it.
        """
        for _ in range(self.env.max_chunk_steps):
            t0 = time.perf_counter()
            obs = self.policy.prepare(obs_np)
            out = self.policy.act(obs, sampler, generator=generator)
            actions = actions_for_env(out.actions)  # waits for the device: inference ends here
            t1 = time.perf_counter()
            res = self.env.step(actions)
            self.timing["inference_s"] += t1 - t0
            self.timing["sim_s"] += time.perf_counter() - t1
            yield obs, out, res
            obs_np = res.obs

    @torch.no_grad()
    def collect(self) -> Rollout:
        """Rollouts for one update: buffers of kept groups and ``rollout/*`` / ``perf/*`` metrics."""
        cfg, N = self.cfg, self.cfg.num_envs
        filtering = cfg.group_filter != "none"
        target = (cfg.min_groups or cfg.num_groups) if filtering else cfg.num_groups
        start = time.perf_counter()
        self.timing = {"inference_s": 0.0, "sim_s": 0.0}
        buffers, episodes, episode_tasks = [], [], []
        kept_groups = dropped = tries = crashed_groups = 0
        while True:
            tries += 1
            contexts, groups, ctx_ids = self.sample_contexts()
            buf = RolloutBuffer(self.env.max_chunk_steps, N, self.device)
            buf.set_ids(torch.tensor([c.task for c in contexts]), torch.from_numpy(groups), torch.from_numpy(ctx_ids))
            ep = self.run_episodes(contexts, self.sampler, buf)
            episodes.append(ep)
            episode_tasks.append(np.asarray([c.task for c in contexts]))
            self._update_task_success(contexts, ep)
            # a crashed env worker cut these episodes short: drop their whole groups (a partial group would
            # bias group baselines); like uninformative groups, they are replaced by the next try's fresh contexts
            crashed = torch.isin(buf.group, buf.group[torch.from_numpy(ep["crashed"])])
            n_crashed = len(torch.unique(buf.group[crashed]))
            crashed_groups += n_crashed
            if filtering:
                keep, n_drop = self._filter(ep, buf.group)
                n_drop += len(torch.unique(buf.group[keep & crashed]))
                keep &= ~crashed
            else:
                keep, n_drop = ~crashed, n_crashed
            # trim to the target so batch sizes stay steady
            kept_ids = torch.unique(buf.group[keep])
            surplus = kept_groups + len(kept_ids) - target
            if surplus > 0:
                extra = kept_ids[len(kept_ids) - surplus:]
                keep &= ~torch.isin(buf.group, extra)
                n_drop += surplus
            buf.drop_envs(~keep)
            buf.groups_dropped = n_drop
            dropped += n_drop
            kept_groups += len(kept_ids) - max(surplus, 0)
            buffers.append(buf)
            if kept_groups >= target or tries >= cfg.max_tries:
                break
        if kept_groups < target:
            what = "informative groups" if filtering else "groups (the others crashed)"
            log.warning("collector: %d of %d %s after %d tries (max_tries); the batch is smaller",
                        kept_groups, target, what, tries)
        elapsed = time.perf_counter() - start
        ok = np.concatenate([~e["crashed"] for e in episodes])  # crashed episodes say nothing about the policy
        cat = lambda key: np.concatenate([e[key] for e in episodes])[ok] if ok.any() else np.zeros(1)  # noqa: E731
        env_steps = int(sum(e["length"].sum() for e in episodes))
        metrics = {
            "rollout/success_rate": float(cat("success").mean()),
            "rollout/return": float(cat("return").mean()),
            "rollout/episode_length": float(cat("length").mean()),
            "rollout/episode_chunks": float(cat("chunk_steps").mean()),
            "rollout/env_steps": float(env_steps),
            "rollout/episodes": float(len(episodes) * N),
            "rollout/groups_kept": float(kept_groups),
            "rollout/groups_dropped": float(dropped),
            "rollout/tries": float(tries),
            "rollout/crashed_episodes": float((~ok).sum()),
            "rollout/crashed_groups": float(crashed_groups),
            "rollout/filter_exhausted": float(filtering and kept_groups < target),
            "perf/rollout_s": elapsed,
            # the sequential schedule's split of rollout_s (a pipelined collector overlaps the two and reports 0)
            "perf/inference_s": self.timing["inference_s"],
            "perf/sim_s": self.timing["sim_s"],
            "perf/env_steps_per_s": env_steps / elapsed if elapsed > 0 else math.nan,
        }
        if len(self.tasks) > 1:
            # which task the batch's successes come from (a task stuck near 0 gives its rollouts no signal)
            task_of = np.concatenate(episode_tasks)[ok]
            success = cat("success")
            for t in np.unique(task_of):
                metrics[f"rollout/success/{self.env.task_names[t]}"] = float(success[task_of == t].mean())
        probs = self.task_probs()
        if probs is not None and len(self.tasks) > 1:
            # what adaptive sampling acts on: a task whose noisy rollouts fail gets the floor's share of the batch
            names = self.env.task_names
            for t, p in zip(self.tasks, probs):
                metrics[f"tasks/running_success/{names[t]}"] = float(self.task_success[t])
                metrics[f"tasks/draw_prob/{names[t]}"] = float(p)
        return Rollout(buffers=[b for b in buffers if bool(b.valid.any())], metrics=metrics)

    def _filter(self, ep: dict[str, np.ndarray], groups: Tensor) -> tuple[Tensor, int]:
        cfg = self.cfg
        success = torch.from_numpy(ep["success"].astype(np.float32))
        if cfg.group_filter == "success_range":
            return filter_groups_by_success(success, groups, *cfg.success_range)
        score = success if cfg.filter_on == "success" else torch.from_numpy(ep["return"].astype(np.float32))
        return filter_uniform_groups(score, groups)

    @torch.no_grad()
    def evaluate(self, seeds: Sequence[int], sampler: Optional[SamplerConfig] = None,
                 tasks: Optional[Sequence[int]] = None, noise_seed: int = 0) -> dict[str, float]:
        """``eval/*`` metrics over fixed held-out seeds (the deterministic ODE by default).

        Seeds are offset by EVAL_SEED_OFFSET; every task in ``tasks`` runs every seed, in
        batches of the env's N sub-envs. Its own generator (``noise_seed``) makes the
        result independent of the training RNG.
        """
        generator = torch.Generator(device=self.device).manual_seed(noise_seed)
        sampler = sampler or self.sampler.deterministic()
        tasks = tuple(tasks) if tasks is not None else self.tasks
        contexts = [Context(t, EVAL_SEED_OFFSET + int(s)) for t in tasks for s in seeds]
        N = self.env.num_envs
        succ, ret, length = [], [], []
        for i in range(0, len(contexts), N):
            part = list(contexts[i : i + N])
            n = len(part)
            part += [part[-1]] * (N - n)  # pad the last batch; padded envs are not counted
            ep = self.run_episodes(part, sampler, generator=generator)
            succ.append(ep["success"][:n])
            ret.append(ep["return"][:n])
            length.append(ep["length"][:n])
        return {
            "eval/success_rate": float(np.concatenate(succ).mean()),
            "eval/return": float(np.concatenate(ret).mean()),
            "eval/episode_length": float(np.concatenate(length).mean()),
            "eval/episodes": float(len(contexts)),
        }
