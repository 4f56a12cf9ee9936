"""How far each rollout sampler moves a policy's executed actions from its deterministic (ODE) chunk.

Exploration is what a sampler's noise does to the actions the environment receives: the RMS gap, in
normalised action units over the executed actions' real dims, between a sampled chunk and the ODE chunk from
the same observations (another x^0 alone moves the ODE chunk too: its row is the floor). Methods compared at a
matched gap explore alike; their log-probs differ in how many terms and how small a std carry it.

    python bench/bench_exploration.py --policy runs/bench_learning/pi0-small/sft/final.safetensors \\
        --tasks reach-v3 push-v3 --camera corner2 --image-size 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import run_main, write_results  # noqa: E402
from pirl.envs.base import EVAL_SEED_START, Context  # noqa: E402
from pirl.envs.registry import EnvConfig, make_env  # noqa: E402
from pirl.flow import SamplerConfig  # noqa: E402
from pirl.policies.io import load_policy  # noqa: E402

CASES = [
    ("ode, another x^0", dict(method="ode"), None),
    ("flow_sde a=1.0", dict(method="flow_sde", noise_level=1.0), None),
    ("flow_sde a=0.5", dict(method="flow_sde", noise_level=0.5), None),
    ("flow_noise 0.2-0.4", dict(method="flow_noise", reduce="mean"), (0.2, 0.4)),
    ("flow_noise 0.1-0.2", dict(method="flow_noise", reduce="mean"), (0.1, 0.2)),
    ("flow_noise 0.08-0.16", dict(method="flow_noise", reduce="mean"), (0.08, 0.16)),
    ("flow_noise 0.4-0.8", dict(method="flow_noise", reduce="mean"), (0.4, 0.8)),
    ("flow_noise one step 0.2-0.4", dict(method="flow_noise", noise_steps="one"), (0.2, 0.4)),
    ("flow_noise one step 0.35-0.7", dict(method="flow_noise", noise_steps="one"), (0.35, 0.7)),
    ("flow_noise one step 0.7-1.4", dict(method="flow_noise", noise_steps="one"), (0.7, 1.4)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--tasks", nargs="+", default=["reach-v3", "push-v3"])
    ap.add_argument("--camera", default=None)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4, help="K")
    ap.add_argument("--chunk", type=int, default=4, help="executed actions per chunk")
    ap.add_argument("--observations", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--noise-where", choices=["all", "counted"], default="all")
    args = ap.parse_args()
    torch.set_num_threads(1)
    policy, _ = load_policy(args.policy)
    policy.eval()
    env = make_env(EnvConfig(tasks=tuple(args.tasks), chunk=args.chunk, camera=args.camera,
                             image_size=args.image_size), args.observations)
    obs = policy.prepare(env.reset([Context(i % len(args.tasks), EVAL_SEED_START + i)
                                    for i in range(args.observations)]))
    env.close()
    dims = min(getattr(policy, "env_action_dim", None) or 10**9, policy.action_shape[-1])
    if hasattr(policy, "cfg") and hasattr(policy.cfg, "action_dim"):
        dims = policy.cfg.action_dim
    g = torch.Generator().manual_seed(0)
    base = policy.act(obs, SamplerConfig(method="ode", steps=args.steps), generator=g).chain.actions
    rows = []
    for name, kw, std_range in CASES:
        if std_range:
            policy.attach_noise_head(policy.feature_dim, *std_range)
        cfg = SamplerConfig(steps=args.steps, logp_steps=args.chunk, noise_where=args.noise_where, **kw)
        gaps, stds = [], []
        for _ in range(args.repeats):
            chain = policy.act(obs, cfg, generator=g).chain
            gap = (chain.actions - base)[:, : args.chunk, :dims]
            gaps.append(float(gap.pow(2).mean().sqrt()))
            if chain.stochastic.any():
                stds.append(float(chain.stds[:, :, : args.chunk, :dims][chain.stochastic].mean()))
        share, total = credited_share(policy, obs, cfg, args.chunk, dims, args.repeats, g)
        rows.append({"sampler": name, "rms_gap": float(np.mean(gaps)), "std": float(np.mean(stds)) if stds else 0.0,
                     "credited_share": share, "action_var": total})
        print(f"{name:22s} RMS gap to the ODE chunk {rows[-1]['rms_gap']:.3f}   mean std of a stochastic step "
              f"{rows[-1]['std']:.3f}   credited share {share:.2f} of action variance {total:.3f}", flush=True)
    transfer = step_transfer(policy, obs, args.steps, args.chunk, dims, args.repeats, g)
    md = ["| sampler (K = %d) | RMS gap to the ODE chunk | mean std of a stochastic transition | credited share of "
          "the action variance | action variance |" % args.steps, "| --- | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['sampler']} | {r['rms_gap']:.3f} | {r['std']:.3f} | {r['credited_share']:.2f} | "
           f"{r['action_var']:.3f} |" for r in rows]
    md += ["", "Credited share: the part of the executed actions' variance (over x^0 and the sampler's noise, per "
           "observation) that the sampler's noise causes, E_x0[Var(a | x^0)] / Var(a): the part a log-prob credits. "
           "x^0's part (which mode of the policy a chunk comes from) carries no gradient in any method."]
    md += ["", "What noise injected at one denoising step does to the executed actions: the RMS displacement of the "
           "final chunk per unit of injected std (1 = passed on whole; below 1, the later steps pull it back):", "",
           "| noise after step | t | transfer |", "| --- | --- | ---: |"]
    md += [f"| {k} | {a:.2f} → {b:.2f} | {v:.3f} |" for k, (a, b, v) in enumerate(transfer)]
    md.append(f"\n{args.policy}; {args.observations} held-out observations of {', '.join(args.tasks)}, "
              f"{args.repeats} draws each; executed actions ({args.chunk}) x real dims ({dims}), normalised units; "
              f"noise_where={args.noise_where}.")
    write_results(f"exploration_{Path(args.policy).parent.parent.name}",
                  {"rows": rows, "transfer": [v for _, _, v in transfer], "args": vars(args)},
                  "\n".join(md))


@torch.no_grad()
def credited_share(policy, obs, cfg: SamplerConfig, chunk: int, dims: int, repeats: int,
                   g: torch.Generator) -> tuple[float, float]:
    """(E_x0[Var(a | x^0)] / Var(a), Var(a)) of the executed actions, over ``repeats`` x^0 x ``repeats`` draws."""
    from pirl import flow

    ctx = policy.encode(obs)
    B = next(v.shape[0] for v in obs.values() if isinstance(v, torch.Tensor))
    fn = policy.velocity_fn(ctx, cfg.method == "flow_noise")
    groups = []
    for _ in range(repeats):
        x0 = torch.randn((B, *policy.action_shape), generator=g)
        draws = [flow.sample(fn, x0, steps=cfg.steps, method=cfg.method, noise_level=cfg.noise_level,
                             sde_steps=cfg.sde_steps, noise_steps=cfg.noise_steps, generator=g).actions
                 for _ in range(repeats)]
        groups.append(torch.stack(draws, 1)[:, :, :chunk, :dims])
    a = torch.stack(groups, 1)  # [B, x0, draws, chunk, dims]
    within, total = a.var(2).mean(), a.flatten(1, 2).var(1).mean()
    return float(within / total), float(total)


@torch.no_grad()
def step_transfer(policy, obs, steps: int, chunk: int, dims: int, repeats: int, g: torch.Generator,
                  std: float = 0.28) -> list[tuple[float, float, float]]:
    """Per denoising step k: Euler chain with N(0, std^2) added after step k alone, RMS gap of the executed actions
    to the noiseless chain from the same x^0, divided by std."""
    from pirl.flow.sampler import time_grid

    fn = policy.velocity_fn(policy.encode(obs), False)
    grid = time_grid(steps)
    B = next(v.shape[0] for v in obs.values() if isinstance(v, torch.Tensor))

    def run(x0, k_noise=None, eps=None):
        x = x0
        for k in range(steps):
            x = x - fn(x, grid[k].expand(B)) / steps
            if k == k_noise:
                x = x + std * eps
        return x[:, :chunk, :dims]

    gaps = [[] for _ in range(steps)]
    for _ in range(repeats):
        x0 = torch.randn((B, *policy.action_shape), generator=g)
        base = run(x0)
        for k in range(steps):
            out = run(x0, k, torch.randn(x0.shape, generator=g))
            gaps[k].append(float((out - base).pow(2).mean().sqrt()) / std)
    return [(float(grid[k]), float(grid[k + 1]), float(np.mean(gaps[k]))) for k in range(steps)]


if __name__ == "__main__":
    run_main(main)
