"""Weight sync to a rollout worker: time to publish (``ray.put``) and to load (the worker's first request after)
a full state vs the trainable part only, for a policy of ``--gb`` GB of bf16 weights of which ``--trainable``
is trained (π0 with ``set_trainable('expert')``: 0.32 of 3.25 B parameters, ~6.5 GB in bf16).

The policy is a stack of bf16 linear layers with a trivial ``act`` / ``value``: the cost measured is the
transport and ``load_state_dict``, not inference. Writes ``bench/results/publish<suffix>.{json,md}``.

    python bench/bench_publish.py --gb 2 --trainable 0.1
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import run_main, write_results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, default=2.0, help="bf16 weights in GB")
    p.add_argument("--trainable", type=float, default=0.1, help="fraction of the layers that train")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--suffix", default="")
    args = p.parse_args()
    import torch
    from torch import nn

    from pirl.distributed.env import init_ray
    from pirl.distributed.rollout import RolloutWorkerPool
    from pirl.distributed.store import from_store, to_store

    class Stack(nn.Module):
        """Weights only: value() touches none of them, so a request costs the sync plus nothing."""

        def __init__(self, layers: int, width: int) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(width, width, bias=False, dtype=torch.bfloat16) for _ in range(layers))

        @torch.no_grad()
        def value(self, obs):
            return torch.zeros(len(obs["state"]))

    layer_bytes = args.width * args.width * 2
    layers = max(2, round(args.gb * 1e9 / layer_bytes))
    policy = Stack(layers, args.width)
    trained = max(1, round(layers * args.trainable))
    for layer in policy.layers[trained:]:
        layer.weight.requires_grad_(False)
    obs = {"state": torch.zeros(1, 1)}
    total = sum(p.numel() * p.element_size() for p in policy.parameters()) / 1e9
    init_ray(num_cpus=2, object_store_mb=int(args.gb * 1024 * 2.5) + 256)
    import ray

    rows = []
    try:
        @ray.remote(num_cpus=0.5)
        def fetch(refs: list, packed: bool) -> int:
            state = ray.get(refs[0])
            return len(from_store(state, copy=False) if packed else state)

        # the object-store round trip alone, full state: pickled tensors (the earlier publish) vs packed arrays
        for kind, make in (("full state, pickled tensors (before)",
                            lambda: {k: v.detach().to("cpu", copy=True) for k, v in policy.state_dict().items()}),
                           ("full state, packed arrays", lambda: to_store(policy.state_dict()))):
            put, get = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                ref = ray.put(make())
                t1 = time.perf_counter()
                ray.get(fetch.remote([ref], "packed" in kind))
                get.append(time.perf_counter() - t1)
                put.append(t1 - t0)
                del ref
            rows.append({"publish": kind, "gb": round(total, 3), "put_s": round(statistics.median(put), 3),
                         "worker_load_s": round(statistics.median(get), 3), "what": "ray.put + a task's ray.get"})
            rows[-1]["gb_per_s"] = round(total / (rows[-1]["put_s"] + rows[-1]["worker_load_s"]), 2)
            print(rows[-1], flush=True)
        pool = RolloutWorkerPool(policy, 1, cpus_per_worker=0.5)
        pool.value(obs)  # the first (full) load
        for kind, full in (("full state", True), ("trainable part", False)):
            put, load = [], []
            for _ in range(args.repeats):
                with torch.no_grad():
                    for layer in policy.layers[:trained]:
                        layer.weight.add_(1e-3)
                t0 = time.perf_counter()
                pool.publish(policy, full=full)
                t1 = time.perf_counter()
                pool.value(obs)  # the worker fetches and loads the new version
                t2 = time.perf_counter()
                put.append(t1 - t0)
                load.append(t2 - t1)
            gb = pool.last_publish_bytes / 1e9
            rows.append({"publish": "pool.publish, " + kind, "gb": round(gb, 3), "put_s": round(statistics.median(put), 3),
                         "worker_load_s": round(statistics.median(load), 3), "what": "publish + the worker's next request"})
            rows[-1]["gb_per_s"] = round(gb / (rows[-1]["put_s"] + rows[-1]["worker_load_s"]), 2)
            print(rows[-1], flush=True)
        pool.close()
    finally:
        ray.shutdown()
    md = ["| publish | GB | ray.put (s) | reader fetch (+ load) (s) | GB/s end to end |", "|---|---:|---:|---:|---:|"]
    md += [f"| {r['publish']} | {r['gb']} | {r['put_s']} | {r['worker_load_s']} | {r['gb_per_s']} |" for r in rows]
    md.append(f"\n{layers} bf16 linear layers {args.width}x{args.width} ({total:.2f} GB), {trained} trained; one CPU "
              f"rollout worker on this machine; medians of {args.repeats} publishes. The first two rows are the object-store "
              f"round trip alone (a Ray task fetches the object); the pool rows include the worker's load_state_dict.")
    write_results("publish" + args.suffix, {"config": vars(args), "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    run_main(main)
