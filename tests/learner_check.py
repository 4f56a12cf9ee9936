"""Two gloo processes vs one PPOUpdater on the same batch (used by test_ray.py; spawn needs a module)."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pirl.algorithms import PPOUpdater, build_batch, preset
from pirl.envs.point_mass import PointMassConfig, PointMassEnv
from pirl.flow import SamplerConfig
from pirl.policies.mlp import make_mlp_policy
from pirl.train.rollout import CollectorConfig, RolloutCollector


def setup():
    """The same policy and rollout batch in every process (everything seeded)."""
    torch.manual_seed(0)
    policy = make_mlp_policy(4, 2, action_horizon=4, hidden=32, depth=2)
    policy.attach_value_head(policy.value_feature_dim if hasattr(policy, "value_feature_dim") else policy.feature_dim)
    policy.eval()
    env = PointMassEnv(8, PointMassConfig(chunk=4, max_chunk_steps=4))
    collector = RolloutCollector(env, policy, SamplerConfig(method="flow_sde", steps=4, logp_steps=4),
                                 CollectorConfig(num_groups=8, seed=0))
    algo = preset("ppo")
    ppo = algo.ppo.__class__(**{**algo.ppo.__dict__, "minibatch_size": 10, "epochs": 2, "target_kl": None})
    batch = build_batch(collector.collect().buffers, algo.advantage)
    return policy, batch, ppo, algo.optim


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from pirl.distributed.learner import DistributedPPOUpdater, init_process_group

    torch.set_num_threads(1)
    init_process_group(rank, world, port=port)
    try:
        policy, batch, ppo, optim = setup()
        DistributedPPOUpdater(policy, ppo, optim, seed=0).update(batch)
        if rank == 0:
            torch.save({k: v.detach().clone() for k, v in policy.state_dict().items()}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_check(tmp: Path) -> tuple[dict, dict]:
    """(state_dict after the 2-rank gloo update, state_dict after the single-process update)."""
    out = str(Path(tmp) / "rank0.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    policy, batch, ppo, optim = setup()
    before = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    PPOUpdater(policy, ppo, optim, seed=0).update(batch)
    ref = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    ours = torch.load(out)
    assert any(not torch.equal(ref[k], before[k]) for k in ref), "the update changed nothing"
    return ours, ref
