"""Full-size π0 / π0.5 (random weights) through `pirl train` on ONE GPU: memory per training scope against the
printed estimate, seconds per iteration split into simulation / inference / update, env steps/s.

Each variant is written once as a LeRobot directory (bf16, pirl's hash tokenizer over PaliGemma's vocabulary size,
two cameras fed), then `pirl train policy=DIR` runs a few PPO + Flow-SDE iterations per scope (action expert only,
everything) on MetaWorld, rendering 224 px images. Never run in CI (`bash bench/gpu_check.sh` runs it).

    python bench/bench_pi0_train_gpu.py [--variants pi0 pi05] [--scopes expert all] [--iterations 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import run_main, write_results  # noqa: E402
from pirl.policies.pi0 import Pi0Policy  # noqa: E402
from pirl.policies.pi0.checkpoint import save_lerobot  # noqa: E402
from pirl.policies.pi0.configuration import DEFAULT_CAMERAS, PALIGEMMA_VOCAB, new_config  # noqa: E402

STATE_DIM, ACTION_DIM = 39, 4  # MetaWorld
HORIZON = {"pi0": 50, "pi05": 10}  # what openpi's LIBERO checkpoints were trained with


def write_random_checkpoint(variant: str, directory: Path, size: str, device: str) -> float:
    """A random model (full size: bf16), saved as LeRobot; returns seconds."""
    t0 = time.perf_counter()
    cfg = new_config(variant, size, state_dim=STATE_DIM, action_dim=ACTION_DIM, action_horizon=HORIZON[variant],
                     cameras=DEFAULT_CAMERAS, camera_keys=("image", "image", ""), tokenizer="hash",
                     **({"vocab_size": PALIGEMMA_VOCAB} if size == "full" else {}))
    torch.manual_seed(0)
    with torch.device(device):
        policy = Pi0Policy(cfg)
    policy.to_bf16()
    save_lerobot(policy, directory)
    del policy
    if device == "cuda":
        torch.cuda.empty_cache()
    return time.perf_counter() - t0


def run_train(policy_dir: Path, run: Path, scope: str, args) -> dict:
    cmd = [sys.executable, "-m", "pirl.cli.main", "train", "--run-dir", str(run), f"policy={policy_dir}",
           f"device={args.device}", f"threads={8 if args.device == 'cuda' else 1}", "pi0.dtype=bfloat16", f"pi0.train_scope={scope}",
           f"pi0.gradient_checkpointing={str(args.checkpointing).lower()}",
           "env.tasks=reach-v3", "env.camera=corner2", f"env.image_size={224 if args.size == 'full' else 32}", "env.chunk=5",
           f"env.max_episode_steps={args.episode_steps}", f"num_groups={args.envs}", f"iterations={args.iterations}",
           "eval_every=1000", "eval_episodes_per_task=1", "eval_num_envs=1", "videos_per_task=0", "checkpoint_every=1000",
           "sampler.method=flow_sde", "sampler.steps=4", "sampler.noise_level=0.5", "ppo.epochs=1",
           f"ppo.minibatch_size={args.minibatch}", f"ppo.micro_batch_size={args.micro}", "optim.lr=5e-6"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
                          timeout=args.timeout)
    wall = time.perf_counter() - t0
    out = {"scope": scope, "rc": proc.returncode, "wall_s": wall}
    estimate = re.search(r"π0 memory .*= ([\d.]+) GiB", proc.stdout)
    out["estimate_line"] = next((line for line in proc.stdout.splitlines() if "π0 memory" in line), None)
    out["estimate_gb"] = float(estimate.group(1)) if estimate else None
    if proc.returncode != 0:
        out["error"] = (proc.stderr or proc.stdout)[-1500:]
        print(out["error"], flush=True)
        return out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    iters = [r for r in rows if "perf/rollout_s" in r][1:] or [r for r in rows if "perf/rollout_s" in r]  # skip warm-up
    mean = lambda k: sum(r.get(k, 0.0) for r in iters) / len(iters)  # noqa: E731
    out.update(iteration_s=mean("perf/iteration_s"), rollout_s=mean("perf/rollout_s"), sim_s=mean("perf/sim_s"),
               inference_s=mean("perf/inference_s"), update_s=mean("perf/update_s"),
               env_steps_per_s=mean("perf/env_steps_per_s"), samples=mean("rollout/env_steps") / 5,
               peak_gb=max(r.get("perf/gpu_peak_gb", 0.0) for r in rows), iterations_measured=len(iters),
               ratio_check=max(r.get("policy/ratio_check", 0.0) for r in rows),
               ratio_check_tol=min((r["policy/ratio_check_tol"] for r in rows if "policy/ratio_check_tol" in r),
                                   default=None))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=["pi0", "pi05"])
    ap.add_argument("--scopes", nargs="+", default=["expert", "all"])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--envs", type=int, default=16)
    ap.add_argument("--episode-steps", type=int, default=50)
    ap.add_argument("--minibatch", type=int, default=80)
    ap.add_argument("--micro", type=int, default=16)
    ap.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--size", default="full", choices=["tiny", "small", "full"], help="tiny + --device cpu: smoke test")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--name", default=None, help="results file name (default pi0_train_gpu for --size full)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no GPU: this benchmark runs full-size π0 on CUDA")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pi0_train_gpu_"))
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    results: dict = {"device": device_name, "size": args.size, "torch": torch.__version__, "runs": []}
    for variant in args.variants:
        ckpt = work / f"{variant}_random"
        secs = write_random_checkpoint(variant, ckpt, args.size, args.device)
        print(f"[{variant}] random checkpoint written in {secs:.1f} s", flush=True)
        for scope in args.scopes:
            run = work / f"run_{variant}_{scope}"
            row = {"variant": variant, **run_train(ckpt, run, scope, args)}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(run, ignore_errors=True)  # a full fine-tune's checkpoint holds ~20 GB of AdamW state
        shutil.rmtree(ckpt, ignore_errors=True)
    lines = ["| variant | scope | peak GPU GB (estimate) | s / iteration | simulation | inference | update | env steps/s "
             "| ratio check (tolerance) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["runs"]:
        if r["rc"] != 0:
            lines.append(f"| {r['variant']} | {r['scope']} | failed: {r.get('error', '')[-120:]!r} | | | | | | |")
            continue
        lines.append(f"| {r['variant']} | {r['scope']} | {r['peak_gb']:.1f} ({r['estimate_gb']}) | {r['iteration_s']:.1f} | "
                     f"{r['sim_s']:.1f} | {r['inference_s']:.1f} | {r['update_s']:.1f} | {r['env_steps_per_s']:.0f} | "
                     f"{r['ratio_check']:.2g} ({r['ratio_check_tol'] or 0:.2g}) |")
    note = (f"\n{results['device']}; bf16 weights, random init; MetaWorld reach-v3 with 224 px corner2 images fed to two "
            f"cameras (base, left wrist; right wrist masked); {args.envs} envs x {args.episode_steps} steps, chunk 5, "
            f"PPO + Flow-SDE K=4, 1 epoch, minibatch {args.minibatch}, micro-batch {args.micro}, gradient checkpointing "
            f"{'on' if args.checkpointing else 'off'}. First iteration excluded (warm-up).")
    name = args.name or ("pi0_train_gpu" if args.size == "full" else f"pi0_train_{args.size}_{args.device}")
    write_results(name, results, "\n".join(lines) + "\n" + note)


if __name__ == "__main__":
    run_main(main)
