"""Host-memory soak of `pirl train runner.kind=ray`: is RSS bounded over a long run?

Runs `pirl train` (point mass by default: the simulator costs nothing, so the run is Ray
transport, weight publishing, the learner group and the PPO update, over and over) for
``--minutes`` and samples the resident memory of every process of the run every
``--interval`` seconds: the trainer (Ray driver), each Ray worker process by actor class,
raylet (which holds the object store), gcs_server and Ray's other helpers, plus tmpfs use
of /dev/shm (the object store's shared memory). Slopes are least-squares fits in MB/min
over the whole run and over its second half (after warm-up).

    PYTHONPATH=. nice -n 19 python bench/bench_ray_memory.py --minutes 30
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import ray  # noqa: F401 - puts Ray's bundled psutil (ray/thirdparty_files) on sys.path
import psutil
from _common import run_main, write_results

MB = 2**20


def role(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    head = cmd[0] if cmd else name
    if head.startswith("ray::"):
        # the proctitle names the running method (ray::RolloutWorker.act): group by actor class
        return "worker " + head[5:].split(".")[0].split(" ")[0]
    for key in ("raylet", "gcs_server"):
        if key in name or key in head:
            return key
    return "ray other"


def sample(driver: psutil.Process) -> dict[str, float]:
    """RSS in MB per role (summed over its processes), the total and /dev/shm use."""
    rss: dict[str, float] = defaultdict(float)
    rss["driver"] = driver.memory_info().rss / MB
    for child in driver.children(recursive=True):
        try:
            r = role(child)
            rss[r] += child.memory_info().rss / MB
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    rss.pop("gone", None)
    rss["total"] = sum(v for k, v in rss.items())
    rss["/dev/shm used"] = shutil.disk_usage("/dev/shm").used / MB
    return dict(rss)


def slope(t_min: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(t_min, y, 1)[0]) if len(t_min) >= 3 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    ap.add_argument("--env-workers", type=int, default=2)
    ap.add_argument("--rollout-workers", type=int, default=1)
    ap.add_argument("--learner-processes", type=int, default=2)
    ap.add_argument("--num-groups", type=int, default=16)
    ap.add_argument("--worker-cpus", type=float, default=0.5, help="Ray CPUs per actor (2 cores hold 4 actors at 0.5)")
    ap.add_argument("--name", default="ray_memory", help="results file name under bench/results/")
    ap.add_argument("overrides", nargs="*", help="extra `pirl train` key=value overrides")
    args = ap.parse_args()

    import torch

    from pirl.policies.io import save_policy
    from pirl.policies.mlp import make_mlp_policy

    work = Path(tempfile.mkdtemp(prefix="pirl_ray_soak_"))
    torch.manual_seed(0)
    save_policy(make_mlp_policy(4, 2, action_horizon=4, hidden=64, depth=2), work / "policy.safetensors")
    train = [
        sys.executable, "-m", "pirl.cli.main", "train", "--run-dir", str(work / "run"),
        f"policy={work / 'policy.safetensors'}", "env.suite=point_mass", "env.chunk=4",
        f"num_groups={args.num_groups}", "iterations=1000000", f"time_limit_s={args.minutes * 60}",
        "eval_every=50", "checkpoint_every=50", "eval_num_envs=4", "eval_episodes_per_task=4", "videos_per_task=0",
        "runner.kind=ray", f"runner.env_workers={args.env_workers}", f"runner.rollout_workers={args.rollout_workers}",
        f"runner.learner_processes={args.learner_processes}", f"runner.worker_cpus={args.worker_cpus}",
        *args.overrides,
    ]
    print(" ".join(train), flush=True)
    log = open(work / "train.log", "w")
    proc = subprocess.Popen(train, stdout=log, stderr=subprocess.STDOUT)
    driver = psutil.Process(proc.pid)
    t0 = time.time()
    samples: list[dict[str, float]] = []
    while proc.poll() is None:
        try:
            s = sample(driver)
        except psutil.NoSuchProcess:
            break
        s["t_min"] = (time.time() - t0) / 60
        samples.append(s)
        print(f"{s['t_min']:6.1f} min  total {s['total']:8.1f} MB  " +
              "  ".join(f"{k} {v:.0f}" for k, v in s.items() if k not in ("total", "t_min")), flush=True)
        # short sleeps: notice the end of the run promptly
        deadline = time.time() + args.interval
        while time.time() < deadline and proc.poll() is None:
            time.sleep(1.0)
    rc = proc.wait()
    log.close()
    iterations = sum(1 for line in open(work / "run" / "metrics.jsonl")) if (work / "run" / "metrics.jsonl").exists() else 0

    # steady state: from when every actor is up (total within 10% of its peak) until shutdown begins
    peak = max(s["total"] for s in samples)
    up = [i for i, s in enumerate(samples) if s["total"] >= 0.9 * peak]
    steady = samples[up[0]: up[-1] + 1]
    t_all = np.array([s["t_min"] for s in steady])
    roles = list(dict.fromkeys(k for s in steady for k in s if k != "t_min"))
    per_role = {}
    for k in roles:
        rows = [(s["t_min"], s[k]) for s in steady if k in s]  # idle Ray workers come and go
        t, y = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
        half = t >= t_all[0] + (t_all[-1] - t_all[0]) / 2
        per_role[k] = {"start_mb": float(y[0]), "end_mb": float(y[-1]), "max_mb": float(y.max()),
                       "samples": len(y), "slope_mb_per_min": slope(t, y),
                       "slope_second_half_mb_per_min": slope(t[half], y[half])}
    payload = {"train_command": " ".join(train[1:]), "returncode": rc, "minutes": float(samples[-1]["t_min"]),
               "steady_from_to_min": [float(t_all[0]), float(t_all[-1])],
               "samples": len(samples), "metrics_lines": iterations, "roles": per_role, "series": samples,
               "run_dir": str(work / "run")}
    rows = "\n".join(f"| {k} | {v['start_mb']:.0f} | {v['end_mb']:.0f} | {v['max_mb']:.0f} | "
                     f"{v['slope_mb_per_min']:+.2f} | {v['slope_second_half_mb_per_min']:+.2f} |" for k, v in per_role.items())
    md = (f"`pirl train` (subprocess, exit code {rc}): `{' '.join(train[3:])}`\n\n"
          f"{payload['minutes']:.1f} min sampled every {args.interval:.0f} s ({len(samples)} samples; steady state "
          f"{t_all[0]:.1f}-{t_all[-1]:.1f} min, which the table covers), "
          f"{iterations} metric lines (iterations + evaluations) logged.\n\n"
          "RSS summed over each role's processes (shared pages of torch/ray libraries count once per process):\n\n"
          "| role | start MB | end MB | max MB | slope MB/min | slope, 2nd half |\n|---|---:|---:|---:|---:|---:|\n"
          f"{rows}\n")
    payload["ray_env"] = {k: v for k, v in os.environ.items() if k.startswith("RAY_")}
    if payload["ray_env"]:
        md += "\nRay settings from the environment: " + ", ".join(f"`{k}={v}`" for k, v in payload["ray_env"].items()) + "\n"
    write_results(args.name, payload, md)


if __name__ == "__main__":
    run_main(main)
