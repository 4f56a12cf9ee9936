"""Data-parallel PPO update over ``torch.distributed`` (gloo on CPU, nccl on GPU).

Every rank holds the same policy, optimiser state and full rollout batch (the Ray layer
ships it), and the same minibatch order (same seed). Each rank re-scores its share of every
minibatch; gradients and diagnostics are all-reduced before the shared clip + optimiser
step, so all ranks stay identical and equal the single-process PPOUpdater up to float
summation order. The loss math is PPOUpdater's own: this class only splits and reduces.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from pirl.algorithms.buffer import RolloutBatch
from pirl.algorithms.ppo import PPOUpdater, RatioCheckError, ppo_loss


def init_process_group(rank: int, world_size: int, *, address: str = "127.0.0.1", port: int = 29511,
                       backend: str = "gloo", timeout_s: float = 300.0) -> None:
    """Joins the ``world_size`` learner processes (rank 0 listens on address:port)."""
    # an explicit tcp:// address: MASTER_* left in the environment by an earlier group would win over ours
    dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Makes every rank's weights rank ``src``'s (call once after building the policy)."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


class DistributedPPOUpdater(PPOUpdater):
    """PPOUpdater whose minibatches are split across the ranks of the default process group."""

    def __init__(self, *args, group: Optional[dist.ProcessGroup] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_process_group() first")
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)

    def _shard(self, mb: RolloutBatch) -> RolloutBatch:
        """This rank's contiguous share of a minibatch (sizes differ by at most one row)."""
        n = len(mb)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return mb.index(torch.arange(lo, hi, device=mb.advantages.device))

    @torch.no_grad()
    def check_ratio(self, batch: RolloutBatch) -> float:
        shard = self._shard(batch)
        worst = torch.zeros(())
        if len(shard):
            try:
                worst = torch.tensor(super().check_ratio(shard))
            except RatioCheckError:
                worst = torch.tensor(float("inf"))
        dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=self.group)  # every rank decides alike
        if not float(worst) <= self.cfg.ratio_check_tol:
            return super().check_ratio(batch)  # raises with the full message
        return float(worst)

    def _accumulate(self, mb: RolloutBatch, micro: int) -> tuple[dict[str, Tensor], bool]:
        """Forward/backward of this rank's share, weighted by its fraction of the whole minibatch,
        then SUM-all-reduce of gradients and weighted diagnostics (MAX for ratio_max)."""
        n, shard = len(mb), self._shard(mb)
        diag_sum: dict[str, Tensor] = {}
        finite = True
        for s in range(0, len(shard), micro):
            part = shard.index(torch.arange(s, min(s + micro, len(shard)), device=shard.advantages.device))
            out = self.policy.evaluate(part.obs, part.chain)
            loss, diag = ppo_loss(
                out.log_prob, part.old_log_prob, part.advantages, self.cfg,
                value=out.value, old_value=part.old_value, returns=part.returns, entropy=out.entropy,
            )
            if not bool(torch.isfinite(loss)):
                finite = False
                break
            w = len(part) / n
            (loss * w).backward()
            for k, v in diag.items():
                diag_sum[k] = torch.maximum(diag_sum.get(k, v), v) if k == "policy/ratio_max" \
                    else diag_sum.get(k, 0.0) + v * w
        flag = torch.tensor(float(finite))
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
        if flag.item() == 0.0:
            return diag_sum, False
        self._all_reduce_grads()
        keys = sorted(k for k in diag_sum if k != "policy/ratio_max")
        if keys:
            vec = torch.stack([torch.as_tensor(diag_sum[k], dtype=torch.float32) for k in keys])
            dist.all_reduce(vec, group=self.group)
            diag_sum.update(zip(keys, vec.unbind()))
        if "policy/ratio_max" in diag_sum:
            dist.all_reduce(diag_sum["policy/ratio_max"], op=dist.ReduceOp.MAX, group=self.group)
        return diag_sum, True

    def _all_reduce_grads(self) -> None:
        # one flat buffer: one collective per step instead of one per tensor
        has = torch.tensor([float(p.grad is not None) for p in self.params])
        dist.all_reduce(has, op=dist.ReduceOp.MAX, group=self.group)
        params = [p for p, h in zip(self.params, has.tolist()) if h]  # a grad on any rank -> a grad on all
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, group=self.group)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


