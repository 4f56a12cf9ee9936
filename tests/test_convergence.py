"""RL lifts a flow-matching pre-trained MLP policy from ~35 % to >= 90 % success on the point mass.

Each method starts from the same policy, fitted by flow matching to demonstrations of a slow,
biased, noisy expert; evaluation uses the deterministic ODE on held-out seeds. Fixed seeds and
one thread make every run reproducible.
"""

import copy
import dataclasses

import pytest
import torch

from pirl.algorithms import OptimizerConfig, preset
from pirl.envs.point_mass import PointMassEnv
from pirl.flow import SamplerConfig
from pirl.train.rollout import CollectorConfig, RolloutCollector

from rl_helpers import ENV_CFG, lift, pretrained_policy

torch.set_num_threads(1)

SDE = SamplerConfig(method="flow_sde", sde_steps="one", steps=4, noise_level=0.5)
NOISE = SamplerConfig(method="flow_noise", steps=4)
# The πRL Flow-Noise reference averages the chain's K + 1 log-prob terms; the clip still bounds the chain's.
NOISE_MEAN = SamplerConfig(method="flow_noise", steps=4, reduce="mean")
# Flow-Noise's std matched to Flow-SDE's per-step std at a = 0.5, K = 4 (0.14-0.5, MATH.md): with the chain's trust
# region, πRL's 0.08-0.16 learns too slowly here (0.74-0.77 after 50 iterations, 3 seeds; 1.0 at 0.2-0.4)
NOISE_STD = (0.2, 0.4)

# method -> (algorithm preset, sampler, policy lr, groups, group size, group filter, iterations)
METHODS = {
    "ppo_flow_sde": ("ppo", SDE, 1e-3, 64, 1, "none", 30),
    "ppo_flow_noise": ("ppo", NOISE, 3e-4, 64, 1, "none", 50),
    "ppo_flow_noise_mean": ("ppo", NOISE_MEAN, 3e-4, 64, 1, "none", 50),
    "grpo_flow_sde": ("grpo", SDE, 1e-3, 16, 4, "nonuniform", 30),
    "loop_flow_sde": ("loop", SDE, 1e-3, 16, 4, "nonuniform", 30),
}
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def sft_policy():
    return pretrained_policy(hidden=64, depth=2, sft_steps=400, seed=0)


def run(method: str, policy, seed: int = 0) -> tuple[float, float, float]:
    name, sampler, lr, groups, G, filt, iterations = METHODS[method]
    torch.manual_seed(seed)
    algo = preset(name)
    algo = dataclasses.replace(
        algo,
        optim=OptimizerConfig(lr=lr, value_lr=3e-3),
        ppo=dataclasses.replace(algo.ppo, epochs=4, minibatch_size=128),
    )
    if sampler.method == "flow_noise":
        policy.noise_head.set_range(*NOISE_STD)
    env = PointMassEnv(groups * G, ENV_CFG)
    collector = RolloutCollector(
        env, policy, sampler, CollectorConfig(groups, G, group_filter=filt, max_tries=2, seed=seed)
    )
    return lift(policy, collector, algo, iterations)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("method", list(METHODS))
def test_rl_lifts_success(method, seed, sft_policy):
    before, after, elapsed = run(method, copy.deepcopy(sft_policy), seed=seed)
    print(f"{method} seed {seed}: eval success {before:.3f} -> {after:.3f} ({elapsed:.1f} s of RL)")
    assert 0.2 <= before <= 0.5, f"pre-trained policy should start at 20-50 % success, got {before:.3f}"
    assert after >= 0.9, f"{method}: success {before:.3f} -> {after:.3f}, expected >= 0.9"


if __name__ == "__main__":  # robustness sweep over more seeds: python tests/test_convergence.py
    import sys

    policy = pretrained_policy(hidden=64, depth=2, sft_steps=400, seed=0)
    for m in sys.argv[1:] or METHODS:
        for s in range(10):
            print(m, s, run(m, copy.deepcopy(policy), seed=s), flush=True)
