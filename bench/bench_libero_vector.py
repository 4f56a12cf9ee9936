"""Both cores for LIBERO rollouts: wall-clock env actions/s of a sync vector (sub-envs in this process) beside an
async one (one subprocess per sub-env), same task, same random actions.

    PYTHONPATH=. python bench/bench_libero_vector.py [--num-envs 4] [--chunks 30] [--image-size 0]

Creation and the first reset are timed apart from stepping; rates are actions summed over the sub-envs per wall
second (what a rollout batch gets). The episode limit is lifted so that both time stepping only.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _common import run_main, write_results

from pirl.envs.base import Context


def measure(vector: str, a: argparse.Namespace, assets: str) -> dict[str, float]:
    from pirl.envs import libero as L

    t0 = time.perf_counter()
    env = L.make_libero(suite=a.suite, tasks=(a.task,), num_envs=a.num_envs, chunk=a.chunk,
                        image_size=a.image_size, assets_path=assets, max_episode_steps=10**9, vector=vector)
    env.reset([Context(0, i) for i in range(a.num_envs)])
    setup = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.3, 0.3, (a.chunks, a.num_envs, a.chunk, L.ACTION_DIM)).astype(np.float32)
    actions[..., -1] = np.sign(actions[..., -1])
    env.step(actions[0])  # warm-up
    t = time.perf_counter()
    for chunk in actions[1:]:
        env.step(chunk)
    wall = time.perf_counter() - t
    env.close()
    rate = (a.chunks - 1) * a.chunk * a.num_envs / wall
    print(f"{vector:5s}: {rate:.1f} env actions/s ({a.num_envs} sub-envs; setup {setup:.1f} s)", flush=True)
    return {"actions_per_s": rate, "setup_s": setup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="libero_spatial")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--num-envs", type=int, default=4)
    ap.add_argument("--chunks", type=int, default=30, help="chunks stepped per vector (after one warm-up chunk)")
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=0, help="0 = state only")
    a = ap.parse_args()
    assets = os.environ.get("PIRL_LIBERO_ASSETS", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                               "libero-assets"))
    res = {v: measure(v, a, assets) for v in ("sync", "async")}
    speedup = res["async"]["actions_per_s"] / res["sync"]["actions_per_s"]
    obs = f"pixels {a.image_size}px" if a.image_size else "state only"
    lines = ["| vector | env actions/s (wall, all sub-envs) | setup s |", "| --- | ---: | ---: |"]
    lines += [f"| {v} | {r['actions_per_s']:.1f} | {r['setup_s']:.1f} |" for v, r in res.items()]
    lines.append(f"\nasync / sync: {speedup:.2f}x")
    note = (f"{a.suite} task {a.task}, {obs}, {a.num_envs} sub-envs, chunk {a.chunk}, {a.chunks - 1} timed chunks of "
            f"random actions, {os.cpu_count()} CPU cores.")
    write_results(f"libero_vector{'_px' if a.image_size else ''}", {"args": vars(a), "results": res,
                                                                     "speedup": speedup}, note + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    run_main(main)
