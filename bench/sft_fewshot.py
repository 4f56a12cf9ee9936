"""Few-shot SFT: held-out success per task for the state MLP and the VLA-mini with k demos per task.

Collects one multi-task dataset (scripted experts, corner2 video) with the largest k, then
trains one multi-task policy per (policy, k) on the first k demos of every task and evaluates
it on fixed held-out seeds.

    PYTHONPATH=. python bench/sft_fewshot.py --policies mlp vla --demos 5 10
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from _common import run_main, setup_threads, write_results

DEFAULT_TASKS = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "button-press-topdown-v3", "window-open-v3"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    ap.add_argument("--demos", nargs="+", type=int, default=[5, 10])
    ap.add_argument("--policies", nargs="+", default=["mlp", "vla"], choices=["mlp", "vla"])
    ap.add_argument("--mlp-steps", type=int, default=3000)
    ap.add_argument("--vla-steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--vla-batch-size", type=int, default=32)
    ap.add_argument("--horizon", type=int, default=4)
    ap.add_argument("--eval-episodes", type=int, default=20, help="held-out episodes per task")
    ap.add_argument("--eval-max-steps", type=int, default=300)
    ap.add_argument("--action-noise", type=float, default=0.0)
    ap.add_argument("--dataset", default="data/bench_fewshot", help="reused if it exists")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="sft_fewshot")
    args = ap.parse_args()
    setup_threads(args.threads)
    from pirl.data.collect import CollectConfig, collect
    from pirl.train.sft import SFTConfig, sft

    root = Path(args.dataset)
    collect_s = None
    if not (root / "meta" / "info.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        rep = collect(CollectConfig(tasks=tuple(args.tasks), episodes_per_task=max(args.demos), action_noise=args.action_noise,
                                    camera="corner2", image_size=64, num_envs=4), root)  # fmt: skip
        collect_s = rep.seconds
        print(f"collected {rep.episodes} episodes ({rep.frames} frames) in {rep.seconds:.1f}s; expert success {rep.expert_success_rate}")
    runs = []
    for policy in args.policies:
        for k in args.demos:
            cfg = SFTConfig(
                dataset=str(root), policy=policy, episodes_per_task=k, action_horizon=args.horizon,
                steps=args.mlp_steps if policy == "mlp" else args.vla_steps,
                batch_size=args.batch_size if policy == "mlp" else args.vla_batch_size,
                log_every=100 if policy == "mlp" else 50, eval_episodes_per_task=args.eval_episodes,
                eval_max_episode_steps=args.eval_max_steps, eval_num_envs=5,
            )  # fmt: skip
            t0 = time.perf_counter()
            res = sft(cfg)
            ev = res.evals[-1]
            runs.append({"policy": policy, "demos_per_task": k, "steps": cfg.steps, "batch_size": cfg.batch_size,
                         "train_seconds": round(res.train_seconds, 1), "total_seconds": round(time.perf_counter() - t0, 1),
                         "final_loss": res.losses[-1][1], "success": ev["success"], "per_task": ev["per_task"]})  # fmt: skip
            print(runs[-1])
    header = "| policy | demos/task | SFT steps | train s | mean | " + " | ".join(args.tasks) + " |"
    lines = [header, "|" + " --- |" * (5 + len(args.tasks))]
    for r in runs:
        cells = " | ".join(f"{100 * r['per_task'][t]:.0f}" for t in args.tasks)
        lines.append(f"| {r['policy']} | {r['demos_per_task']} | {r['steps']} | {r['train_seconds']} | {100 * r['success']:.0f} | {cells} |")
    note = (f"Held-out success (%) over {args.eval_episodes} fixed evaluation seeds per task, ODE K=4, chunk H={args.horizon} "
            f"executed fully, episode limit {args.eval_max_steps} actions. One multi-task policy per row.")  # fmt: skip
    write_results(args.name, {"tasks": args.tasks, "runs": runs, "collect_seconds": collect_s, "args": vars(args)}, note + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    run_main(main)
