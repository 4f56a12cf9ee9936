"""RL on LIBERO tasks from a few-shot SFT policy whose demonstrations were made here.

1. demos: the privileged scripted expert (pirl.envs.libero_expert) on training init states, through
   `collect(suite='libero')`; its success rate over the attempts is recorded;
2. SFT: state MLP flow policy on the first few demos per task (robot state + privileged object/target positions);
3. RL, stopped by wall time: PPO + hybrid Flow-SDE (critic, chunk GAE; noise level 1.0, K = 4) or, with
   ``--method loop`` / ``grpo``, RIPT-VLA's grouped rollouts: ``--group-size`` G rollouts from the same init state
   of the same task per context, leave-one-out (or group-normalised) advantages, groups whose G outcomes are all
   equal dropped and re-drawn; success before/after on held-out init states that neither the demos nor RL start from.

Writes bench/results/<--name>.{json,md} (default rl_libero for one task and PPO, else rl_libero_<tasks>_<method>).
Both cores: by default the sub-environments step in 2 Ray env workers (``--runner ray``), each hosting its
share in one process (``--runner local --vector async`` starts one process per sub-environment instead, which
is refused beyond 8 of them on 2 cores: 48 LIBERO processes need ~27 GB). The issue-18 runs (libero_spatial, 4 tasks,
10 demos per task, 3,500 SFT steps, 2 hours; 2026-11-28: PPO 40 % -> 70 %, LOOP 40 % -> 57.5 % at best):
  .venv/bin/python bench/bench_rl_libero.py --tasks libero_spatial:0,1,2,3 --method ppo_flow_sde --sft-steps 3500 \
      --episodes-per-iteration 48 --lr 1e-5 --target-kl 0.05 --time-limit 7200 --eval-every 10
  .venv/bin/python bench/bench_rl_libero.py --tasks libero_spatial:0,1,2,3 --method loop --sft-steps 3500 --lr 5e-6 \
      --target-kl 0.05 --time-limit 7200   (LOOP with G = 8 from 6 contexts = 48 episodes per iteration)
Run: PIRL_LIBERO_ASSETS=/path/to/assets .venv/bin/python bench/bench_rl_libero.py [--time-limit S]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import run_main, setup_threads, write_results

from pirl.data.collect import CollectConfig, collect
from pirl.envs.registry import EnvConfig
from pirl.flow import SamplerConfig
from pirl.algorithms import OptimizerConfig, PPOConfig
from pirl.config import apply_overrides, load_config, to_dict
from pirl.train.logging import read_metrics
from pirl.train.rl import RunnerConfig, TrainConfig, train
from pirl.train.rollout import TASK_SAMPLING
from pirl.train.sft import SFTConfig, sft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="libero_spatial:0", help="LIBERO tasks, 'suite:index[,index...]'")
    ap.add_argument("--method", choices=["ppo_flow_sde", "loop", "grpo"], default="ppo_flow_sde")
    ap.add_argument("--group-size", type=int, default=8, help="loop / grpo: rollouts per (task, init state) context")
    ap.add_argument("--runner", choices=["local", "ray"], default="ray", help="ray: sub-envs in --env-workers processes")
    ap.add_argument("--env-workers", type=int, default=2)
    ap.add_argument("--vector", choices=["sync", "async"], default="sync",
                    help="--runner local: async = one subprocess per sub-env")
    ap.add_argument("--name", default=None, help="results file name (bench/results/NAME.{json,md})")
    ap.add_argument("--demos", type=int, default=10, help="expert demonstrations collected")
    ap.add_argument("--shots", type=int, default=10, help="demonstrations per task SFT trains on (the first ones)")
    ap.add_argument("--sft-steps", type=int, default=3500, help="bench/results/libero_sft_steps.md: 2000 -> 20 %%, 3500 -> 32.5 %%")
    ap.add_argument("--sft-hidden", type=int, default=256, help="SFT: MLP width")
    ap.add_argument("--state-clip", type=float, default=5.0, help="SFT: clip of the normalised state (results/libero_state_clip.md)")
    ap.add_argument("--policy", default=None, help="start RL from this SFT checkpoint instead of training one")
    ap.add_argument("--target-kl", type=float, default=None,
                    help="stop an update's remaining minibatches past this chain KL (PPOConfig.target_kl)")
    ap.add_argument("--epochs", type=int, default=4, help="passes over each rollout batch")
    ap.add_argument("--held-out", type=int, default=10, help="init states kept for evaluation (of 50)")
    ap.add_argument("--time-limit", type=float, default=1500.0, help="RL wall seconds before the final evaluation")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--episodes-per-iteration", type=int, default=None,
                    help="default 8 (ppo_flow_sde) or 6 contexts x --group-size (loop / grpo, RIPT-VLA's 6 x 8)")
    ap.add_argument("--max-episode-steps", type=int, default=0, help="0 = the suite's limit")
    ap.add_argument("--eval-every", type=int, default=1000, help="iterations between evaluations (the run ends by time)")
    ap.add_argument("--eval-envs", type=int, default=5)
    ap.add_argument("--noise-level", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task-sampling", choices=TASK_SAMPLING, default="uniform",
                    help="multi-task runs: how each iteration's episodes are spread over the tasks")
    ap.add_argument("--run-name", default=None, help="RL run folder under --root (default: the method's name)")
    ap.add_argument("--stop-after-sft", action="store_true",
                    help="collect the demos and train the SFT policy (both cached under --root), then stop")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="TrainConfig overrides, as on pirl train's command line (e.g. learned_prior=true optim.prior_lr=3e-3)")
    ap.add_argument("--eval-seeds", nargs="*", type=int, default=[],
                    help="after RL, score the SFT and final policies through `pirl eval` at these ODE noise seeds "
                         "(the trainer's evaluation settings; bench_eval_seeds.py) and report the mean lift")
    ap.add_argument("--object-offsets", action="store_true",
                    help="the state also holds object - gripper and target - object (env.object_offsets); demos and "
                         "SFT cached under <root>-offsets")
    ap.add_argument("--root", default=None, help="default runs/bench_rl_libero (one task) or runs/bench_rl_libero/<tasks>")
    args = ap.parse_args()
    apply_overrides(TrainConfig, {}, args.set)  # a mistyped key fails now, not after the demos and SFT
    grouped = args.method != "ppo_flow_sde"
    G = args.group_size if grouped else 1
    episodes = args.episodes_per_iteration or (6 * G if grouped else 8)
    if episodes % G:
        ap.error(f"--episodes-per-iteration {episodes} is not a multiple of --group-size {G}")
    tag = args.tasks.replace(":", "-").replace(",", "")
    single = "," not in args.tasks
    name = args.name or ("rl_libero" if single and not grouped else f"rl_libero_{tag}_{args.method}")
    setup_threads(1)
    t_start = time.perf_counter()
    root = Path(args.root or ("runs/bench_rl_libero" if single else f"runs/bench_rl_libero/{tag}"))
    if args.object_offsets and not args.root:
        root = root.with_name(root.name + "-offsets")
    data = root / "data"
    report_path = root / "collect_report.json"
    if not (data / "meta" / "info.json").exists():
        report = collect(CollectConfig(suite="libero", tasks=args.tasks, episodes_per_task=args.demos, camera=None,
                                       object_state=True, object_offsets=args.object_offsets,
                                       held_out_init_states=args.held_out, num_envs=1,
                                       max_episode_steps=args.max_episode_steps), data)
        report_path.write_text(json.dumps({"successes": report.successes, "attempts": report.attempts,
                                           "seconds": report.seconds}))
        print(f"demos: {report.episodes} episodes, {report.frames} frames in {report.seconds:.0f} s; expert "
              f"{report.successes} of {report.attempts} attempts", flush=True)
    expert_stats = json.loads(report_path.read_text()) if report_path.exists() else None
    t_sft = time.perf_counter()
    # cached per recipe and training seed (seed 0 keeps the name of the caches made before the seed was in it)
    seed_tag = f"_s{args.seed}" if args.seed else ""
    sft_dir = root / f"sft_{args.sft_steps}_h{args.sft_hidden}_clip{args.state_clip:g}{seed_tag}"
    policy = Path(args.policy) if args.policy else sft_dir / "final.safetensors"
    if not policy.exists():
        if args.policy:
            ap.error(f"--policy {policy} does not exist")
        sft(SFTConfig(dataset=str(data), out_dir=str(sft_dir), action_horizon=8, chunk=4, steps=args.sft_steps,
                      hidden=args.sft_hidden, state_clip=args.state_clip, episodes_per_task=args.shots, eval_every=-1, seed=args.seed), log=None)
    sft_s = time.perf_counter() - t_sft
    if args.stop_after_sft:
        print(f"SFT policy: {policy} ({sft_s:.0f} s); RL not run (--stop-after-sft)", flush=True)
        return
    env = EnvConfig(suite="libero", tasks=args.tasks, chunk=4, max_episode_steps=args.max_episode_steps,
                    object_state=True, object_offsets=args.object_offsets, held_out_init_states=args.held_out,
                    vector=args.vector)
    cfg = TrainConfig(
        policy=str(policy), env=env, algorithm="ppo" if not grouped else args.method,
        sampler=SamplerConfig(method="flow_sde", steps=4, noise_level=args.noise_level),
        optim=OptimizerConfig(lr=args.lr, value_lr=1e-3),
        ppo=PPOConfig(target_kl=args.target_kl, epochs=args.epochs), num_groups=episodes // G, group_size=G,
        group_filter="nonuniform" if grouped else "none",
        iterations=args.iterations, time_limit_s=args.time_limit, eval_every=args.eval_every,
        eval_episodes_per_task=args.held_out, eval_num_envs=args.eval_envs,
        eval_vector="async" if args.runner == "ray" else None, videos_per_task=0,
        checkpoint_every=5, seed=args.seed, task_sampling=args.task_sampling,
        runner=RunnerConfig(kind=args.runner, env_workers=args.env_workers),
    )
    if args.set:
        cfg = load_config(TrainConfig, to_dict(cfg), args.set)
    # the single-task PPO run keeps its old directory, so that its checkpoints resume
    run = root / (args.run_name or ("rl" if single and not grouped else args.method))
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
        "task": args.tasks, "method": args.method, "group_size": G, "episodes_per_iteration": episodes,
        "success_before_per_task": summary["success_before"], "success_after_per_task": summary["success_after"],
        "demos": info["total_episodes"], "demo_frames": info["total_frames"], "shots": args.shots,
        "expert": expert_stats,
        "sft_steps": args.sft_steps, "sft_s": sft_s, "held_out_init_states": args.held_out,
        "success_before": summary["success_before_mean"], "success_after": summary["success_after_mean"],
        "best": summary["best_success"], "iterations": summary["iterations"], "env_steps": summary["env_steps"],
        "rl_wall_s": rl_s, "total_wall_s": time.perf_counter() - t_start, "curve": curve,
        "rollout_success": rollout_success, "settings": vars(args),
    }
    expert = (f"{sum(expert_stats['successes'].values())}/{sum(expert_stats['attempts'].values())} training init states"
              if expert_stats else "not recorded")
    method = ("PPO + hybrid Flow-SDE" if not grouped else
              f"{args.method.upper()} (G = {G} rollouts per task and init state, uniform groups dropped), hybrid Flow-SDE")
    tasks_after = " ".join(f"{t} {summary['success_before'][t]:.0%} → {summary['success_after'][t]:.0%};"
                           for t in summary["success_after"])
    md = "\n".join([
        f"Tasks {args.tasks}, state MLP flow policy (robot state + privileged object/target positions{' and their offsets' if args.object_offsets else ''}), "
        f"{args.shots} expert demos per task ({info['total_episodes']} collected), {args.sft_steps} SFT steps; {method} "
        f"(a = {args.noise_level}, K = 4, lr {args.lr}), {episodes} episodes per iteration, {args.task_sampling} "
        f"task sampling{'; ' + ' '.join(args.set) if args.set else ''}; success "
        f"of the deterministic policy (ODE, K = 4) on {args.held_out} held-out init states per task.", "",
        "| expert | SFT (before RL) | after RL | env steps | iterations | RL wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| {expert} | {summary['success_before_mean']:.0%} | {summary['success_after_mean']:.0%} | "
        f"{summary['env_steps']:,} | {summary['iterations']} | {rl_s:.0f} |", "",
        "Per task, before → after: " + tasks_after, "",
        "Held-out success along the run (env steps, wall s, success): "
        + ", ".join(f"({s:,}, {w}, {v:.2f})" for s, w, v in curve) + ".",
        "Rollout success per iteration (stochastic sampler): " + " ".join(f"{x:.2f}" for x in rollout_success) + ".",
    ])
    if args.eval_seeds:
        from bench_eval_seeds import score_over_seeds, seeds_markdown

        keys = ["env.suite=libero", f"env.tasks={args.tasks}", "env.chunk=4", "env.object_state=true",
                f"env.object_offsets={str(args.object_offsets).lower()}", f"env.held_out_init_states={args.held_out}",
                f"env.vector={'async' if args.runner == 'ray' else args.vector}",
                f"episodes_per_task={args.held_out}", f"num_envs={args.eval_envs}"]
        if args.max_episode_steps:
            keys.append(f"env.max_episode_steps={args.max_episode_steps}")
        rows = score_over_seeds([("sft", str(policy)), ("rl", str(run / "policy_latest.safetensors"))],
                                args.eval_seeds, run / "eval_seeds", keys)
        payload["eval_seeds"] = rows
        md += "\n\nThe SFT and final policies over ODE noise seeds (`pirl eval`; the seed of the run repeats the " \
              "trainer's figure):\n\n" + seeds_markdown(rows, args.eval_seeds, keys)
    print(" ".join(sys.argv), flush=True)
    write_results(name, payload, md)


if __name__ == "__main__":
    run_main(main)
