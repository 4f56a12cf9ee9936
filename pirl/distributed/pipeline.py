"""Pipelined rollouts (πRL): policy inference for one half of the envs overlaps simulation of the other.

The env workers of a :class:`RayVectorEnv` are split into two stages A and B. Per chunk step:

    wait A(t) -> act A(t+1) -> send A(t+1)   # B(t) is still simulating
    wait B(t) -> act B(t+1) -> send B(t+1)   # A(t+1) is simulating
    yield step t for all N (halves concatenated)

so the learner-side policy and the simulators are busy at the same time. The recorded
rollout is the sequential one: same observations, actions and results per step. With a
policy whose actions are a deterministic function of the observation the rollouts are
identical; a sampling policy draws its noise per half (same distribution, other numbers).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from pirl.envs.base import StepResult
from pirl.distributed.env import RayVectorEnv, cat_results
from pirl.flow import SamplerConfig
from pirl.train.rollout import Obs, RolloutCollector, actions_for_env


def cat_outputs(outs: list[Any]) -> Any:
    """Concatenates policy outputs (ActOutput-like: actions, chain, log_prob, value) along the batch."""
    value = None if outs[0].value is None else torch.cat([o.value for o in outs])
    return replace(
        outs[0],
        actions=torch.cat([o.actions for o in outs]),
        chain=type(outs[0].chain).cat([o.chain for o in outs]),
        log_prob=torch.cat([o.log_prob for o in outs]),
        value=value,
    )


def _cat_obs(parts: list[Obs]) -> Obs:
    return {k: torch.cat([p[k] for p in parts]) if isinstance(parts[0][k], Tensor) else
            np.concatenate([p[k] for p in parts]) for k in parts[0]}


class PipelinedCollector(RolloutCollector):
    """A RolloutCollector whose env steps overlap policy inference (needs a RayVectorEnv with >= 2 workers)."""

    def __init__(self, env: RayVectorEnv, *args: Any, **kwargs: Any) -> None:
        if not isinstance(env, RayVectorEnv):
            raise TypeError(f"pipelining needs a RayVectorEnv (asynchronous steps), got {type(env).__name__}")
        env.stages(2)  # validates the worker count
        super().__init__(env, *args, **kwargs)

    def steps(self, obs_np: dict[str, np.ndarray], sampler: SamplerConfig,
              generator: torch.Generator) -> Iterator[tuple[Obs, Any, StepResult]]:
        env, policy = self.env, self.policy
        stages = env.stages(2)
        cuts = [env.stage_slice(s) for s in stages]
        sizes = [c.stop - c.start for c in cuts]

        def act(obs_part: dict[str, np.ndarray], h: int) -> tuple[Obs, Any]:
            obs = policy.prepare(obs_part)
            out = policy.act(obs, sampler, generator=generator)
            env.step_async(actions_for_env(out.actions), stages[h])
            return obs, out

        # prime: A's first actions go out before B's are computed
        cur: list[Optional[tuple[Obs, Any]]] = [act({k: v[c] for k, v in obs_np.items()}, h) for h, c in enumerate(cuts)]
        try:
            for t in range(env.max_chunk_steps):
                results: list[StepResult] = []
                nxt: list[Optional[tuple[Obs, Any]]] = [None, None]
                for h in range(2):
                    res = env.step_wait(stages[h])
                    results.append(res)
                    if t + 1 < env.max_chunk_steps:
                        nxt[h] = act(res.obs, h)  # overlaps the other stage's simulation
                obs = _cat_obs([cur[0][0], cur[1][0]])
                out = cat_outputs([cur[0][1], cur[1][1]])
                yield obs, out, cat_results(results, sizes)
                cur = nxt
        finally:
            env.drain()  # stopped early (every episode ended): wait for the steps still in flight
