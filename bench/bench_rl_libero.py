"""RL on one LIBERO task from a few-shot SFT policy whose demonstrations were made here.

1. demos: the privileged scripted expert (pirl.envs.libero_expert) on training init states, through
   `collect(suite='libero')`; its success rate over the attempts is recorded;
2. SFT: state MLP flow policy on the first few demos (robot state + privileged object/target positions);
3. RL: PPO + hybrid Flow-SDE (noise level 1.0, K = 4, lr 2e-5: the MetaWorld demo's settings), stopped by
   wall time; success before/after on held-out init states that neither the demos nor RL ever start from.

Writes bench/results/rl_libero.{json,md}. LIBERO runs ~36 state steps/s per process on a quiet core
(much less on a busy machine), so the budget is small.
Run: PIRL_LIBERO_ASSETS=/path/to/assets .venv/bin/python bench/bench_rl_libero.py [--time-limit S]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import setup_threads, write_results

from pirl.data.collect import CollectConfig, collect
from pirl.envs.registry import EnvConfig
from pirl.flow import SamplerConfig
from pirl.algorithms import OptimizerConfig
from pirl.train.logging import read_metrics
from pirl.train.rl import TrainConfig, train
from pirl.train.sft import SFTConfig, sft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="libero_spatial:0", help="one LIBERO task, 'suite:index'")
    ap.add_argument("--demos", type=int, default=10, help="expert demonstrations collected")
    ap.add_argument("--shots", type=int, default=10, help="demonstrations SFT trains on (the first ones)")
    ap.add_argument("--sft-steps", type=int, default=2000)
    ap.add_argument("--held-out", type=int, default=10, help="init states kept for evaluation (of 50)")
    ap.add_argument("--time-limit", type=float, default=1500.0, help="RL wall seconds before the final evaluation")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--episodes-per-iteration", type=int, default=8)
    ap.add_argument("--max-episode-steps", type=int, default=0, help="0 = the suite's limit")
    ap.add_argument("--eval-every", type=int, default=1000, help="iterations between evaluations (the run ends by time)")
    ap.add_argument("--eval-envs", type=int, default=5)
    ap.add_argument("--noise-level", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--root", default="runs/bench_rl_libero")
    args = ap.parse_args()
    setup_threads(1)
    t_start = time.perf_counter()
    root = Path(args.root)
    data = root / "data"
    report_path = root / "collect_report.json"
    if not (data / "meta" / "info.json").exists():
        report = collect(CollectConfig(suite="libero", tasks=args.tasks, episodes_per_task=args.demos, camera=None,
                                       object_state=True, held_out_init_states=args.held_out, num_envs=1,
                                       max_episode_steps=args.max_episode_steps), data)
        report_path.write_text(json.dumps({"successes": report.successes, "attempts": report.attempts,
                                           "seconds": report.seconds}))
        print(f"demos: {report.episodes} episodes, {report.frames} frames in {report.seconds:.0f} s; expert "
              f"{report.successes} of {report.attempts} attempts", flush=True)
    expert_stats = json.loads(report_path.read_text()) if report_path.exists() else None
    t_sft = time.perf_counter()
    policy = root / "sft" / "final.safetensors"
    if not policy.exists():
        sft(SFTConfig(dataset=str(data), out_dir=str(root / "sft"), action_horizon=8, chunk=4, steps=args.sft_steps,
                      episodes_per_task=args.shots, eval_every=-1, seed=args.seed), log=None)
    sft_s = time.perf_counter() - t_sft
    env = EnvConfig(suite="libero", tasks=args.tasks, chunk=4, max_episode_steps=args.max_episode_steps,
                    object_state=True, held_out_init_states=args.held_out)
    cfg = TrainConfig(
        policy=str(policy), env=env, algorithm="ppo",
        sampler=SamplerConfig(method="flow_sde", steps=4, noise_level=args.noise_level),
        optim=OptimizerConfig(lr=args.lr, value_lr=1e-3), num_groups=args.episodes_per_iteration,
        iterations=args.iterations, time_limit_s=args.time_limit, eval_every=args.eval_every,
        eval_episodes_per_task=args.held_out, eval_num_envs=args.eval_envs, videos_per_task=0,
        checkpoint_every=5, seed=args.seed,
    )
    run = root / "rl"
    t_rl = time.perf_counter()
    rc = train(cfg, run, resume=(run / "checkpoints").is_dir())
    if rc != 0:
        raise SystemExit(rc)
    rl_s = time.perf_counter() - t_rl
    summary = json.loads((run / "summary.json").read_text())
    records = read_metrics(run / "metrics.jsonl")
    curve = [(r["env_steps"], round(r["wall_time"]), r["eval/success"]) for r in records if "eval/success" in r]
    rollout_success = [r["rollout/success_rate"] for r in records if "rollout/success_rate" in r]
    info = json.loads((data / "meta" / "info.json").read_text())
    payload = {
        "task": args.tasks, "demos": info["total_episodes"], "demo_frames": info["total_frames"], "shots": args.shots,
        "expert": expert_stats,
        "sft_steps": args.sft_steps, "sft_s": sft_s, "held_out_init_states": args.held_out,
        "success_before": summary["success_before_mean"], "success_after": summary["success_after_mean"],
        "best": summary["best_success"], "iterations": summary["iterations"], "env_steps": summary["env_steps"],
        "rl_wall_s": rl_s, "total_wall_s": time.perf_counter() - t_start, "curve": curve,
        "rollout_success": rollout_success, "settings": vars(args),
    }
    expert = (f"{sum(expert_stats['successes'].values())}/{sum(expert_stats['attempts'].values())} training init states"
              if expert_stats else "not recorded")
    md = "\n".join([
        f"Task {args.tasks}, state MLP flow policy (robot state + privileged object/target positions), "
        f"{args.shots} of {info['total_episodes']} expert demos, {args.sft_steps} SFT steps; PPO + hybrid Flow-SDE "
        f"(a = {args.noise_level}, K = 4, lr {args.lr}), {args.episodes_per_iteration} episodes per iteration; success "
        f"of the deterministic policy (ODE, K = 4) on {args.held_out} held-out init states.", "",
        "| expert | SFT (before RL) | after RL | env steps | iterations | RL wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| {expert} | {summary['success_before_mean']:.0%} | {summary['success_after_mean']:.0%} | "
        f"{summary['env_steps']:,} | {summary['iterations']} | {rl_s:.0f} |", "",
        "Held-out success along the run (env steps, wall s, success): "
        + ", ".join(f"({s:,}, {w}, {v:.2f})" for s, w, v in curve) + ".",
        "Rollout success per iteration (stochastic sampler): " + " ".join(f"{x:.2f}" for x in rollout_success) + ".",
    ])
    print(" ".join(sys.argv), flush=True)
    write_results("rl_libero", payload, md)


if __name__ == "__main__":
    main()
