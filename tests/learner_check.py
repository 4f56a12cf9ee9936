"""Two gloo processes vs one PPOUpdater on the same batch, ddp and fsdp (used by test_ray.py and
test_fsdp.py; spawn needs a module)."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
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


# -- FSDP: sharded learner ranks vs one PPOUpdater, two updates, on the MLP, VLA-mini and π0.5 -------------


def _own_batch(policy, obs: dict):
    """(policy, a batch of its own flow_noise act() outputs, PPO over minibatches of B-1 and 1 rows, optim)."""
    from pirl.algorithms.buffer import RolloutBatch

    policy.eval()
    out = policy.act(obs, SamplerConfig(method="flow_noise", steps=2), generator=torch.Generator().manual_seed(0))
    B = len(out.log_prob)
    batch = RolloutBatch(obs, out.chain, out.log_prob, out.value, torch.randn(B), torch.randn(B),
                         torch.zeros(B, dtype=torch.long), torch.arange(B))
    algo = preset("ppo")
    ppo = dataclasses.replace(algo.ppo, minibatch_size=B - 1, micro_batch_size=2, epochs=1, target_kl=None)
    return policy, batch, ppo, algo.optim


def vla_setup():
    """A tiny VLA-mini; flow_noise, so the noise head and the entropy bonus train too."""
    from pirl.policies.vla import make_vla_policy

    torch.manual_seed(0)
    policy = make_vla_policy(4, 2, image_size=16, patch=8, width=16, heads=2, layers=1, max_words=4)
    B = 6
    obs = policy.prepare({"image": torch.randint(0, 255, (B, 16, 16, 3), dtype=torch.uint8).numpy(),
                          "state": torch.randn(B, 4).numpy(), "instruction": ["reach the goal"] * B})
    return _own_batch(policy, obs)


def pi05_setup():
    """A tiny π0.5 (joint attention through the layers' qkv/finish methods, adaRMS, SigLIP tower)."""
    from pirl.policies.pi0 import make_pi0_policy, tiny_config

    torch.manual_seed(0)
    policy = make_pi0_policy(tiny_config("pi05"))
    cfg, B = policy.cfg, 4
    s, C = cfg.vision.image_size, len(cfg.cameras)
    obs = {"images": torch.rand(B, C, 3, s, s) * 2 - 1, "image_masks": torch.ones(B, C, dtype=torch.bool),
           "tokens": torch.randint(4, cfg.vocab_size, (B, cfg.token_len)),
           "token_mask": torch.ones(B, cfg.token_len, dtype=torch.bool), "state": torch.randn(B, cfg.max_state_dim)}
    return _own_batch(policy, obs)


def fsdp_cases():
    """name -> (policy, batch, ppo, optim). MLP: minibatches of B-1 rows and 1 row in micro-batches of 5, so
    the ranks' shares need different pass counts (and one is empty); a tight grad clip that binds."""
    policy, batch, ppo, optim = setup()
    ppo = dataclasses.replace(ppo, minibatch_size=len(batch) - 1, micro_batch_size=5, max_grad_norm=0.5)
    cases = {"mlp": (policy, batch, ppo, optim), "vla": vla_setup()}
    if importlib.util.find_spec("transformers") is not None:  # the optional "pi0" extra
        cases["pi05"] = pi05_setup()
    return cases


def two_updates(updater, batch, state) -> dict:
    """Metrics, full weights and full optimiser state after one and after two updates on ``batch``."""
    out = {}
    for i in (1, 2):
        out[f"metrics{i}"] = updater.update(batch)
        out[f"weights{i}"], out[f"optim{i}"] = copy.deepcopy(state(updater))
        # the batch is stale after one update: the second checks the step from the carried optimiser state
        updater.cfg = dataclasses.replace(updater.cfg, ratio_check_tol=1e9)
    return out


def _fsdp_worker(rank: int, world: int, port: int, out: str) -> None:
    from pirl.distributed.fsdp import FSDPPPOUpdater, local_numel
    from pirl.distributed.learner import init_process_group

    torch.set_num_threads(1)
    init_process_group(rank, world, port=port)
    try:
        result = {}
        for name, (policy, batch, ppo, optim) in fsdp_cases().items():
            # small units: every linear layer is its own FSDP unit, as a large model's would be
            u = FSDPPPOUpdater(policy, ppo, optim, seed=0, min_unit_params=64)
            result[name] = two_updates(u, batch, lambda u: (u.full_state_dict(), u.optimizer_state_dict()))
            result[name]["numel"] = (local_numel(u.policy), sum(p.numel() for p in policy.parameters()))
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def run_fsdp_check(tmp: Path) -> tuple[list[dict], dict]:
    """([rank 0's results, rank 1's], single-process results): name -> two_updates() output (+ "numel":
    (this rank's parameter elements, the policy's) on the ranks)."""
    out = str(Path(tmp) / "fsdp")
    mp.spawn(_fsdp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ref = {}
    for name, (policy, batch, ppo, optim) in fsdp_cases().items():
        state = lambda u: ({k: v.detach().clone() for k, v in u.policy.state_dict().items()}, u.optimizer.state_dict())
        ref[name] = two_updates(PPOUpdater(policy, ppo, optim, seed=0), batch, state)
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)], ref
