"""Learning curves of the RL methods side by side, from one few-shot SFT policy.

collect -> SFT (state MLP) once, then PPO + Flow-SDE, PPO + Flow-Noise, GRPO and LOOP each train
from the same checkpoint with the same env budget; success on fixed held-out seeds vs env steps
and wall time goes to one table (bench/results/learning.{json,md}); `pirl report` on the run
directories draws the curves.

Default: MetaWorld MT10, 5 demos per task (issue 5's target: >= 90 % mean held-out success within
an hour on 2 cores). `--tasks reach-v3 push-v3 --iterations 40` is a quick version.
Run: .venv/bin/python bench/bench_learning.py [--tasks ...] [--methods ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch

from pirl.data.collect import CollectConfig, collect
from pirl.envs.registry import EnvConfig
from pirl.flow import SamplerConfig
from pirl.train.logging import read_metrics
from pirl.train.rl import TrainConfig, train
from pirl.train.sft import SFTConfig, sft

METHODS = {
    "ppo_flow_sde": dict(algorithm="ppo", sampler=SamplerConfig(method="flow_sde", steps=4, noise_level=1.0)),
    "ppo_flow_noise": dict(algorithm="ppo", sampler=SamplerConfig(method="flow_noise", steps=4, reduce="mean")),
    "grpo": dict(algorithm="grpo", group_size=4, group_filter="nonuniform",
                 sampler=SamplerConfig(method="flow_sde", steps=4, noise_level=1.0)),
    "loop": dict(algorithm="loop", group_size=4, group_filter="nonuniform",
                 sampler=SamplerConfig(method="flow_sde", steps=4, noise_level=1.0)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["MT10"])
    ap.add_argument("--demos", type=int, default=5)
    ap.add_argument("--sft-steps", type=int, default=3000)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--iterations", type=int, default=80)
    ap.add_argument("--episodes-per-iteration", type=int, default=48)
    ap.add_argument("--max-episode-steps", type=int, default=200)
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--root", default="runs/bench_learning")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tasks = args.tasks[0] if len(args.tasks) == 1 else tuple(args.tasks)
    root = Path(args.root)
    data = root / "data"
    if not (data / "meta" / "info.json").exists():
        collect(CollectConfig(tasks=tasks, episodes_per_task=args.demos, action_noise=0.1, camera=None,
                              max_episode_steps=args.max_episode_steps), data)
    policy = root / "sft" / "final.safetensors"
    if not policy.exists():
        sft(SFTConfig(dataset=str(data), out_dir=str(root / "sft"), action_horizon=8, chunk=4, steps=args.sft_steps,
                      eval_every=-1), log=None)
    rows = []
    for name in args.methods:
        spec = dict(METHODS[name])
        G = spec.pop("group_size", 1)
        cfg = TrainConfig(
            policy=str(policy), env=EnvConfig(tasks=tasks, chunk=4, max_episode_steps=args.max_episode_steps),
            num_groups=max(1, args.episodes_per_iteration // G), group_size=G, iterations=args.iterations,
            eval_every=max(1, args.iterations // 4), eval_episodes_per_task=args.eval_episodes, eval_num_envs=10,
            videos_per_task=0, checkpoint_every=args.iterations, **spec,
        )
        run = root / name
        t0 = time.perf_counter()
        train(replace(cfg), run)
        curve = [(r["env_steps"], r["wall_time"], r["eval/success"]) for r in read_metrics(run / "metrics.jsonl")
                 if "eval/success" in r]
        summary = json.loads((run / "summary.json").read_text())
        rows.append({"method": name, "before": summary["success_before_mean"], "after": summary["success_after_mean"],
                     "best": summary["best_success"], "env_steps": summary["env_steps"],
                     "wall_s": time.perf_counter() - t0, "curve": curve})
        print(f"{name:16s} {rows[-1]['before']:.2f} -> {rows[-1]['after']:.2f} (best {rows[-1]['best']:.2f}) "
              f"{rows[-1]['env_steps']:,} env steps {rows[-1]['wall_s']:.0f} s", flush=True)
    command = "python bench/bench_learning.py " + " ".join(sys.argv[1:])
    for r in rows:
        r["command"] = command
    path = Path("bench/results/learning.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    # methods run by separate commands (e.g. a smaller iteration count for the group methods) share one table
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    rows = [r for r in old if r["method"] not in {n["method"] for n in rows}] + rows
    out = {"date": datetime.now().isoformat(timespec="seconds"), "machine": f"{platform.machine()} 2-core CPU",
           "tasks": args.tasks, "rows": rows}
    path.write_text(json.dumps(out, indent=2) + "\n")
    md = [f"### {out['date']}, 2-core CPU, tasks {' '.join(args.tasks)}", "",
          "| method | before | after | best | env steps | wall s | command |",
          "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    md += [f"| {r['method']} | {r['before']:.2f} | {r['after']:.2f} | {r['best']:.2f} | {r['env_steps']:,} | "
           f"{r['wall_s']:.0f} | `{r['command']}` |" for r in rows]
    Path("bench/results/learning.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