class LearnerRank:
    """Learner rank >= 1 in a Ray actor: a policy replica stepping in lockstep with the trainer (rank 0)."""

    def __init__(self, rank: int, world: int, skeleton: list, ppo: Any, optim: Any, seed: int,
                 threads: int = 1) -> None:
        import ray

        if threads:
            torch.set_num_threads(threads)
        self.rank, self.world, self.ppo, self.optim, self.seed = rank, world, ppo, optim, seed
        self.policy = ray.get(skeleton[0])

    def pid(self) -> int:
        return os.getpid()

    def join(self, address: str, port: int, timeout_s: float = 300.0) -> None:
        init_process_group(self.rank, self.world, address=address, port=port, timeout_s=timeout_s)
        self.updater = DistributedPPOUpdater(self.policy, self.ppo, self.optim, seed=self.seed)

    def load(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.updater.optimizer.load_state_dict(state["optimizer"])
        self.updater.generator.set_state(state["generator"])

    def update(self, batch: RolloutBatch) -> None:
        self.updater.update(batch)  # rank 0 reports the (all-reduced) metrics

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    def close(self) -> None:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LearnerGroup:
    """The PPO update over ``world`` gloo processes: this process is rank 0, Ray actors are the others.

    Every rank gets the full batch through the object store (one ``ray.put`` per update) and
    re-scores its share; they start from rank 0's weights, optimiser and minibatch RNG
    (:meth:`load`) and stay equal because every step is the same all-reduced one. The trainer
    keeps using ``self.updater`` (a DistributedPPOUpdater over its own policy) and its checkpoint.
    A dead rank is not replaced: the collective fails (gloo timeout) and so does the run.
    """

    def __init__(self, policy: torch.nn.Module, ppo: Any, optim: Any, *, world: int, seed: int = 0,
                 threads: int = 1, cpus_per_rank: float = 1.0, timeout_s: float = 300.0,
                 actor_options: Optional[Any] = None) -> None:
        import ray

        if world < 2:
            raise ValueError(f"a learner group needs world >= 2 processes, got {world}")
        if next(policy.parameters()).device.type != "cpu":
            raise NotImplementedError("the Ray learner group runs gloo on CPU only (no nccl ranks yet)")
        address, port = ray.util.get_node_ip_address(), _free_port()
        cls = ray.remote(num_cpus=cpus_per_rank, max_restarts=0)(LearnerRank)
        options = actor_options or (lambda i: {})
        skeleton = [ray.put(policy)]
        self.actors = [cls.options(**options(r - 1)).remote(r, world, skeleton, ppo, optim, seed, threads)
                       for r in range(1, world)]
        # rendezvous only once every rank's process is up: starting actors can take minutes on a busy or
        # cold cluster, and the gloo timeout should be about the collective, not that
        ray.get([a.pid.remote() for a in self.actors])
        joined = [a.join.remote(address, port, timeout_s) for a in self.actors]
        init_process_group(0, world, address=address, port=port, timeout_s=timeout_s)  # returns once all joined
        ray.get(joined)
        self.updater = DistributedPPOUpdater(policy, ppo, optim, seed=seed)
        self.load()

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.updater.optimizer  # rank 0's: the one checkpoints save and restore

    @property
    def generator(self) -> torch.Generator:
        return self.updater.generator

    def load(self) -> None:
        """Copies rank 0's weights, optimiser state and minibatch RNG to every other rank (start, resume)."""
        import ray

        u = self.updater
        state = ray.put({"policy": {k: v.detach().clone() for k, v in u.policy.state_dict().items()},
                         "optimizer": u.optimizer.state_dict(), "generator": u.generator.get_state()})
        ray.get([a.load.remote(state) for a in self.actors])

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        import ray

        ref = ray.put(batch)
        pending = [a.update.remote(ref) for a in self.actors]
        metrics = self.updater.update(batch)
        ray.get(pending)  # surfaces a rank's error instead of a later hang
        return metrics

    def close(self) -> None:
        import ray

        try:
            ray.get([a.close.remote() for a in self.actors], timeout=30)
        except Exception:  # noqa: BLE001 - a dead rank has nothing to close
            pass
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
        if dist.is_initialized():
            dist.destroy_process_group()
