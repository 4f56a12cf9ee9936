"""Learning curves of the RL methods side by side, from one few-shot SFT policy.

collect -> SFT (state MLP) once, then PPO + Flow-SDE, PPO + Flow-Noise, GRPO and LOOP each train
from the same checkpoint with the same env budget; success on fixed held-out seeds vs env steps
and wall time goes to one table (bench/results/learning.{json,md}); `pirl report` on the run
directories draws the curves.

Default: MetaWorld MT10, 10 demos per task, 30,000 SFT steps, adaptive task sampling, each method stopped by
wall time (issue 5's target: >= 90 % mean held-out success within an hour on 2 cores). `--runner ray
--env-workers 2` steps the simulators in two Ray actor processes, so one run uses both cores. Methods can also run
as separate processes side by side (`--prepare-only` first, then one `--methods NAME` per process); each merges
its row into bench/results/learning_<root name>.{json,md} under a file lock.
The README's MT10 run, one method at a time: `--demos 5 --root runs/bench_learning/mt10-5demos --methods NAME
--runner ray --env-workers 2 --time-limit 1200 --eval-every 20`.
Quick version: `--tasks reach-v3 push-v3 --iterations 40`.
Run: .venv/bin/python bench/bench_learning.py [--tasks ...] [--methods ...] [--time-limit S]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import platform
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import torch

from pirl.config import apply_overrides, load_config, to_dict
from pirl.data.collect import CollectConfig, collect
from pirl.envs.registry import EnvConfig
from pirl.flow import SamplerConfig
from pirl.policies.options import Pi0Options
from pirl.train.logging import read_metrics
from pirl.train.rl import RunnerConfig, TrainConfig, train
from pirl.train.sft import SFTConfig, sft
from _common import run_main

METHODS = {
    "ppo_flow_sde": dict(algorithm="ppo", sampler=SamplerConfig(method="flow_sde", steps=4, noise_level=1.0)),
    "ppo_flow_noise": dict(algorithm="ppo", sampler=SamplerConfig(method="flow_noise", steps=4, reduce="mean")),
    "grpo": dict(algorithm="grpo", group_size=4, group_filter="nonuniform",
                 sampler=SamplerConfig(method="flow_sde", steps=4, noise_level=1.0)),
    "loop": dict(algorithm="loop", group_size=4, group_filter="nonuniform",
                 sampler=SamplerConfig(method="flow_sde", steps=4, noise_level=1.0)),
}


def _tag(tasks: list[str]) -> str:
    return "-".join(t.lower() for t in tasks)


def _merge_row(path: Path, tasks: list[str], row: dict) -> dict:
    """Adds ``row`` to the results file (replacing the same method's), under a lock: methods run in parallel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text())["rows"] if path.exists() else []
        rows = [r for r in old if r["method"] != row["method"]] + [row]
        out = {"date": datetime.now().isoformat(timespec="seconds"), "machine": f"{platform.machine()} 2-core CPU",
               "tasks": tasks, "rows": rows}
        path.write_text(json.dumps(out, indent=2) + "\n")
    return out


def _at(curve: list, seconds: float) -> float | None:
    """Held-out success of the last evaluation at or before ``seconds`` of wall time."""
    before = [s for _, w, s, _ in curve if w <= seconds]
    return before[-1] if before else None


def _seed_table(rows: list[dict], after_s: float = 300.0) -> list[str]:
    """Rows labelled ``<method>_s<seed>`` grouped per method: each seed's final success, their mean, and the lowest
    evaluation after ``after_s`` seconds of wall time against the SFT level (issue 17: never below it after 5 min)."""
    import re

    groups: dict[str, list[dict]] = {}
    for r in rows:
        m = re.fullmatch(r"(.+)_s(\d+)", r["method"])
        if m:
            groups.setdefault(m.group(1), []).append(r)
    if not groups:
        return []
    md = ["", f"Per method over seeds (`_s<seed>` rows): final held-out success per seed and mean; the lowest evaluation "
          f"after {after_s / 60:.0f} min of wall time, and whether it stayed at or above the SFT level.", "",
          "| method | seeds | before | after per seed | mean after | best per seed | lowest after "
          f"{after_s / 60:.0f} min | ≥ SFT after {after_s / 60:.0f} min | env steps per seed |",
          "| --- | ---: | ---: | --- | ---: | --- | --- | --- | --- |"]
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["method"])
        lows = [min((s for _, w, s, _ in r["curve"] if w > after_s), default=float("nan")) for r in rs]
        ok = all(low >= r["before"] - 1e-9 for low, r in zip(lows, rs))
        per_seed = lambda key, fmt="{:.3f}": " / ".join(fmt.format(r[key]) for r in rs)  # noqa: E731
        md.append(f"| {name} | {len(rs)} | {per_seed('before')} | {per_seed('after')} | "
                  f"**{sum(r['after'] for r in rs) / len(rs):.3f}** | {per_seed('best')} | "
                  f"{' / '.join(f'{x:.3f}' for x in lows)} | {'yes' if ok else 'no'} | {per_seed('env_steps', '{:,}')} |")
    return md


