"""Ray runner on MetaWorld: env steps/s with 1 vs 2 env-worker processes, pipelined vs not, and Ray's
overhead against the single-process env, side by side.

Two measurements per setting:
- env only: random action chunks, no policy (the simulator plus transport);
- rollout: RolloutCollector.collect() with an MLP flow policy (K denoising steps per chunk),
  where pipelining can hide inference behind simulation.
Steps are executed actions (chunk x chunk steps x envs).

    PYTHONPATH=. python bench/bench_ray.py --num-envs 8 --episode-steps 200 --repeats 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import run_main, setup_threads, write_results


def env_only(env, steps: int) -> float:
    from pirl.envs.base import Context

    rng = np.random.default_rng(0)
    N, seed, done = env.num_envs, 0, 0
    env.reset([Context(0, i) for i in range(N)])
    env.step(np.zeros((N, env.chunk, env.action_dim), np.float32))  # warm-up
    t0 = time.perf_counter()
    while done < steps:
        for _ in range(env.max_chunk_steps):
            res = env.step(rng.uniform(-1, 1, (N, env.chunk, env.action_dim)).astype(np.float32))
            done += int(res.info["executed"].sum()) if "executed" in res.info else N * env.chunk
        seed += N
        env.reset([Context(0, seed + i) for i in range(N)])
    return done / (time.perf_counter() - t0)


def rollout(env, pipelined: bool, repeats: int, hidden: int, k: int) -> float:
    import torch

    from pirl.flow import SamplerConfig
    from pirl.policies.mlp import make_mlp_policy
    from pirl.train.rollout import CollectorConfig, RolloutCollector

    torch.manual_seed(0)
    policy = make_mlp_policy(env.state_dim, env.action_dim, action_horizon=env.chunk, hidden=hidden, depth=3).eval()
    cls = RolloutCollector
    if pipelined:
        from pirl.distributed.pipeline import PipelinedCollector as cls
    c = cls(env, policy, SamplerConfig(method="flow_sde", steps=k), CollectorConfig(num_groups=env.num_envs, seed=0))
    c.collect()  # warm-up: first resets and steps of fresh simulators are slow
    steps = secs = 0.0
    for _ in range(repeats):
        m = c.collect().metrics
        steps += m["rollout/env_steps"]
        secs += m["perf/rollout_s"]
    return steps / secs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="reach-v3")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--episode-steps", type=int, default=200, help="actions per episode (truncation)")
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--env-steps", type=int, default=3200, help="actions per env-only measurement")
    p.add_argument("--repeats", type=int, default=2, help="collect() calls per rollout measurement (after 1 warm-up)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--k", type=int, default=10, help="denoising steps per chunk")
    args = p.parse_args()
    setup_threads(1)

    import ray

    from pirl.distributed.env import RayVectorEnv, init_ray
    from pirl.envs.registry import EnvConfig, make_env

    cfg = EnvConfig(suite="metaworld", tasks=args.task, chunk=args.chunk, max_episode_steps=args.episode_steps)
    t0 = time.perf_counter()
    init_ray(num_cpus=2, object_store_mb=100)
    ray_init_s = time.perf_counter() - t0
    rows = []
    settings = [("single-process", 0, False), ("ray 1 worker", 1, False), ("ray 2 workers", 2, False),
                ("ray 2 workers pipelined", 2, True)]
    try:
        for name, workers, pipelined in settings:
            t0 = time.perf_counter()
            # 0.5 CPU per actor: the driver needs a core too, and closing/creating actors must not wait
            env = make_env(cfg, args.num_envs) if workers == 0 else \
                RayVectorEnv(cfg, args.num_envs, workers, cpus_per_worker=0.5)
            start_s = time.perf_counter() - t0
            try:
                raw = None if pipelined else env_only(env, args.env_steps)
                roll = rollout(env, pipelined, args.repeats, args.hidden, args.k)
            finally:
                env.close()
            rows.append({"setting": name, "env_workers": workers, "pipelined": pipelined, "start_s": round(start_s, 2),
                         "env_only_steps_per_s": None if raw is None else round(raw, 1),
                         "rollout_steps_per_s": round(roll, 1)})
            print(rows[-1], flush=True)
    finally:
        ray.shutdown()

    base = rows[0]
    for r in rows:
        if r["env_only_steps_per_s"]:
            r["env_only_vs_single"] = round(r["env_only_steps_per_s"] / base["env_only_steps_per_s"], 3)
        r["rollout_vs_single"] = round(r["rollout_steps_per_s"] / base["rollout_steps_per_s"], 3)
    md = ["| setting | env only (steps/s) | vs single | rollout with policy (steps/s) | vs single | start (s) |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['setting']} | {r['env_only_steps_per_s'] or '-'} | {r.get('env_only_vs_single', '-')} | "
                  f"{r['rollout_steps_per_s']} | {r['rollout_vs_single']} | {r['start_s']} |")
    md.append(f"\nMetaWorld {args.task}, {args.num_envs} envs, chunk {args.chunk}, {args.episode_steps}-action episodes; "
              f"policy: MLP hidden {args.hidden} x3, flow_sde K={args.k}; `ray.init` took {ray_init_s:.1f} s.")
    write_results("ray", {"config": vars(args), "ray_init_s": round(ray_init_s, 2), "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    run_main(main)
