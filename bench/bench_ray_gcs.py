"""Ray's GCS memory vs the number of actor calls, with and without Ray task events.

A pirl rollout makes one actor call per env worker per chunk step (thousands per minute on
MetaWorld), and Ray's GCS keeps an event record for every task by default (up to
``task_events_max_num_task_in_gcs`` = 100,000 of them), so its resident memory climbs for a long
time. This script makes the same pattern of calls (``--workers`` actors, a small numpy payload
each, results fetched together) on a fresh local Ray, with task events on and then off
(``enable_task_events=False``, what pirl's env, rollout and learner actors use), and samples
gcs_server's RSS every ``--every`` calls.

    PYTHONPATH=. python bench/bench_ray_gcs.py --calls 60000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray
import psutil  # Ray's bundled copy (ray/thirdparty_files), importable once ray is
from _common import run_main, write_results

MB = 2**20


class Echo:
    def step(self, x: np.ndarray) -> np.ndarray:
        return x + 1.0


def gcs_rss_mb() -> float:
    for p in psutil.Process().children(recursive=True):
        try:
            if "gcs_server" in p.name() or any("gcs_server" in c for c in p.cmdline()[:1]):
                return p.memory_info().rss / MB
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise RuntimeError("no gcs_server child process: is this driver the one that started Ray?")


def measure(task_events: bool, calls: int, workers: int, every: int) -> dict:
    from pirl.distributed.env import init_ray

    init_ray(num_cpus=workers)
    actors = [ray.remote(num_cpus=1, enable_task_events=task_events)(Echo).remote() for _ in range(workers)]
    x = np.zeros((24, 4, 4), np.float32)  # a chunk of actions for 24 sub-envs
    ray.get([a.step.remote(x) for a in actors])
    time.sleep(2.0)
    curve, done, t0 = [(0, gcs_rss_mb())], 0, time.perf_counter()
    while done < calls:
        ray.get([a.step.remote(x) for a in actors])
        done += workers
        if done % every < workers:
            curve.append((done, gcs_rss_mb()))
    secs = time.perf_counter() - t0
    time.sleep(5.0)  # events are flushed to the GCS once a second
    curve.append((done, gcs_rss_mb()))
    ray.shutdown()
    growth = curve[-1][1] - curve[0][1]
    return {"task_events": task_events, "calls": done, "calls_per_s": round(done / secs, 1),
            "gcs_start_mb": round(curve[0][1], 1), "gcs_end_mb": round(curve[-1][1], 1),
            "growth_mb_per_10k_calls": round(growth / done * 1e4, 2),
            "curve": [(c, round(m, 1)) for c, m in curve]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=60000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--every", type=int, default=10000, help="calls between samples")
    args = ap.parse_args()
    rows = []
    for events in (True, False):
        r = measure(events, args.calls, args.workers, args.every)
        print({k: v for k, v in r.items() if k != "curve"}, flush=True)
        rows.append(r)
    lines = ["| task events | actor calls | calls/s | gcs_server RSS start → end (MB) | growth per 10k calls (MB) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {'on (Ray default)' if r['task_events'] else 'off (pirl actors)'} | {r['calls']:,} | "
                     f"{r['calls_per_s']} | {r['gcs_start_mb']} → {r['gcs_end_mb']} | {r['growth_mb_per_10k_calls']} |")
    write_results("ray_gcs", {"args": vars(args), "rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    run_main(main)
