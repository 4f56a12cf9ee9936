"""RL on one ManiSkill task from a few-shot SFT policy: motion-planner demos -> SFT -> PPO, before/after success.

1. demos: ManiSkill's motion planner solves seeds 0, 1, ...; each plan is replayed closed loop in the
   adapter's controller (pd_joint_delta_pos) and kept only if the replay succeeds
   (``pirl.envs.maniskill_demos``), then written as a LeRobot v3 dataset;
2. SFT: state MLP flow policy (flow matching) on those demos;
3. RL: PPO + hybrid Flow-SDE from the SFT checkpoint, stopped by wall time; held-out success
   (fixed seeds, deterministic ODE) before the first and after the last iteration.

Writes bench/results/rl_maniskill.{json,md}; the run directories (dataset, SFT, RL with metrics.jsonl)
stay under --out. Default: PushCube-v1, 25 demos, the end-effector controller (43 % -> 77 % and 40 % -> 83 %
in 30 min, 2 seeds; the joint controller: 30 % -> 47 %, one seed). PickCube needs the end-effector controller: in 'pd_joint_delta_pos' 100 demos and 3,000 SFT steps solved 0/30 held-out seeds, in
'pd_ee_delta_pos' (--control-mode) 100 demos and 5,000 SFT steps solve 20 % (bench/results/maniskill_pickcube_ee_sft.md),
and RL lifts it with the dense reward and episodes run to the limit (--reward dense --no-terminate-on-success
--gamma 0.9): 20 % -> 58 % and 25 % -> 58 % on 60 held-out seeds after 1,000 iterations (~2 h;
bench/results/rl_maniskill_pickcube_ee_dense_s*.md, eval_samplers_pickcube_1000it_s*.md).

    PYTHONPATH=. python bench/bench_rl_maniskill.py [--task PushCube-v1] [--demos 25] [--time-limit 2100]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _common import run_main, setup_threads, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="PushCube-v1")
    ap.add_argument("--demos", type=int, default=25, help="motion-planner demonstrations (few-shot)")
    ap.add_argument("--sft-steps", type=int, default=3000)
    ap.add_argument("--horizon", type=int, default=8, help="H, actions per predicted chunk")
    ap.add_argument("--chunk", type=int, default=4, help="actions executed per chunk")
    ap.add_argument("--reward", choices=["sparse", "dense"], default="sparse")
    ap.add_argument("--no-terminate-on-success", dest="terminate", action="store_false",
                    help="training episodes run to the step limit (a dense reward then pays for holding the goal)")
    ap.add_argument("--gamma", type=float, default=0.99, help="discount per chunk step")
    ap.add_argument("--control-mode", choices=["pd_joint_delta_pos", "pd_ee_delta_pos"], default="pd_ee_delta_pos",
                    help="controller the demos are converted to and the policy acts in (the joint one lifted less: "
                         "bench/results/rl_maniskill.md)")
    ap.add_argument("--noise-level", type=float, default=1.0, help="Flow-SDE noise level a")
    ap.add_argument("--method", choices=["ppo", "loop", "grpo"], default="ppo",
                    help="ppo: critic + chunk GAE; loop / grpo: --group-size rollouts per seed, uniform groups re-drawn")
    ap.add_argument("--group-size", type=int, default=8, help="loop / grpo: rollouts from the same seed per group")
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--num-groups", type=int, default=16,
                    help="rollout episodes per iteration (loop / grpo: kept episodes, --group-size per group)")
    ap.add_argument("--iterations", type=int, default=1000, help="upper bound; --time-limit usually stops the run")
    ap.add_argument("--time-limit", type=float, default=2100.0, help="RL wall-time limit in seconds (evaluations included)")
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--eval-episodes", type=int, default=30, help="held-out episodes before and after RL")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true",
                    help="continue the RL run under --out from its latest checkpoint up to the new --time-limit "
                         "(counted from the run's start; give the same settings as the first call)")
    ap.add_argument("--sft-checkpoint", default=None, help="skip demos and SFT and start RL from this checkpoint")
    ap.add_argument("--out", default="runs/bench_rl_maniskill")
    ap.add_argument("--name", default="rl_maniskill", help="results file stem under bench/results/")
    args = ap.parse_args()
    setup_threads(1)
    from pirl.algorithms import OptimizerConfig
    from pirl.envs.maniskill_demos import generate_demos, write_lerobot
    from pirl.envs.registry import EnvConfig
    from pirl.flow import SamplerConfig
    from pirl.train.logging import read_metrics
    from pirl.train.rl import TrainConfig, train
    from pirl.train.sft import SFTConfig, sft

    out = Path(args.out)
    t_start = time.perf_counter()
    demo_report, demo_s, sft_s, frames = None, None, None, None
    if args.sft_checkpoint:
        checkpoint = args.sft_checkpoint
    else:
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        episodes, demo_report = generate_demos(args.task, args.demos, seed=args.seed, control_mode=args.control_mode)
        if len(episodes) < args.demos:
            raise SystemExit(f"the planner solved only {len(episodes)} of {demo_report['attempts']} seeds")
        write_lerobot(out / "data", episodes)
        demo_s, frames = time.perf_counter() - t0, sum(len(e) for e in episodes)
        print(f"demos: {len(episodes)} ({frames} frames) in {demo_s:.0f} s; {demo_report}", flush=True)
        t0 = time.perf_counter()
        # SFT's built-in evaluation is MetaWorld's; the RL run's first evaluation measures the SFT policy here
        res = sft(SFTConfig(dataset=str(out / "data"), out_dir=str(out / "sft"), action_horizon=args.horizon,
                            chunk=args.chunk, steps=args.sft_steps, eval_every=-1, seed=args.seed, log_every=500))
        sft_s, checkpoint = time.perf_counter() - t0, str(res.checkpoint)
        print(f"SFT: {args.sft_steps} steps in {sft_s:.0f} s, final loss {res.losses[-1][1]:.3f}", flush=True)

    rl_dir = out / "rl"
    if not args.resume:
        shutil.rmtree(rl_dir, ignore_errors=True)
    sampler = SamplerConfig(method="flow_sde", steps=4, noise_level=args.noise_level)
    cfg = TrainConfig(
        policy=checkpoint, env=EnvConfig(suite="maniskill", tasks=args.task, chunk=args.chunk, reward=args.reward,
                                        control_mode=args.control_mode, terminate_on_success=args.terminate),
        algorithm=args.method, sampler=sampler, optim=OptimizerConfig(lr=args.lr, value_lr=1e-3),
        num_groups=args.num_groups if args.method == "ppo" else max(1, args.num_groups // args.group_size),
        group_size=1 if args.method == "ppo" else args.group_size,
        group_filter="none" if args.method == "ppo" else "nonuniform", iterations=args.iterations, time_limit_s=args.time_limit,
        eval_every=args.eval_every, eval_episodes_per_task=args.eval_episodes, eval_num_envs=10,
        checkpoint_every=args.eval_every, videos_per_task=0, seed=args.seed, gamma=args.gamma,
    )  # fmt: skip
    t0 = time.perf_counter()
    rc = train(cfg, rl_dir, resume=args.resume)
    if rc != 0:
        raise SystemExit(rc)
    rl_s = time.perf_counter() - t0
    summary = json.loads((rl_dir / "summary.json").read_text())
    rl_s = float(summary.get("wall_time_s") or rl_s)  # the trainer's clock, across resumes
    curve = [(int(r["env_steps"]), round(float(r["eval/success"]), 3))
             for r in read_metrics(rl_dir / "metrics.jsonl") if "eval/success" in r]
    before, after = summary["success_before_mean"], summary["success_after_mean"]
    payload = {
        "task": args.task, "demos": args.demos, "demo_report": demo_report, "demo_frames": frames,
        "demo_seconds": demo_s, "sft_steps": args.sft_steps, "sft_seconds": sft_s, "action_horizon": args.horizon,
        "chunk": args.chunk, "reward": args.reward, "terminate_on_success": args.terminate, "gamma": args.gamma, "control_mode": args.control_mode, "algorithm": args.method, "group_size": 1 if args.method == "ppo" else args.group_size, "sampler": f"flow_sde hybrid K=4 a={args.noise_level}",
        "lr": args.lr, "num_groups": args.num_groups, "eval_episodes": args.eval_episodes,
        "success_before": before, "success_after": after, "best_success": summary.get("best_success"),
        "iterations": summary["iterations"], "env_steps": summary["env_steps"], "rl_wall_s": round(rl_s, 1),
        "total_wall_s": round(time.perf_counter() - t_start, 1), "curve_env_steps_success": curve, "run_dir": str(rl_dir),
    }  # fmt: skip
    method = ("PPO" if args.method == "ppo" else
              f"{args.method.upper()} (G = {args.group_size} rollouts per seed, uniform groups re-drawn)")
    steps = " → ".join(f"{s:.2f} ({n // 1000}k)" for n, s in curve)
    md = (f"{args.task}, state MLP flow policy, {args.demos} motion-planner demos ({args.control_mode}), "
          f"{args.sft_steps} SFT steps (H = {args.horizon}, chunk {args.chunk}); {method} + hybrid Flow-SDE "
          f"(K = 4, a = {args.noise_level}, lr {args.lr:g}, {args.num_groups} episodes per iteration, {args.reward} reward"
          f"{'' if args.terminate else ', episodes run to the step limit'}, γ = {args.gamma} per chunk).\n\n"
          f"| held-out success ({args.eval_episodes} seeds, ODE) | SFT (before RL) | after RL | env steps | RL wall time |\n"
          f"| --- | ---: | ---: | ---: | ---: |\n"
          f"| {args.task} | {before:.0%} | {after:.0%} | {summary['env_steps']:,} | {rl_s:.0f} s |\n\n"
          f"Along the run (success, env steps): {steps}. {summary['iterations']} iterations; "
          f"whole script {payload['total_wall_s']:.0f} s (demos {demo_s or 0:.0f} s, SFT {sft_s or 0:.0f} s).")  # fmt: skip
    write_results(args.name, payload, md)


if __name__ == "__main__":
    run_main(main)
