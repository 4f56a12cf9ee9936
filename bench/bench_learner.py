"""Learner ranks on CPU: PPO update time with 1 process vs N gloo processes (``LearnerGroup``), side by side.

The update is ``PPOUpdater.update`` (every epoch and minibatch: forward, backward, optimiser step) of an MLP
flow policy on a synthetic rollout batch (hybrid Flow-SDE). Settings, one after the other in one run:
one process with 1 thread, one process with ``max(worlds)`` threads (intra-op parallelism, the
alternative to more processes), and ``LearnerGroup`` with each of ``--worlds`` processes of 1 thread
(the trainer is rank 0; the others are Ray actors, the batch goes to them by ``ray.put``). Before every
update the batch's old log-probs are re-scored with the current weights, so each update starts at ratio 1
as a fresh rollout batch would. Writes ``bench/results/learner<suffix>.{json,md}``.

    python bench/bench_learner.py --worlds 2 4 8 --samples 4096 --hidden 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _common import run_main, write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=4096, help="rollout samples per update")
    p.add_argument("--minibatch", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="K denoising steps")
    p.add_argument("--worlds", nargs="+", type=int, default=[2, 4])
    p.add_argument("--repeats", type=int, default=3, help="timed updates per setting (after 1 warm-up)")
    p.add_argument("--suffix", default="")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    from bench_update import make_batch

    from pirl.algorithms import PPOUpdater, preset
    from pirl.distributed.env import init_ray
    from pirl.distributed.learner import LearnerGroup
    from pirl.flow import SamplerConfig
    from pirl.policies.mlp import make_mlp_policy

    algo = preset("ppo")
    ppo = algo.ppo.__class__(**{**algo.ppo.__dict__, "minibatch_size": args.minibatch, "epochs": args.epochs,
                                "target_kl": None})
    sampler = SamplerConfig(method="flow_sde", steps=args.steps)

    def fresh():
        torch.manual_seed(0)
        policy = make_mlp_policy(16, 7, action_horizon=8, hidden=args.hidden, depth=args.depth)
        policy.attach_value_head(policy.feature_dim)
        with torch.no_grad():
            batch = make_batch(policy, sampler, args.samples, 16, seed=0)
        return policy, batch

    def timed(policy, batch, update) -> float:
        times = []
        for i in range(args.repeats + 1):
            with torch.no_grad():  # ratio 1 at the start of every update, as with a fresh batch
                out = policy.evaluate(batch.obs, batch.chain)
            batch = batch.replace(old_log_prob=out.log_prob, old_value=out.value)
            t0 = time.perf_counter()
            update(batch)
            if i:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    rows = []
    n_params = None
    for threads in sorted({1, max(args.worlds)}):
        torch.set_num_threads(threads)
        policy, batch = fresh()
        n_params = sum(p.numel() for p in policy.parameters())
        sec = timed(policy, batch, PPOUpdater(policy, ppo, algo.optim, seed=0).update)
        rows.append({"setting": f"1 process, {threads} thread(s)", "processes": 1, "threads": threads, "s": round(sec, 3)})
        print(rows[-1], flush=True)
    torch.set_num_threads(1)
    init_ray(num_cpus=max(args.worlds))
    import ray

    try:
        for world in args.worlds:
            policy, batch = fresh()
            group = LearnerGroup(policy, ppo, algo.optim, world=world, seed=0, cpus_per_rank=1.0, threads=1)
            try:
                sec = timed(policy, batch, group.update)
            finally:
                group.close()
            rows.append({"setting": f"{world} gloo processes, 1 thread each", "processes": world, "threads": 1,
                         "s": round(sec, 3)})
            print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    base = rows[0]["s"]
    for r in rows:
        r["speedup"] = round(base / r["s"], 2)
        r["samples_per_s"] = round(args.samples * args.epochs / r["s"], 1)
    md = ["| setting | s per update | samples/s | speed-up vs 1 process, 1 thread |", "|---|---:|---:|---:|"]
    md += [f"| {r['setting']} | {r['s']} | {r['samples_per_s']} | {r['speedup']} |" for r in rows]
    md.append(f"\nMLP flow policy {n_params / 1e6:.2f}M parameters (hidden {args.hidden} x {args.depth}), hybrid "
              f"Flow-SDE K={args.steps}; {args.samples} samples per update, minibatch {args.minibatch}, {args.epochs} "
              f"epochs; {os.cpu_count()} CPUs.")
    write_results("learner" + args.suffix, {"config": vars(args), "params": n_params, "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    run_main(main)
