"""Held-out success of policy files over several ODE noise seeds, through `pirl eval`: one evaluation seed reads a
closed-loop figure that moves by several points with the seed (the trainer's own evaluation is one such seed), so
a lift is quoted as the mean over seeds of the same held-out episodes.

Every (policy, seed) runs `pirl eval --run-dir <root>/<label>-s<seed> policy=FILE seed=S <keys>` in a subprocess
(the command a user runs); its eval.json gives the per-task rates. Writes bench/results/<--name>.{json,md}: per seed,
the mean over seeds, per-task means, and each policy's difference from the first one.

    python bench/bench_eval_seeds.py --name libero_object4_offsets_seeds --root runs/eval_seeds \\
        --policies sft=SFT.safetensors rl=RL.safetensors --seeds 0 1 2 3 -- env.suite=libero \\
        env.tasks=libero_object:0,1,2,3 env.object_state=true env.object_offsets=true env.held_out_init_states=10 \\
        env.chunk=4 env.vector=async episodes_per_task=10 num_envs=5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import run_main, write_results


def _label_file(item: str) -> tuple[str, str]:
    label, sep, path = item.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"--policies takes LABEL=FILE, got {item!r}")
    return label, path


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def score_over_seeds(policies: list[tuple[str, str]], seeds: list[int], root: Path, keys: list[str]) -> dict[str, dict]:
    """`pirl eval` of every (label, file) at every seed, in subprocesses; per label: per-seed and mean success (mean
    over tasks), per-task means over seeds, sampler and protocol."""
    from pirl.errors import InputError

    rows: dict[str, dict] = {}
    for label, path in policies:
        per_seed, tasks = {}, {}
        for seed in seeds:
            run = root / f"{label}-s{seed}"
            cmd = [sys.executable, "-m", "pirl.cli.main", "eval", "--run-dir", str(run), f"policy={path}",
                   f"seed={seed}", *keys]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise InputError(f"`{' '.join(cmd)}` failed: {(res.stderr.strip().splitlines() or ['(no output)'])[-1]}")
            out = json.loads((run / "eval.json").read_text())
            per_seed[seed] = out["success"]
            for task, rate in out["per_task"].items():
                tasks.setdefault(task, []).append(rate)
            print(f"{label:>8} seed {seed}: {out['success']:.3f} ({time.perf_counter() - t0:.0f} s, "
                  f"{out['episodes']} episodes)", flush=True)
        rows[label] = {"file": path, "per_seed": per_seed, "mean": float(np.mean(list(per_seed.values()))),
                       "per_task": {t: float(np.mean(r)) for t, r in tasks.items()}, "sampler": out["sampler"],
                       "protocol": out["protocol"], "episodes_per_seed": out["episodes"]}
    return rows


def seeds_markdown(rows: dict[str, dict], seeds: list[int], keys: list[str]) -> str:
    """Per-seed table with each policy's mean and its difference from the first policy's, then per-task means."""
    base = next(iter(rows))
    task_names = list(rows[base]["per_task"])
    md = (f"`pirl eval {' '.join(keys)}`, seeds {', '.join(map(str, seeds))} (ODE noise; the same held-out "
          f"episodes for every seed), {rows[base]['episodes_per_seed']} episodes per seed; sampler "
          f"{rows[base]['sampler']}, protocol {rows[base]['protocol']}.\n\n"
          f"| policy | {' | '.join(f'seed {s}' for s in seeds)} | mean | vs {base} |\n"
          f"| --- |{' ---: |' * (len(seeds) + 2)}\n")
    for label, row in rows.items():
        diff = "" if label == base else f"{100 * (row['mean'] - rows[base]['mean']):+.2f} pts"
        cells = " | ".join(_pct(row["per_seed"][s]) for s in seeds)
        md += f"| {label} | {cells} | **{100 * row['mean']:.2f} %** | {diff} |\n"
    md += f"\nPer task, mean over seeds:\n\n| task | {' | '.join(rows)} |\n| --- |{' ---: |' * len(rows)}\n"
    for t in task_names:
        md += f"| {t} | {' | '.join(_pct(r['per_task'][t]) for r in rows.values())} |\n"
    return md + "\nFiles: " + ", ".join(f"{label} `{row['file']}`" for label, row in rows.items()) + "\n"


def main() -> None:
    argv = sys.argv[1:]
    keys = argv[argv.index("--") + 1:] if "--" in argv else []
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", nargs="+", required=True, type=_label_file, metavar="LABEL=FILE",
                    help="the first is the baseline the others' differences are taken from")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--root", default="runs/eval_seeds", help="run folder per (policy, seed)")
    ap.add_argument("--name", required=True, help="results file name (bench/results/NAME.{json,md})")
    from pirl.errors import MissingFileError

    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    for _, path in args.policies:
        if not Path(path).exists():
            raise MissingFileError(f"policy file {path} does not exist")

    rows = score_over_seeds(args.policies, args.seeds, Path(args.root), keys)
    md = seeds_markdown(rows, args.seeds, keys)
    write_results(args.name, {"keys": keys, "seeds": args.seeds, "policies": rows}, md)


if __name__ == "__main__":
    run_main(main)
