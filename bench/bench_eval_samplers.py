"""Held-out success of policy files under the deterministic ODE (what evaluations report) and the Flow-SDE
sampler RL rolls out with: does RL improve the stochastic policy it trains without the ODE policy following?

Runs every policy on the same held-out seeds (the trainer's evaluation seeds first, then more) with the same
noise seed. Writes bench/results/<--name>.{json,md}.

    PYTHONPATH=. python bench/bench_eval_samplers.py --suite maniskill --task PickCube-v1 \\
        --control-mode pd_ee_delta_pos --policies sft=A.safetensors rl=B.safetensors --episodes 60
"""

from __future__ import annotations

import argparse
import time

from _common import run_main, setup_threads, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="maniskill")
    ap.add_argument("--task", default="PickCube-v1")
    ap.add_argument("--control-mode", default=None)
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--policies", nargs="+", required=True, metavar="LABEL=FILE")
    ap.add_argument("--episodes", type=int, default=60, help="held-out seeds per policy and sampler")
    ap.add_argument("--noise-level", type=float, default=1.0, help="Flow-SDE noise level a")
    ap.add_argument("--num-envs", type=int, default=10)
    ap.add_argument("--name", default="eval_samplers")
    args = ap.parse_args()
    setup_threads(1)
    from pirl.envs.base import Context
    from pirl.envs.registry import EnvConfig, make_env
    from pirl.flow import SamplerConfig
    from pirl.policies.io import load_policy
    from pirl.train.evaluate import evaluate_policy
    from pirl.train.rollout import EVAL_SEED_OFFSET

    env = make_env(EnvConfig(suite=args.suite, tasks=args.task, chunk=args.chunk, control_mode=args.control_mode),
                   args.num_envs)
    contexts = [Context(0, EVAL_SEED_OFFSET + s) for s in range(args.episodes)]
    samplers = {"ode": SamplerConfig(method="ode", steps=4),
                "flow_sde": SamplerConfig(method="flow_sde", steps=4, noise_level=args.noise_level)}
    rows = {}
    for item in args.policies:
        label, _, path = item.partition("=")
        policy, _ = load_policy(path)
        rows[label] = {"file": path}
        for name, sampler in samplers.items():
            t0 = time.perf_counter()
            rate = evaluate_policy(policy, env, contexts, sampler, seed=0).success_rate
            rows[label][name] = rate
            print(f"{label:>10} {name:>8}: {rate:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    env.close()
    md = (f"{args.task} ({args.suite}), {args.episodes} held-out seeds per figure (one standard error ~"
          f"{100 * (0.25 / args.episodes) ** 0.5:.0f} points at 50 %), K = 4; Flow-SDE a = {args.noise_level}.\n\n"
          "| policy | ODE (evaluation) | Flow-SDE (rollouts) | file |\n| --- | ---: | ---: | --- |\n"
          + "".join(f"| {k} | {v['ode']:.0%} | {v['flow_sde']:.0%} | `{v['file']}` |\n" for k, v in rows.items()))
    write_results(args.name, {"task": args.task, "suite": args.suite, "episodes": args.episodes,
                              "noise_level": args.noise_level, "policies": rows}, md)


if __name__ == "__main__":
    run_main(main)
