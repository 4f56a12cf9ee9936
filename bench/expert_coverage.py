"""What the scripted LIBERO expert (pirl.envs.libero_expert) solves: every task of the given suites from init states
0..N-1, one episode each, within the suite's episode limit (state only, one sub-env, one action per step).

    PYTHONPATH=. python bench/expert_coverage.py [--suites libero_spatial libero_object] [--init-states 5]

An episode counts as solved when the env's success check passes at any step (the episode then ends); steps are
actions after the warm-up, up to that success.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from typing import Any

import numpy as np
from _common import run_main, write_results

from pirl.envs.base import Context


def run_task(suite: str, task: int, init_states: int, assets: str) -> dict[str, Any]:
    """One episode of the expert from each of the task's init states 0..init_states-1."""
    from pirl.envs import libero as L
    from pirl.envs.libero_expert import PickPlaceExpert, grasp_for_task

    env = L.make_libero(suite=suite, tasks=(task,), num_envs=1, chunk=1, object_state=True, assets_path=assets)
    name = env.task_names[0]
    episodes = []
    try:
        for i in range(init_states):
            obs = env.reset([Context(0, i)])  # ordered init states, no held-out split: seed i is init state i
            expert = PickPlaceExpert([grasp_for_task(name)])
            steps, solved = 0, False
            while not env.ended.all():
                res = env.step(expert.act(obs["state"])[:, None])
                obs, steps, solved = res.obs, steps + 1, solved or bool(res.success[0])
            episodes.append({"init_state": i, "success": solved, "steps": steps})
    finally:
        env.close()
    ok = [e["steps"] for e in episodes if e["success"]]
    return {"task": task, "name": name, "successes": len(ok), "episodes": len(episodes), "limit": L.MAX_STEPS[suite],
            "mean_steps": float(np.mean(ok)) if ok else None, "max_steps": max(ok, default=None), "runs": episodes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suites", nargs="+", default=["libero_spatial", "libero_object"])
    ap.add_argument("--init-states", type=int, default=5, help="episodes per task, from init states 0..N-1")
    a = ap.parse_args()
    assets = os.environ.get("PIRL_LIBERO_ASSETS", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                               "libero-assets"))
    from pirl.envs import libero as L

    t0 = time.perf_counter()
    results: dict[str, list[dict]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for suite in a.suites:
            results[suite] = []
            for task in range(len(L.suite_tasks(suite))):
                r = run_task(suite, task, a.init_states, assets)
                print(f"{suite} {task} {r['name']}: {r['successes']}/{r['episodes']}", flush=True)
                results[suite].append(r)
    lines = []
    for suite, rows in results.items():
        solved, total = sum(r["successes"] for r in rows), sum(r["episodes"] for r in rows)
        lines += [f"\n**{suite}** (limit {L.MAX_STEPS[suite]} actions): {solved}/{total} episodes solved\n",
                  "| # | task | solved | mean steps (solved) | max steps (solved) |", "| ---: | --- | ---: | ---: | ---: |"]
        for r in rows:
            steps = "- | -" if r["mean_steps"] is None else f"{r['mean_steps']:.0f} | {r['max_steps']}"
            lines.append(f"| {r['task']} | {r['name']} | {r['successes']}/{r['episodes']} | {steps} |")
    wall = time.perf_counter() - t0
    note = (f"Scripted expert (privileged object positions, `object_state=True`), init states 0..{a.init_states - 1} "
            f"of every task, one episode each, state only; {wall:.0f} s in all.")
    write_results("expert_coverage", {"args": vars(a), "seconds": wall, "results": results}, note + "\n" + "\n".join(lines))


if __name__ == "__main__":
    run_main(main)
