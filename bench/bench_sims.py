"""Environment steps per second for one LIBERO and one ManiSkill task, state-only and with pixels.

    python bench/bench_sims.py [--steps 100] [--image-size 128] [--out bench/results/sims.json]

One sub-environment in this process (sync vector), zero actions, chunk 5; creation and resets
are timed apart from stepping. Pixel runs render every observed camera once per chunk, which is
what a chunked policy sees (LIBERO: agentview + wrist; ManiSkill: base_camera). The RL runs on
these suites are later work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pirl.envs.base import Context
from _common import run_main


def bench(make: Callable[[], Any], steps: int, chunk: int) -> dict[str, float]:
    t = time.perf_counter()
    env = make()
    env.reset([Context(0, 0)])
    created = time.perf_counter() - t
    t = time.perf_counter()
    env.reset([Context(0, 1)])
    reset = time.perf_counter() - t
    actions = np.zeros((1, chunk, env.action_dim), np.float32)
    done = 0
    t = time.perf_counter()
    while done < steps:
        r = env.step(actions)
        done += int(r.info["executed"].sum())
        if r.terminated[0] or r.truncated[0]:
            env.reset([Context(0, done)])  # counted in the time: episodes end in real runs too
    elapsed = time.perf_counter() - t
    env.close()
    return {"create_s": round(created, 2), "reset_s": round(reset, 3), "steps": done,
            "steps_per_s": round(done / elapsed, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--chunk", type=int, default=5)
    p.add_argument("--only", choices=["libero", "maniskill"], default=None)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    s, c, results = a.image_size, a.chunk, {}
    if a.only in (None, "libero"):
        from pirl.envs.libero import make_libero

        # beside the checkout, as CI lays out ../shared, unless the variable says otherwise
        beside = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "libero-assets")
        assets = os.environ.get("PIRL_LIBERO_ASSETS", os.path.normpath(beside))
        for name, size in (("state", 0), ("pixels", s)):
            results[f"libero_spatial/0/{name}"] = bench(
                lambda: make_libero(suite="libero_spatial", tasks=(0,), chunk=c, image_size=size, assets_path=assets), a.steps, c)
            print(name, results[f"libero_spatial/0/{name}"], flush=True)
    if a.only in (None, "maniskill"):
        from pirl.envs.maniskill import make_maniskill

        for name, size in (("state", 0), ("pixels", s)):
            results[f"PickCube-v1/{name}"] = bench(
                lambda: make_maniskill(tasks="PickCube-v1", chunk=c, image_size=size), a.steps * 5, c)
            print(name, results[f"PickCube-v1/{name}"], flush=True)
    report = {"machine": f"{platform.machine()} {os.cpu_count()} cpus", "image_size": s, "chunk": c,
              "loadavg_1m": round(os.getloadavg()[0], 2), "results": results}
    print(json.dumps(report, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    run_main(main)
