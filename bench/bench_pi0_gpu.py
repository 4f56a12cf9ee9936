"""GPU benchmark of full-size π0 / π0.5 (random weights, bf16): latency, rollout and PPO-update throughput.

Measures
- the device's bf16 peak (a large matmul), against which MFU is reported;
- chunk latency at batch 1 (ODE, K = 10 by default) with 1 and 3 cameras, eager and under ``--compile MODE...``
  (``reduce-overhead``, ``reduce-overhead-all``, ``reduce-overhead-act``, each with ``-freeze`` for a deployment
  policy whose weights no longer change: inductor then fuses q/k/v and gate/up), with ``--profile`` the GPU kernel
  time and count per call;
- rollout throughput (``policy.act``, Flow-SDE hybrid) at batches 8-64;
- PPO-update throughput (``policy.evaluate`` + backward + AdamW step) with the VLM frozen
  ("expert") and with everything trained ("full"), gradient checkpointing on.

MFU counts model FLOPs (matmuls + attention, forward = 1x, backward = 2x of the trained part,
no recomputation) per second over the measured peak. Writes ``bench/results/pi0_gpu.json``.
Never run in CI. ``--tiny`` runs the tiny configurations on CPU to check the script itself.

    python bench/bench_pi0_gpu.py                 # on a GPU machine
    python bench/bench_pi0_gpu.py --tiny --out /tmp/pi0_tiny.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pirl.flow import SamplerConfig  # noqa: E402
from pirl.policies.pi0 import Pi0Config, full_config, make_pi0_policy, tiny_config  # noqa: E402
from _common import run_main  # noqa: E402


# -- timing ------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_peak(device: torch.device, tiny: bool) -> float:
    """Achieved bf16 matmul FLOP/s on a large square product (the MFU denominator)."""
    n = 1024 if tiny else 8192
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sec = timed(lambda: a @ b, device, warmup=3, iters=10 if not tiny else 3)
    return 2 * n**3 / sec


# -- FLOPs -------------------------------------------------------------------------------------
def _gemma_flops(spec, tokens: int, keys: int) -> float:
    d_q, d_kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    dense = 2 * tokens * (spec.width * (d_q + 2 * d_kv) + d_q * spec.width + 3 * spec.width * spec.mlp_dim)
    attn = 2 * 2 * tokens * keys * d_q
    return spec.depth * (dense + attn)


def flops(cfg: Pi0Config, cameras: int) -> dict[str, float]:
    """Forward FLOPs per sample: vision, prefix (VLM) and one suffix (expert) pass."""
    v = cfg.vision
    n = v.tokens_per_image
    vis_layer = 2 * n * (4 * v.width**2 + 2 * v.width * v.mlp_dim) + 2 * 2 * n * n * v.width
    vision = cameras * (v.depth * vis_layer + 2 * n * 3 * v.patch_size**2 * v.width + 2 * n * v.width * cfg.vlm.width)
    P = cameras * n + cfg.token_len
    S = cfg.suffix_len
    return {"vision": vision, "prefix": _gemma_flops(cfg.vlm, P, P), "suffix": _gemma_flops(cfg.expert, S, P + S)}


def value_passes(cfg: Pi0Config) -> int:
    """π0's critic reads one extra expert pass (x = 0, t = 1); π0.5's reads the VLM output."""
    return 0 if cfg.pi05 else 1


# -- workloads ---------------------------------------------------------------------------------
def make_obs(cfg: Pi0Config, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    s, C, L = cfg.vision.image_size, len(cfg.cameras), cfg.token_len
    return {
        "images": torch.rand(batch, C, 3, s, s, device=device) * 2 - 1,
        "image_masks": torch.ones(batch, C, dtype=torch.bool, device=device),
        "tokens": torch.randint(0, cfg.vocab_size, (batch, L), device=device),
        "token_mask": torch.ones(batch, L, dtype=torch.bool, device=device),
        "state": torch.randn(batch, cfg.max_state_dim, device=device),
    }


def build(variant: str, cameras: int, tiny: bool, device: torch.device):
    names = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")[:cameras]
    cfg = (tiny_config if tiny else full_config)(variant, cameras=names)
    torch.manual_seed(0)
    with torch.device(device):
        policy = make_pi0_policy(cfg)
    if not tiny or device.type == "cuda":
        policy.to_bf16()
    return cfg, policy.eval()


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def kernel_profile(fn: Callable[[], Any], device: torch.device, calls: int = 3) -> dict[str, Any]:
    """GPU kernel time and kernel count per call (torch.profiler), and the kernels that take most: where the
    batch-1 latency goes once launch overhead is gone."""
    if device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    fn()
    _sync(device)
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            _sync(device)
        events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        us = lambda e: getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)  # noqa: E731
        events.sort(key=us, reverse=True)
        total = sum(us(e) for e in events)
        out = {"kernel_ms_per_call": total / 1e3 / calls, "kernels_per_call": sum(e.count for e in events) / calls,
               "top": [{"name": e.key[:90], "ms_per_call": us(e) / 1e3 / calls, "count_per_call": e.count / calls}
                       for e in events[:8]]}
        print(f"    GPU kernels: {out['kernel_ms_per_call']:.1f} ms in {out['kernels_per_call']:.0f} kernels per call; "
              "top: " + "; ".join(f"{t['name'][:50]} {t['ms_per_call']:.2f} ms x{t['count_per_call']:.0f}"
                                  for t in out["top"][:5]), flush=True)
        return out
    except Exception as e:  # noqa: BLE001 - a profiler failure must not cost the timings
        print(f"    profile failed: {type(e).__name__}: {e}", flush=True)
        return {"error": str(e)[:300]}


def compiled_latency(policy, obs, ode: SamplerConfig, device: torch.device, args, out: dict[str, Any]) -> dict[str, Any]:
    """Batch-1 chunk latency under torch.compile; CUDA graphs (``reduce-overhead``) remove the kernel-launch cost
    that bounds eager latency at batch 1.

    ``reduce-overhead``: the prefix compiled without a graph (its KV cache outlives the K suffix replays), the K
    suffix passes replayed as CUDA graphs. ``reduce-overhead-all``: the prefix a CUDA graph too; the graph trees then
    record prefix -> suffix_1 -> ... -> suffix_K as one path replayed per chunk. ``reduce-overhead-act``: the whole
    ``act`` (prefix, the K denoising steps and the sampler's arithmetic between them) traced as one function, so
    nothing runs eagerly between the graphs. Fills ``out`` per mode.
    """
    import torch._inductor.config as inductor_config

    for mode in args.compile:
        t0 = time.perf_counter()
        freezing = inductor_config.freezing
        try:
            # "-freeze": inductor's freezing treats the weights as constants, so that its patterns concatenate the
            # q/k/v and the gate/up projections (one GEMM instead of three and two) and fold the weights' casts
            inductor_config.freezing = mode.endswith("-freeze")
            mode = mode.removesuffix("-freeze")
            if mode.endswith("-act"):
                policy.act = torch.compile(type(policy).act.__get__(policy), mode=mode.removesuffix("-act"),
                                           dynamic=False)
            else:
                base = mode.removesuffix("-all")
                policy.encode = torch.compile(type(policy).encode.__get__(policy), dynamic=False,
                                              **({"mode": base} if mode.endswith("-all") else {}))
                policy.suffix_hidden = torch.compile(type(policy).suffix_hidden.__get__(policy), mode=base,
                                                     dynamic=False)

            def act():
                torch.compiler.cudagraph_mark_step_begin()
                return policy.act(obs, ode)

            with torch.no_grad():
                for _ in range(3):  # compile + record the graphs
                    act()
            _sync(device)
            compile_s = time.perf_counter() - t0
            sec = timed(act, device, args.warmup, args.iters)
            name = mode + ("-freeze" if inductor_config.freezing else "")
            out[name] = {"ms": 1e3 * sec, "compile_s": compile_s}
            args.save()
            print(f"  torch.compile({name}): {1e3 * sec:.1f} ms (compiled in {compile_s:.0f} s)", flush=True)
            if args.profile:
                with torch.no_grad():
                    out[name]["profile"] = kernel_profile(act, device)
                args.save()
        except Exception as e:  # noqa: BLE001 - report and carry on: the eager figures stand
            name = mode + ("-freeze" if inductor_config.freezing else "")
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"  torch.compile({name}) failed: {out[name]['error']}", flush=True)
        finally:
            inductor_config.freezing = freezing
            for name in ("act", "encode", "suffix_hidden"):  # back to the eager methods
                policy.__dict__.pop(name, None)
            torch._dynamo.reset()
    return out


def bench_variant(variant: str, args, device: torch.device, peak: float, res: dict[str, Any]) -> dict[str, Any]:
    """Fills ``res`` (saved after every figure through ``args.save``)."""
    res.update({"latency_b1": {}, "rollout": {}, "ppo_update": {}})
    K = args.steps
    ode = SamplerConfig(method="ode", steps=K)
    sde = SamplerConfig(method="flow_sde", steps=K, noise_level=0.5)
    for cams in args.latency_cameras:
        cfg, policy = build(variant, cams, args.tiny, device)
        obs = make_obs(cfg, 1, device)
        f = flops(cfg, cams)
        sec = timed(lambda: policy.act(obs, ode), device, args.warmup, args.iters)
        fl = f["vision"] + f["prefix"] + (K + value_passes(cfg)) * f["suffix"]
        res["latency_b1"][f"{cams}cam"] = {"ms": 1e3 * sec, "prefix_tokens": cfg.prefix_len, "mfu": fl / sec / peak}
        print(f"[{variant}] latency b=1 {cams} cam K={K}: {1e3 * sec:.1f} ms", flush=True)
        args.save()
        if args.profile:
            res["latency_b1"][f"{cams}cam"]["profile"] = kernel_profile(lambda: policy.act(obs, ode), device)
        if args.compile and cams in args.compile_cameras:
            compiled_latency(policy, obs, ode, device, args, res["latency_b1"].setdefault(f"{cams}cam_compiled", {}))
        del policy
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if args.latency_only:
        return res
    cams = args.cameras
    cfg, policy = build(variant, cams, args.tiny, device)
    f = flops(cfg, cams)
    fwd_roll = f["vision"] + f["prefix"] + (K + value_passes(cfg)) * f["suffix"]
    for B in args.batches:
        obs = make_obs(cfg, B, device)
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sec = timed(lambda: policy.act(obs, sde), device, args.warmup, args.iters)
            res["rollout"][str(B)] = {"samples_per_s": B / sec, "ms": 1e3 * sec, "mfu": B * fwd_roll / sec / peak,
                                      "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
            print(f"[{variant}] rollout b={B}: {B / sec:.1f} samples/s", flush=True)
        except RuntimeError as e:
            if not is_oom(e):
                raise
            res["rollout"][str(B)] = "oom"
            torch.cuda.empty_cache()

    policy.gradient_checkpointing_enable()
    for mode in ("expert", "full"):
        policy.set_trainable("expert" if mode == "expert" else "all")
        policy.train()
        params = [p for p in policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-6, foreach=True)
        # hybrid Flow-SDE: one suffix pass per sample (+ π0's value pass); backward only the trained part
        suffix = (1 + value_passes(cfg)) * f["suffix"]
        trained = suffix if mode == "expert" else f["vision"] + f["prefix"] + suffix
        fwd_upd = f["vision"] + f["prefix"] + suffix
        for B in args.batches:
            obs = make_obs(cfg, B, device)
            with torch.no_grad():
                chain = policy.act(obs, sde).chain
            adv = torch.randn(B, device=device)

            def step():
                opt.zero_grad(set_to_none=True)
                ev = policy.evaluate(obs, chain)
                ratio = torch.exp(ev.log_prob - chain.log_prob)
                loss = -(ratio * adv).mean() + 0.5 * ev.value.square().mean()
                loss.backward()
                opt.step()

            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sec = timed(step, device, max(1, args.warmup - 1), args.iters)
                model_flops = B * (fwd_upd + 2 * trained)
                res["ppo_update"].setdefault(mode, {})[str(B)] = {
                    "samples_per_s": B / sec, "ms": 1e3 * sec, "mfu": model_flops / sec / peak,
                    "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
                print(f"[{variant}] ppo update ({mode}) b={B}: {B / sec:.1f} samples/s", flush=True)
            except RuntimeError as e:
                if not is_oom(e):
                    raise
                res["ppo_update"].setdefault(mode, {})[str(B)] = "oom"
                opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
        del opt
    policy.set_trainable("all")
    res["params_b"] = sum(p.numel() for p in policy.parameters()) / 1e9
    res["flops_per_sample"] = f
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke test of this script)")
    ap.add_argument("--variants", nargs="+", default=["pi0", "pi05"])
    ap.add_argument("--batches", nargs="+", type=int, default=None, help="default 8 16 32 64 (tiny: 2 4)")
    ap.add_argument("--steps", type=int, default=10, help="K denoising steps")
    ap.add_argument("--cameras", type=int, default=3, help="cameras for the throughput runs")
    ap.add_argument("--compile", nargs="*", default=[], metavar="MODE",
                    help="also time batch-1 latency under torch.compile with these modes (e.g. reduce-overhead)")
    ap.add_argument("--compile-cameras", nargs="+", type=int, default=[3])
    ap.add_argument("--latency-cameras", nargs="+", type=int, default=[1, 3], help="cameras for the batch-1 latency")
    ap.add_argument("--profile", action="store_true", help="GPU kernel time / count per batch-1 call (torch.profiler)")
    ap.add_argument("--latency-only", action="store_true", help="batch-1 latency only (no throughput runs)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "pi0_gpu.json"))
    args = ap.parse_args()
    args.batches = args.batches or ([2, 4] if args.tiny else [8, 16, 32, 64])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        sys.exit("no GPU: the full-size benchmark needs one (use --tiny to check the script on CPU)")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    peak = measure_peak(device, args.tiny)
    print(f"peak {'bf16' if device.type == 'cuda' else 'fp32'} matmul: {peak / 1e12:.2f} TFLOP/s", flush=True)
    out: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": os.environ.get("PIRL_BENCH_MACHINE", platform.node()),
        "command": " ".join(["python"] + sys.argv),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "tiny": args.tiny, "denoise_steps": args.steps, "throughput_cameras": args.cameras,
        "peak_tflops": peak / 1e12, "dtype": "bf16 weights, fp32 norms/projections/log-probs",
        "variants": {},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def save() -> None:  # after every figure: a run stopped by its time limit keeps what it measured
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, args.out)

    args.save = save
    for variant in args.variants:
        out["variants"][variant] = {}
        bench_variant(variant, args, device, peak, out["variants"][variant])
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
