"""Scale-out on Ray: env workers in actors, pipelined rollouts, fault tolerance, a data-parallel or sharded learner.

The Ray layer moves data and weights and does no math: environments stay ``make_env``
vectors (now inside actors), the collector and PPO update are the single-process ones.
Nothing here imports ray at package import time, so ``pirl`` works without it.
"""

from __future__ import annotations

__all__ = ["RayVectorEnv", "PipelinedCollector", "init_ray", "DistributedPPOUpdater", "FSDPPPOUpdater"]


def __getattr__(name: str):
    # lazy: `import pirl.distributed` must not need ray (or torch.distributed) until used
    if name in ("RayVectorEnv", "init_ray"):
        from pirl.distributed import env

        return getattr(env, name)
    if name == "PipelinedCollector":
        from pirl.distributed.pipeline import PipelinedCollector

        return PipelinedCollector
    if name == "DistributedPPOUpdater":
        from pirl.distributed.learner import DistributedPPOUpdater

        return DistributedPPOUpdater
    if name == "FSDPPPOUpdater":
        from pirl.distributed.fsdp import FSDPPPOUpdater

        return FSDPPPOUpdater
    raise AttributeError(name)
