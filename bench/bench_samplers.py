"""Sampler overhead on CPU, side by side in one run.

Batch 256, K = 10, a ~1M-parameter MLP velocity over [H=8, D=8] chunks. Compares
- sampling: a bare Euler loop vs pirl.flow.sample (ODE, Flow-SDE hybrid, Flow-SDE all, Flow-Noise);
- re-scoring: hybrid log_prob (one velocity call per sample) vs full-chain re-evaluation (K calls).

Targets (issue 2): hybrid sampling <= 1.10x bare Euler; hybrid log_prob <= 1.2/K of full chain.
Run: .venv/bin/python bench/bench_samplers.py  -> bench/results/samplers.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from torch import nn

from pirl import flow
from pirl.flow import NoiseHead
from _common import run_main


class Velocity(nn.Module):
    def __init__(self, shape=(8, 8), hidden=512, depth=4):
        super().__init__()
        n = math.prod(shape)
        layers = [nn.Linear(n + 1, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, n)
        self.noise = NoiseHead(hidden, shape)

    def forward(self, x, t):
        return self.out(self.body(torch.cat([x.flatten(1), t.view(-1, 1)], 1))).view(x.shape)

    def with_std(self, x, t):
        f = self.body(torch.cat([x.flatten(1), t.view(-1, 1)], 1))
        return self.out(f).view(x.shape), self.noise(f, t)


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/samplers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Velocity()
    n_params = sum(p.numel() for p in model.parameters() if p is not model.noise)
    B, K = args.batch, args.steps
    x0 = torch.randn(B, 8, 8)

    def bare_euler():
        x, d = x0, 1.0 / K
        for k in range(K):
            x = x - d * model(x, torch.full((B,), 1.0 - k / K))
        return x

    def sampler(method, **kw):
        return lambda: flow.sample(model.with_std if method == "flow_noise" else model, x0, steps=K, method=method, **kw)

    results: dict[str, float] = {}
    with torch.no_grad():
        # interleave the candidates so drifts of a shared machine hit all alike
        cands = {
            "bare_euler": bare_euler,
            "sample_ode": sampler("ode"),
            "sample_flow_sde_hybrid": sampler("flow_sde", noise_level=0.5, sde_steps="one"),
            "sample_flow_sde_all": sampler("flow_sde", noise_level=0.5, sde_steps="all"),
            "sample_flow_noise": sampler("flow_noise"),
        }
        for _ in range(3):
            for name, fn in cands.items():
                results[name] = min(results.get(name, math.inf), timeit(fn, args.repeats // 3))
        hybrid = flow.sample(model, x0, steps=K, method="flow_sde", noise_level=0.5, sde_steps="one")
        full = flow.sample(model, x0, steps=K, method="flow_sde", noise_level=0.5, sde_steps="all")
        lp = {"log_prob_hybrid": lambda: flow.log_prob(model, hybrid), "log_prob_full_chain": lambda: flow.log_prob(model, full)}
        for _ in range(3):
            for name, fn in lp.items():
                results[name] = min(results.get(name, math.inf), timeit(fn, args.repeats // 3))

    ratio_sample = results["sample_flow_sde_hybrid"] / results["bare_euler"]
    ratio_lp = results["log_prob_hybrid"] / results["log_prob_full_chain"]
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "command": "python bench/bench_samplers.py",
        "batch": B,
        "steps": K,
        "velocity_params": n_params,
        "seconds": results,
        "hybrid_sample_over_bare_euler": ratio_sample,
        "hybrid_log_prob_over_full_chain": ratio_lp,
        "target_hybrid_sample": 1.10,
        "target_hybrid_log_prob": 1.2 / K,
    }
    print(f"velocity MLP: {n_params / 1e6:.2f}M params, batch {B}, K={K}")
    for name, sec in results.items():
        print(f"  {name:26s} {sec * 1e3:8.2f} ms")
    print(f"hybrid sampling / bare Euler      = {ratio_sample:.3f}  (target <= 1.10)")
    print(f"hybrid log_prob / full-chain eval = {ratio_lp:.3f}  (target <= {1.2 / K:.3f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
