"""LOOP lifts the regression-head and tokenized-head policies on the point mass, like the flow policy.

Each head is fitted by SFT to the same slow, biased, noisy demonstrations as the flow
convergence test (the regression head then gets its NLL-fitted scale head); evaluation is
greedy (mean / argmax) on held-out seeds. Fixed seeds and one thread make runs reproducible.
"""

import dataclasses
import time

import pytest
import torch

from pirl.algorithms import OptimizerConfig, preset
from pirl.envs.point_mass import PointMassEnv
from pirl.policies import HeadSamplerConfig, fit_scale_head, make_regression_policy, make_tokenized_policy
from pirl.train.pretrain import sft_fit
from pirl.train.rollout import CollectorConfig, RolloutCollector

from rl_helpers import ENV_CFG, HORIZON, demo_dataset, lift

torch.set_num_threads(1)


# head -> (policy factory, sampler)
HEADS = {
    "regression_l1": (lambda: make_regression_policy(4, 2, action_horizon=HORIZON, hidden=64, depth=2, loss="l1"),
                      HeadSamplerConfig()),
    "regression_mse": (lambda: make_regression_policy(4, 2, action_horizon=HORIZON, hidden=64, depth=2, loss="mse"),
                       HeadSamplerConfig()),
    # a Gaussian of pinned std whose mean is a flow denoiser's one-step estimate (SFT by flow matching, no scale fit)
    "regression_flow": (lambda: make_regression_policy(4, 2, action_horizon=HORIZON, hidden=64, depth=2, loss="flow"),
                        HeadSamplerConfig()),
    # 256 bins; a softmax temperature of 0.5 keeps SFT's broad token histograms from drowning the rollouts
    "tokenized": (lambda: make_tokenized_policy(4, 2, action_horizon=HORIZON, hidden=64, depth=2),
                  HeadSamplerConfig(widen=0.5)),
    # the flow-trained network with its discretised Gaussian, chunk-correlated draws as `pirl train` gives it
    "tokenized_flow": (lambda: make_tokenized_policy(4, 2, action_horizon=HORIZON, hidden=64, depth=2, loss="flow"),
                       HeadSamplerConfig(correlation=0.9)),
}


def pretrained(head: str, seed: int = 0):
    torch.manual_seed(seed)
    states, chunks = map(torch.from_numpy, demo_dataset(seed=seed))
    policy = HEADS[head][0]()
    sft_fit(policy, states, chunks, steps=400, lr=2e-3, seed=seed)
    policy.fold_denoiser()  # as `pirl sft` saves a flow-trained head (a no-op for the others)
    if head in ("regression_l1", "regression_mse"):
        fit_scale_head(policy, states, chunks, steps=300, seed=seed)
    return policy


def run(head: str, seed: int = 0, iterations: int = 30) -> tuple[float, float, float]:
    policy = pretrained(head, seed)
    algo = preset("loop")
    algo = dataclasses.replace(algo, optim=OptimizerConfig(lr=1e-3),
                               ppo=dataclasses.replace(algo.ppo, epochs=4, minibatch_size=128))
    env = PointMassEnv(16 * 4, ENV_CFG)
    collector = RolloutCollector(env, policy, HEADS[head][1],
                                 CollectorConfig(16, 4, group_filter="nonuniform", max_tries=2, seed=seed))
    return lift(policy, collector, algo, iterations)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("head", list(HEADS))
def test_loop_lifts_head_policy(head, seed):
    start = time.perf_counter()
    before, after, elapsed = run(head, seed)
    total = time.perf_counter() - start
    print(f"{head} seed {seed}: eval success {before:.3f} -> {after:.3f} ({elapsed:.1f} s of RL, {total:.1f} s total)")
    assert 0.2 <= before <= 0.6, f"pre-trained {head} should start at 20-60 % success, got {before:.3f}"
    assert after >= 0.9, f"{head}: success {before:.3f} -> {after:.3f}, expected >= 0.9"
    assert total < 60, f"{head} took {total:.1f} s"


if __name__ == "__main__":  # robustness sweep over more seeds: python tests/test_heads_convergence.py
    import sys

    for h in sys.argv[1:] or HEADS:
        for s in range(10):
            print(h, s, run(h, seed=s), flush=True)
