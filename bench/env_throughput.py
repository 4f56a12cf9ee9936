"""Raw MetaWorld env steps/s (one action per step), state-only and with pixels, at 1 and 2 processes.

1 process: SyncVectorEnv with one sub-env in this process; 2 processes: AsyncVectorEnv ("spawn")
with one sub-env per process. Random actions, resets when every episode has ended.

    PYTHONPATH=. python bench/env_throughput.py --steps 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import run_main, write_results


def measure(task: str, procs: int, camera, size: int, steps: int, chunk: int = 1) -> float:
    from pirl.envs.base import Context
    from pirl.envs.metaworld import make_metaworld

    env = make_metaworld(tasks=task, num_envs=procs, chunk=chunk, camera=camera, image_size=size, vector="sync" if procs == 1 else "async")
    rng = np.random.default_rng(0)
    seed = 0
    try:
        env.reset([Context(0, seed + i) for i in range(procs)])
        env.step(rng.uniform(-1, 1, (procs, chunk, 4)))  # warm-up: renderer and GL context creation
        done, t0 = 0, time.perf_counter()
        while done < steps:
            if env.ended.all():
                seed += procs
                env.reset([Context(0, seed + i) for i in range(procs)])
            res = env.step(rng.uniform(-1, 1, (procs, chunk, 4)))
            done += int(res.info["executed"].sum())
        return done / (time.perf_counter() - t0)
    finally:
        env.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="pick-place-v3")
    ap.add_argument("--steps", type=int, default=2000, help="state-only actions per measurement")
    ap.add_argument("--pixel-steps", type=int, default=300, help="actions per pixel measurement")
    ap.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--camera", default="corner2")
    args = ap.parse_args()
    rows = []
    for procs in (1, 2):
        rows.append({"obs": "state", "size": None, "procs": procs, "chunk": 1, "steps_per_s": measure(args.task, procs, None, 64, args.steps)})
        print(rows[-1])
        # a chunk runs inside the worker: one round trip per 4 actions
        rows.append({"obs": "state", "size": None, "procs": procs, "chunk": 4, "steps_per_s": measure(args.task, procs, None, 64, args.steps, 4)})
        print(rows[-1])
        for size in args.sizes:
            rows.append({"obs": "pixels", "size": size, "procs": procs, "chunk": 1, "steps_per_s": measure(args.task, procs, args.camera, size, args.pixel_steps)})
            print(rows[-1])
    lines = ["| obs | image | processes | actions per step (chunk) | env actions/s (total) |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        img = f"{args.camera} {r['size']}x{r['size']}" if r["size"] else "-"
        lines.append(f"| {r['obs']} | {img} | {r['procs']} | {r['chunk']} | {r['steps_per_s']:.0f} |")
    note = f"Task {args.task}, random actions; pixels = one render per env step (EGL/Mesa llvmpipe, no MSAA/shadows/reflections)."
    write_results("env_throughput", {"task": args.task, "rows": rows}, note + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    run_main(main)