def _markdown(out: dict, compare_at: float | None = None) -> str:
    tasks = sorted({t for r in out["rows"] for t in r.get("after_per_task", {})})
    at = f"at {compare_at / 60:.0f} min" if compare_at else ""
    md = [f"### {out['date']}, 2-core CPU, tasks {' '.join(out['tasks'])}", "",
          "Held-out success (mean over tasks) before RL, after RL and best; wall time includes the evaluations; "
          "`t>=0.9` is the wall time of the first evaluation at or above 0.90; cpu s is the training process's CPU "
          "time (without the Ray env workers' when the command says --runner ray; the machine may be shared, so wall "
          "time depends on what else ran).", "",
          "| method | before | " + (f"{at} | " if compare_at else "") + "after | best | t>=0.9 s | env steps | wall s | "
          "cpu s | command |",
          "| --- | ---: | " + ("---: | " if compare_at else "") + "---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in out["rows"]:
        t90 = r.get("time_to_0.9")
        mid = ""
        if compare_at:
            a = _at(r["curve"], compare_at)
            mid = ("-" if a is None else f"{a:.2f}") + " | "
        md.append(f"| {r['method']} | {r['before']:.2f} | {mid}{r['after']:.2f} | {r['best']:.2f} | "
                  f"{'-' if t90 is None else f'{t90:.0f}'} | {r['env_steps']:,} | {r['wall_s']:.0f} | "
                  f"{r.get('cpu_s', float('nan')):.0f} | `{r['command']}` |")
    md += _seed_table(out["rows"])
    if tasks:
        md += ["", "Per task after RL (before in brackets):", "", "| method | " + " | ".join(tasks) + " |",
               "| --- |" + " ---: |" * len(tasks)]
        for r in out["rows"]:
            cells = [f"{r['after_per_task'].get(t, float('nan')):.2f} ({r['before_per_task'].get(t, float('nan')):.2f})"
                     for t in tasks]
            md.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["MT10"])
    ap.add_argument("--demos", type=int, default=10)
    ap.add_argument("--policy", choices=["mlp", "vla", "pi0", "pi05"], default="mlp",
                    help="mlp: state MLP; vla: VLA-mini on 64x64 corner2 images + instruction + state")
    ap.add_argument("--sft-steps", type=int, default=None, help="default 30000 (mlp) / 600 (vla)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--time-limit", type=float, default=None, help="wall seconds per method (None = all iterations)")
    ap.add_argument("--task-sampling", choices=["uniform", "adaptive"], default="adaptive")
    ap.add_argument("--episodes-per-iteration", type=int, default=48)
    ap.add_argument("--max-episode-steps", type=int, default=300)
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=None, help="iterations (default: iterations // 4)")
    ap.add_argument("--root", default=None, help="default runs/bench_learning/<tasks>")
    ap.add_argument("--prepare-only", action="store_true", help="collect demos and train SFT, then exit")
    ap.add_argument("--runner", choices=["local", "ray"], default="local",
                    help="ray: the environments step in --env-workers Ray actor processes (uses more than one core)")
    ap.add_argument("--env-workers", type=int, default=2)
    ap.add_argument("--pi0-size", choices=["tiny", "small", "full"], default="small", help="--policy pi0 / pi05")
    ap.add_argument("--sft-hidden", type=int, default=256, help="width of the state MLP")
    ap.add_argument("--seed", type=int, default=0, help="RL seed (contexts, sampling noise); SFT is shared")
    ap.add_argument("--std-range", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                    help="Flow-Noise: [std_min, std_max] of the noise head (default TrainConfig's 0.08 0.16)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="TrainConfig overrides, as on pirl train's command line (e.g. optim.lr=1e-5 ppo.target_kl=0.02)")
    ap.add_argument("--label", default="", help="suffix of the run directory and the results row (keeps other rows); joined with '_' "
                         "unless it starts with '_' or '-' (write --label=-x for the latter)")
    ap.add_argument("--compare-at", type=float, default=None,
                    help="also tabulate each method's held-out success at this wall time (seconds)")
    ap.add_argument("--resume", action="store_true",
                    help="continue each method's run from its last checkpoint (e.g. with a longer --time-limit)")
    args = ap.parse_args()
    apply_overrides(TrainConfig, {}, args.set)  # a mistyped key fails now, not after the demos and SFT
    torch.set_num_threads(1)
    tasks = args.tasks[0] if len(args.tasks) == 1 else tuple(args.tasks)
    vla = args.policy != "mlp"  # every other kind reads the camera
    tag = _tag(args.tasks) + (f"-{args.policy}" if vla else "")
    camera = "corner2" if vla else None
    root = Path(args.root or f"runs/bench_learning/{tag}")
    data = root / "data"
    if not (data / "meta" / "info.json").exists():
        collect(CollectConfig(tasks=tasks, episodes_per_task=args.demos, action_noise=0.1, camera=camera,
                              image_size=64, max_episode_steps=args.max_episode_steps), data)
    policy = root / "sft" / "final.safetensors"
    if not policy.exists():
        steps = args.sft_steps or (600 if vla else 30000)
        sft(SFTConfig(dataset=str(data), out_dir=str(root / "sft"), policy=args.policy, action_horizon=8, chunk=4,
                      steps=steps, batch_size=32 if vla else 128, hidden=args.sft_hidden, eval_every=-1,
                      pi0=Pi0Options(size=args.pi0_size)), log=None)
    if args.prepare_only:
        return
    command = "python bench/bench_learning.py " + " ".join(sys.argv[1:])
    results = Path(f"bench/results/learning_{root.name}.json")
    for name in args.methods:
        spec = dict(METHODS[name])
        G = spec.pop("group_size", 1)
        cfg = TrainConfig(
            policy=str(policy), env=EnvConfig(tasks=tasks, chunk=4, max_episode_steps=args.max_episode_steps,
                                              camera=camera, image_size=64),
            num_groups=max(1, args.episodes_per_iteration // G), group_size=G, iterations=args.iterations,
            time_limit_s=args.time_limit, task_sampling=args.task_sampling,
            eval_every=args.eval_every or max(1, args.iterations // 4), eval_episodes_per_task=args.eval_episodes,
            eval_num_envs=10, videos_per_task=0, checkpoint_every=args.eval_every or max(1, args.iterations // 4),
            runner=RunnerConfig(kind=args.runner, env_workers=args.env_workers), seed=args.seed,
            **({"std_range": tuple(args.std_range)} if args.std_range else {}), **spec,
        )
        if args.set:
            cfg = load_config(TrainConfig, to_dict(cfg), args.set)
        label = args.label if not args.label or args.label[0] in "_-" else "_" + args.label
        name = name + label
        run = root / name
        if train(replace(cfg), run, resume=args.resume) != 0:
            # an interrupted run's summary is not its result: the row waits for the resumed run to finish
            print(f"{name}: interrupted, no results row written; continue with the same command and --resume")
            sys.exit(130)
        evals = [r for r in read_metrics(run / "metrics.jsonl") if "eval/success" in r]
        records = read_metrics(run / "metrics.jsonl")
        cpu = {r["step"]: r["perf/cpu_s"] for r in records if "perf/cpu_s" in r}
        curve = [(r["env_steps"], r["wall_time"], r["eval/success"], cpu.get(r["step"], 0.0)) for r in evals]
        summary = json.loads((run / "summary.json").read_text())
        t90 = next((w for _, w, s, _ in curve if s >= 0.9), None)
        row = {"method": name, "before": summary["success_before_mean"], "after": summary["success_after_mean"],
               "best": summary["best_success"], "env_steps": summary["env_steps"],
               "wall_s": summary["wall_time_s"], "time_to_0.9": t90, "cpu_s": curve[-1][3],
               "before_per_task": summary["success_before"], "after_per_task": summary["success_after"],
               "curve": curve, "command": command}
        print(f"{name:16s} {row['before']:.2f} -> {row['after']:.2f} (best {row['best']:.2f}) "
              f"{row['env_steps']:,} env steps {row['wall_s']:.0f} s", flush=True)
        out = _merge_row(results, args.tasks, row)
        md = _markdown(out, args.compare_at)
        results.with_suffix(".md").write_text(md)
        print(md)


if __name__ == "__main__":
    run_main(main)
