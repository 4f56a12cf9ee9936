"""Update throughput on CPU: PPO re-evaluation cost of hybrid Flow-SDE vs Flow-Noise vs all-steps Flow-SDE.

Samples per second of ``PPOUpdater.update`` (forward + backward + optimiser step) for a ~1M-parameter
MLP flow policy on a synthetic rollout batch. Hybrid Flow-SDE re-evaluates one denoising transition
per sample; Flow-Noise and all-steps Flow-SDE re-evaluate all K.

    PYTHONPATH=. python bench/bench_update.py [--samples 1024] [--steps 4] [--threads 1]

Writes bench/results/update.json and appends a line to bench/results/update.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import time

import torch

from pirl.algorithms import PPOConfig, PPOUpdater, RolloutBatch
from pirl.flow import SamplerConfig
from pirl.policies.mlp import make_mlp_policy
from _common import run_main

VARIANTS = {
    "flow_sde_hybrid": dict(method="flow_sde", sde_steps="one"),
    "flow_noise": dict(method="flow_noise"),
    "flow_sde_all": dict(method="flow_sde", sde_steps="all"),
}


def make_batch(policy, cfg: SamplerConfig, samples: int, state_dim: int, seed: int) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    obs = {"state": torch.randn(samples, state_dim, generator=g)}
    out = policy.act(obs, cfg, generator=g)
    return RolloutBatch(
        obs=obs, chain=out.chain, old_log_prob=out.log_prob, old_value=out.value,
        advantages=torch.randn(samples, generator=g), returns=torch.randn(samples, generator=g),
        task=torch.zeros(samples, dtype=torch.long), group=torch.arange(samples),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1024, help="rollout samples per update")
    p.add_argument("--minibatch", type=int, default=256)
    p.add_argument("--steps", type=int, default=4, help="K denoising steps")
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="timed updates per variant (best is reported)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    state_dim, horizon, action_dim = 32, 8, 7
    results = {}
    for name, kw in VARIANTS.items():
        policy = make_mlp_policy(state_dim, action_dim, action_horizon=horizon, hidden=args.hidden, depth=args.depth)
        n_params = sum(p.numel() for p in policy.parameters())
        sampler = SamplerConfig(steps=args.steps, **kw)
        batch = make_batch(policy, sampler, args.samples, state_dim, seed=0)
        updater = PPOUpdater(policy, PPOConfig(epochs=1, minibatch_size=args.minibatch))
        updater.update(batch)  # warm-up (allocations, first-call overheads)
        best = float("inf")
        for r in range(args.repeats):
            batch = make_batch(policy, sampler, args.samples, state_dim, seed=r + 1)
            t0 = time.perf_counter()
            updater.update(batch)
            best = min(best, time.perf_counter() - t0)
        results[name] = {"samples_per_s": args.samples / best, "update_s": best, "params": n_params}
        print(f"{name:16s} {args.samples / best:9.1f} samples/s  ({best:.3f} s per update, {n_params / 1e6:.2f} M params)",
              flush=True)
    base = results["flow_sde_hybrid"]["samples_per_s"]
    for name in results:
        results[name]["relative_to_hybrid"] = results[name]["samples_per_s"] / base
    command = "PYTHONPATH=. python bench/bench_update.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k not in ("out",))
    record = {
        "date": datetime.date.today().isoformat(),
        "machine": "2-core CPU",
        "platform": platform.platform(),
        "torch": torch.__version__,
        "command": command,
        "config": {**{k: v for k, v in vars(args).items() if k != "out"}, "state_dim": state_dim,
                   "action_horizon": horizon, "action_dim": action_dim},
        "results": results,
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "update.json").write_text(json.dumps(record, indent=2) + "\n")
    line = (f"- {record['date']}, 2-core CPU, `{command}`: "
            + ", ".join(f"{k} {v['samples_per_s']:.0f} samples/s" for k, v in results.items()) + "\n")
    with open(out / "update.md", "a") as f:
        f.write(line)
    print(line, end="")


if __name__ == "__main__":
    run_main(main)
