"""The ManiSkill adapter's own cost: actions/s through pirl's adapter beside ManiSkill's env stepped directly.

    PYTHONPATH=. python bench/bench_maniskill_overhead.py [--task PickCube-v1] [--steps 500] [--rounds 3] [--image-size 0]

Both run in this process in alternating rounds (a shared machine's load hits both alike), on the same task and
controller, built the same way (``pirl.envs.maniskill.make_raw``), with the same random actions; the episode limit
is lifted so that both time stepping only. Rates are actions per CPU second of this process. "raw" is a plain
gymnasium loop, ``obs, reward, terminated, truncated, info = env.step(action)``, observation every action (as
ManiSkill returns it); the adapter executes chunks and observes (renders, with --image-size) once per chunk.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import adapter_overhead, run_main, setup_threads, write_results

from pirl.envs.base import Context


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="PickCube-v1")
    ap.add_argument("--control-mode", default="pd_joint_delta_pos")
    ap.add_argument("--steps", type=int, default=500, help="actions per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=0, help="0 = state only")
    ap.add_argument("--name", default=None, help="results file stem (default maniskill_overhead[_px])")
    a = ap.parse_args()
    setup_threads(1)

    from pirl.envs import maniskill as M

    env = M.make_maniskill(tasks=a.task, chunk=a.chunk, image_size=a.image_size, control_mode=a.control_mode,
                           max_episode_steps=10**9, terminate_on_success=False)
    env.reset([Context(0, 0)])
    raw = M.make_raw(a.task, num_envs=1, control_mode=a.control_mode, image_size=a.image_size, reward="sparse",
                     gpu=False)
    raw.reset(seed=0)
    D = env.action_dim
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.3, 0.3, (a.steps, D)).astype(np.float32)  # moderate moves: no crashes

    def run_raw() -> float:
        t = time.process_time()
        for action in actions:
            raw.step(action[None])
        return a.steps / (time.process_time() - t)

    rates, med, overhead, table = adapter_overhead(run_raw, env, actions, a.chunk, a.rounds)
    env.close()
    raw.close()
    obs = f"pixels {a.image_size}px (base_camera)" if a.image_size else "state only"
    note = (f"{a.task}, {a.control_mode}, {obs}, chunk {a.chunk}, {a.steps} random actions per round, one process "
            "(CPU time of this process; the machine was shared).")
    name = a.name or f"maniskill_overhead{'_px' if a.image_size else ''}"
    write_results(name, {"args": vars(a), "rates": rates, "median": med, "overhead": overhead}, note + "\n\n" + table)


if __name__ == "__main__":
    run_main(main)
