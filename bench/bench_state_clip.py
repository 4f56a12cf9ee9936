"""How far does one PPO-sized Adam step move a LIBERO policy's chain log-probs, with and without the state clip?

For each policy given: draw a rollout batch with the policy itself (hybrid Flow-SDE, a = 1.0, K = 4; 8 episodes on
the LIBERO tasks, 2 per init state), then take k Adam steps (lr, minibatches of 128, random N(0, 1) advantages:
the size of a step, not its direction, is measured) and report the chain KL E[r - 1 - log r] of the whole batch
after 1, 2, 4 and 8 steps, split by the frames whose *unclipped* normalised state leaves +-5 somewhere.

SFT both policies on the same data, e.g. (bench_rl_libero.py collects the dataset):
  pirl sft dataset=DATA steps=3500 action_horizon=8 chunk=4 eval_every=-1 --run-dir runs/sft_noclip
  pirl sft dataset=DATA steps=3500 action_horizon=8 chunk=4 eval_every=-1 state_clip=5 --run-dir runs/sft_clip5
  PIRL_LIBERO_ASSETS=... python bench/bench_state_clip.py runs/sft_noclip/final.safetensors runs/sft_clip5/final.safetensors
"""

from __future__ import annotations

import argparse
import copy

import torch
from _common import run_main, setup_threads, write_results


def measure(path: str, env, args) -> dict:
    from pirl.algorithms import AdvantageConfig, build_batch
    from pirl.flow import SamplerConfig
    from pirl.policies.io import load_policy
    from pirl.train.rollout import CollectorConfig, RolloutCollector

    base = load_policy(path)[0]
    sampler = SamplerConfig(method="flow_sde", steps=4, noise_level=1.0)
    roll = RolloutCollector(env, base, sampler, CollectorConfig(num_groups=4, group_size=2, seed=args.seed)).collect()
    batch = build_batch(roll.buffers, AdvantageConfig("rloo"))
    raw = copy.deepcopy(base.state_norm)
    raw.clip = None
    z = raw(batch.obs["state"]).abs().amax(-1)
    far = z > 5
    adv = torch.randn(len(batch.old_log_prob), generator=torch.Generator().manual_seed(args.seed))
    policy = copy.deepcopy(base).train()
    with torch.no_grad():
        old = policy.evaluate(batch.obs, batch.chain, with_value=False).log_prob
    opt = torch.optim.AdamW([q for q in policy.parameters() if q.requires_grad], lr=args.lr, weight_decay=0.0)
    order = torch.randperm(len(old), generator=torch.Generator().manual_seed(args.seed + 1))
    rows = []
    for k in range(1, 9):
        mb = order[(k - 1) * 128 % len(old):][:128]
        part = batch.index(mb)
        ratio = (policy.evaluate(part.obs, part.chain, with_value=False).log_prob - old[mb]).exp()
        loss = -(adv[mb] * ratio).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        if k in (1, 2, 4, 8):
            with torch.no_grad():
                log_ratio = policy.evaluate(batch.obs, batch.chain, with_value=False).log_prob - old
            kl = log_ratio.exp() - 1 - log_ratio
            rows.append({"steps": k, "kl": float(kl.mean()), "kl_far": float(kl[far].mean()) if far.any() else None,
                         "kl_near": float(kl[~far].mean())})
            print(path, rows[-1], flush=True)
    return {"policy": path, "state_clip": base.cfg.state_clip, "samples": len(old), "far_fraction": float(far.float().mean()),
            "max_abs_z": float(z.max()), "rollout_success": roll.metrics.get("rollout/success_rate"), "kl": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policies", nargs="+", help="LIBERO state-policy checkpoints (.safetensors)")
    ap.add_argument("--tasks", default="libero_spatial:0,1,2,3")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="libero_state_clip")
    args = ap.parse_args()
    setup_threads(1)
    from pirl.envs.registry import EnvConfig, make_env

    env = make_env(EnvConfig(suite="libero", tasks=args.tasks, chunk=4, object_state=True, held_out_init_states=10), 8)
    try:
        runs = [measure(p, env, args) for p in args.policies]
    finally:
        env.close()
    fmt = lambda v: "—" if v is None else f"{v:.3g}"  # noqa: E731
    lines = ["| policy | state clip | samples | frames beyond 5 std | max abs z | steps | chain KL all | beyond 5 std | within |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        for row in r["kl"]:
            lines.append(f"| {r['policy']} | {r['state_clip']} | {r['samples']} | {r['far_fraction']:.0%} | {r['max_abs_z']:.0f} | "
                         f"{row['steps']} | {fmt(row['kl'])} | {fmt(row['kl_far'])} | {fmt(row['kl_near'])} |")
    md = (f"Tasks {args.tasks}; each policy draws its own 8-episode batch (hybrid Flow-SDE, a = 1.0, K = 4), then Adam "
          f"(lr {args.lr}, minibatches of 128, random advantages) steps; chain KL of the whole batch after k steps, split "
          "by the frames whose unclipped normalised state leaves +-5.\n\n" + "\n".join(lines))
    write_results(args.name, {"runs": runs, "settings": vars(args)}, md)


if __name__ == "__main__":
    run_main(main)
