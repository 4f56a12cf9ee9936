"""Rollout throughput of the vision-language policy (VLA-mini) on MetaWorld pixels, inference on CPU vs GPU.

Every setting runs the real collector (``RolloutCollector.collect``: render, prepare, Flow-SDE
``act`` with K denoising steps, critic values, env steps) on the same env configuration, one after
the other in one process, so the ratios are side by side:

- ``single cpu``: simulators and inference in this process, policy on the CPU (the baseline);
- ``single gpu``: the same with the policy on the GPU (inference batched over all envs);
- ``ray E env workers, gpu in trainer``: E Ray env-worker processes simulate, the trainer infers on the GPU;
- ``ray ... pipelined``: the same with inference on one half of the env workers overlapping the other's simulation;
- ``ray ... + gpu rollout worker``: inference in a Ray rollout worker holding the GPU (``rollout_gpus=1``);
  on a machine without CUDA, a CPU rollout worker.

Also reports ``policy.act`` alone at several batch sizes on CPU and GPU (samples/s).
Steps are executed actions (chunk x chunk steps x envs). Without CUDA only the CPU settings run
(a check of the script). Writes ``bench/results/vla_rollout<suffix>.{json,md}``.

    python bench/bench_vla_rollout.py --num-envs 64 --env-workers 8            # on a GPU machine
    python bench/bench_vla_rollout.py --num-envs 4 --env-workers 2 --episode-steps 24 --suffix _cpu_check
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _common import run_main, write_results


def _policy(env, args):
    import torch

    from pirl.policies.vla import make_vla_policy

    torch.manual_seed(0)
    return make_vla_policy(env.state_dim, env.action_dim, action_horizon=args.horizon, image_size=args.image_size,
                           width=args.width, layers=args.layers).eval()


def act_throughput(env, args, device: str) -> dict[str, float]:
    """samples/s of policy.act alone on prepared observations of ``env`` (tiled to each batch size)."""
    import torch

    from pirl.envs.base import Context
    from pirl.flow import SamplerConfig

    policy = _policy(env, args).to(device)
    base = policy.prepare(env.reset([Context(0, i) for i in range(env.num_envs)]))
    sampler = SamplerConfig(method="flow_sde", steps=args.k)
    out = {}
    for b in args.act_batches:
        obs = {k: v.repeat((-(-b // len(v)),) + (1,) * (v.dim() - 1))[:b].to(device) for k, v in base.items()}
        times = []
        for i in range(args.act_iters + 2):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                policy.act(obs, sampler)
                policy.value(obs)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:  # two warm-ups (CUDA kernels, allocator)
                times.append(time.perf_counter() - t0)
        out[str(b)] = round(b / statistics.median(times), 1)
        print(f"act+value {device} b={b}: {out[str(b)]} samples/s", flush=True)
    return out


def collect_throughput(env, args, device: str, *, pipelined: bool = False,
                       rollout_worker: bool = False) -> dict[str, float]:
    """Env steps/s over ``--repeats`` collect() calls after one warm-up call."""
    from pirl.flow import SamplerConfig
    from pirl.train.rollout import CollectorConfig, RolloutCollector

    policy = _policy(env, args).to(device)
    actor, pool = policy, None
    if rollout_worker:
        from pirl.distributed.rollout import RemotePolicy, RolloutWorkerPool

        pool = RolloutWorkerPool(policy, 1, gpus_per_worker=1.0 if device == "cuda" else 0.0, cpus_per_worker=1.0,
                                 threads=args.threads)
        actor = RemotePolicy(policy, pool)
    cls = RolloutCollector
    if pipelined:
        from pirl.distributed.pipeline import PipelinedCollector as cls
    c = cls(env, actor, SamplerConfig(method="flow_sde", steps=args.k), CollectorConfig(num_groups=env.num_envs, seed=0),
            device)
    try:
        c.collect()  # warm-up: fresh simulators, CUDA kernels, Ray object transfers
        steps = secs = 0.0
        for _ in range(args.repeats):
            m = c.collect().metrics
            steps += m["rollout/env_steps"]
            secs += m["perf/rollout_s"]
    finally:
        if pool is not None:
            pool.close()
    return {"env_steps_per_s": round(steps / secs, 1), "env_steps": int(steps), "seconds": round(secs, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["reach-v3", "push-v3"])
    p.add_argument("--camera", default="corner2")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-envs", type=int, default=64)
    p.add_argument("--env-workers", type=int, default=8)
    p.add_argument("--episode-steps", type=int, default=200, help="actions per episode (truncation)")
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--horizon", type=int, default=8, help="predicted actions per chunk")
    p.add_argument("--width", type=int, default=96, help="VLA-mini token width (96 = the one the benchmarks train)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--k", type=int, default=10, help="denoising steps per chunk")
    p.add_argument("--repeats", type=int, default=2, help="collect() calls per setting (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=4, help="torch threads of the trainer (CPU inference)")
    p.add_argument("--act-batches", nargs="+", type=int, default=[1, 8, 64, 256])
    p.add_argument("--act-iters", type=int, default=5)
    p.add_argument("--suffix", default="", help="results file suffix (keeps other runs' files)")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    import ray

    from pirl.distributed.env import RayVectorEnv, init_ray
    from pirl.envs.registry import EnvConfig, make_env

    gpu = torch.cuda.is_available()
    tasks = args.tasks[0] if len(args.tasks) == 1 else tuple(args.tasks)
    cfg = EnvConfig(suite="metaworld", tasks=tasks, chunk=args.chunk, max_episode_steps=args.episode_steps,
                    camera=args.camera, image_size=args.image_size)
    rows, act = [], {}
    env = make_env(cfg, args.num_envs)
    try:
        act["cpu"] = act_throughput(env, args, "cpu")
        if gpu:
            act["cuda"] = act_throughput(env, args, "cuda")
        rows.append({"setting": "single cpu", **collect_throughput(env, args, "cpu")})
        print(rows[-1], flush=True)
        if gpu:
            rows.append({"setting": "single gpu", **collect_throughput(env, args, "cuda")})
            print(rows[-1], flush=True)
    finally:
        env.close()

    t0 = time.perf_counter()
    init_ray(num_cpus=args.env_workers + 1)  # + the rollout worker
    ray_init_s = time.perf_counter() - t0
    E = args.env_workers
    try:
        env = RayVectorEnv(cfg, args.num_envs, E, cpus_per_worker=1.0)
        try:
            dev = "cuda" if gpu else "cpu"
            settings = [(f"ray {E} env workers, {dev} in trainer", {}),
                        (f"ray {E} env workers, {dev} in trainer, pipelined", {"pipelined": True})]
            settings.append((f"ray {E} env workers + {dev} rollout worker", {"rollout_worker": True}))
            for name, kw in settings:
                rows.append({"setting": name, **collect_throughput(env, args, dev, **kw)})
                print(rows[-1], flush=True)
        finally:
            env.close()
    finally:
        ray.shutdown()

    base = rows[0]["env_steps_per_s"]
    for r in rows:
        r["vs_single_cpu"] = round(r["env_steps_per_s"] / base, 2)
    device = torch.cuda.get_device_name(0) if gpu else "none"
    md = ["| setting | env steps/s | vs single cpu |", "|---|---:|---:|"]
    md += [f"| {r['setting']} | {r['env_steps_per_s']} | {r['vs_single_cpu']} |" for r in rows]
    md += ["", "`policy.act` + `policy.value` alone (samples/s):", "",
           "| batch | " + " | ".join(act) + " |", "|---:|" + "---:|" * len(act)]
    md += [f"| {b} | " + " | ".join(str(act[d][str(b)]) for d in act) + " |" for b in args.act_batches]
    md.append(f"\nMetaWorld {'+'.join(args.tasks)}, {args.num_envs} envs, {args.camera} {args.image_size}x{args.image_size} "
              f"images, chunk {args.chunk}, {args.episode_steps}-action episodes; VLA-mini width {args.width} x "
              f"{args.layers} layers, Flow-SDE K={args.k}; GPU: {device}; {os.cpu_count()} CPUs; trainer torch threads "
              f"{args.threads}; `ray.init` took {ray_init_s:.1f} s.")
    write_results("vla_rollout" + args.suffix, {"config": vars(args), "gpu": device, "ray_init_s": round(ray_init_s, 2),
                                                "rows": rows, "act_samples_per_s": act}, "\n".join(md))


if __name__ == "__main__":
    run_main(main)
