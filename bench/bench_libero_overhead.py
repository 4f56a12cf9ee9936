"""The LIBERO adapter's own cost: actions/s through pirl's adapter beside LIBERO's ControlEnv stepped directly.

    PYTHONPATH=. python bench/bench_libero_overhead.py [--steps 300] [--rounds 3] [--image-size 0]

Both run in this process, one after the other in alternating rounds (a shared machine's load hits both
alike), on the same scene, built the same way (state only unless --image-size; no robosuite camera
observations), with the same random actions; the episode limit is lifted so that both time stepping only.
Rates are actions per CPU second of this process (less sensitive to other jobs than wall time).
"raw" is what openpi's LIBERO loop does per action: ``obs, reward, done, info = env.step(action)``; with
pixels it also renders the adapter's cameras once per chunk, as the adapter does.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _common import adapter_overhead, run_main, write_results

from pirl.envs.base import Context


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="libero_spatial")
    ap.add_argument("--task", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300, help="actions per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=0, help="0 = state only")
    a = ap.parse_args()

    from pirl.envs import libero as L

    assets = os.environ.get("PIRL_LIBERO_ASSETS", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                               "libero-assets"))
    env = L.make_libero(suite=a.suite, tasks=(a.task,), chunk=a.chunk, image_size=a.image_size, assets_path=assets,
                        max_episode_steps=10**9)
    env.reset([Context(0, 0)])
    sub = env._vec.envs[0]  # the raw side is a second ControlEnv built exactly as the adapter builds its own
    raw_sub = L.LiberoSubEnv(0, sub.cfg, sub.suite_indices)
    raw_sub.load_task(0)
    raw_sub.start(0)
    raw = raw_sub._env
    cams = [L.CAMERAS[c][0] for c in sub.cfg.cameras] if a.image_size else []
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.3, 0.3, (a.steps, L.ACTION_DIM))  # moderate moves: no collisions, no crashes
    actions[:, -1] = np.sign(actions[:, -1])

    def run_raw() -> float:
        t = time.process_time()
        for i, action in enumerate(actions):
            raw.step(action)
            if cams and i % a.chunk == a.chunk - 1:
                for c in cams:
                    raw.sim.render(camera_name=c, width=a.image_size, height=a.image_size)
        return a.steps / (time.process_time() - t)

    rates, med, overhead, table = adapter_overhead(run_raw, env, actions, a.chunk, a.rounds)
    env.close()
    raw_sub.close()
    obs = f"pixels {a.image_size}px (agentview + wrist, once per chunk)" if a.image_size else "state only"
    note = (f"{a.suite} task {a.task}, {obs}, chunk {a.chunk}, {a.steps} random actions per round, one process "
            "(2 shared CPU cores).")
    name = f"libero_overhead{'_px' if a.image_size else ''}"
    write_results(name, {"args": vars(a), "rates": rates, "median": med, "overhead": overhead}, note + "\n\n" + table)


if __name__ == "__main__":
    run_main(main)
