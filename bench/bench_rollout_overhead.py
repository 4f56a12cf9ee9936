"""The RL loop's own overhead: env steps/s of `pirl train` rollouts vs the raw simulator, in one run.

Both sides step the same MetaWorld vector env (same tasks, N, chunk, episode limit) for whole
episodes: the baseline with uniform random action chunks and no learning code, the other
through RolloutCollector (policy inference with hybrid Flow-SDE, log-probs, values, buffer
writes, bootstrap values). Target (issue 5): ratio >= 0.8.

Run: .venv/bin/python bench/bench_rollout_overhead.py  -> bench/results/rollout_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from pirl.envs.base import Context
from pirl.envs.registry import EnvConfig, make_env
from pirl.flow import SamplerConfig
from pirl.policies import make_mlp_policy
from pirl.train.rollout import CollectorConfig, RolloutCollector
from _common import run_main


def raw_rollout(env, contexts, rng) -> int:
    """Whole episodes with random chunks; returns env steps (actions executed)."""
    env.reset(contexts)
    running = np.ones(env.num_envs, bool)
    steps = np.zeros(env.num_envs, np.int64)
    for _ in range(env.max_chunk_steps):
        res = env.step(rng.uniform(-1, 1, (env.num_envs, 8, env.action_dim)).astype(np.float32))
        steps = np.where(running, res.info["episode_length"], steps)
        running &= ~(res.terminated | res.truncated)
        if not running.any():
            break
    return int(steps.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["reach-v3", "push-v3"])
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--episode-steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/rollout_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = EnvConfig(tasks=tuple(args.tasks), chunk=4, max_episode_steps=args.episode_steps)
    env = make_env(cfg, args.num_envs)
    policy = make_mlp_policy(env.state_dim, env.action_dim, action_horizon=8, num_tasks=len(env.task_names))
    collector = RolloutCollector(env, policy, SamplerConfig(method="flow_sde", steps=4, logp_steps=4),
                                 CollectorConfig(num_groups=args.num_envs))
    rng = np.random.default_rng(0)
    for task in range(len(env.task_names)):  # build every task's scene in every sub-env before timing
        env.reset([Context(task, 0)] * args.num_envs)
    collector.collect()
    raw_rate, pirl_rate = [], []
    for r in range(args.repeats):  # interleaved, so drifts of a shared machine hit both alike
        contexts = [Context(i % len(env.task_names), 1000 * r + i) for i in range(args.num_envs)]
        t0 = time.perf_counter()
        n = raw_rollout(env, contexts, rng)
        raw_rate.append(n / (time.perf_counter() - t0))
        metrics = collector.collect().metrics
        pirl_rate.append(metrics["rollout/env_steps"] / metrics["perf/rollout_s"])
    env.close()
    raw, ours = float(np.median(raw_rate)), float(np.median(pirl_rate))
    report = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} 2-core CPU, torch threads 1",
        "command": "python bench/bench_rollout_overhead.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                        vars(args).items() if k != "out"),
        "tasks": args.tasks, "num_envs": args.num_envs,
        "raw_env_steps_per_s": raw, "pirl_rollout_env_steps_per_s": ours, "ratio": ours / raw, "target": 0.8,
    }
    print(f"raw simulator, random chunks : {raw:8.0f} env steps/s")
    print(f"pirl rollouts (MLP, Flow-SDE): {ours:8.0f} env steps/s")
    print(f"ratio {ours / raw:.2f} (target >= 0.8)")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
