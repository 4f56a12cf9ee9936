"""Data-parallel PPO update over ``torch.distributed`` (gloo on CPU, nccl or gloo on GPU).

Every rank holds the same policy, optimiser state and full rollout batch (the Ray layer
ships it), and the same minibatch order (same seed). Each rank re-scores its share of every
minibatch; gradients and diagnostics are all-reduced before the shared clip + optimiser
step, so all ranks stay identical and equal the single-process PPOUpdater up to float
summation order. The loss math is PPOUpdater's own: this class only splits and reduces.
Every rank runs the same number of forward/backward passes per minibatch (a smaller or empty
share is padded with weight-0 rows), which the sharded subclass needs
(:mod:`pirl.distributed.fsdp`, ``learner_strategy='fsdp'``): there every forward is a collective.

Every tensor a collective sees lives on the policy's device, because nccl reduces CUDA tensors
only; gloo takes CPU tensors and (all-reduce, broadcast) CUDA ones, which is what lets several
ranks share one GPU. nccl needs a GPU of its own per rank: :func:`shared_gpus` finds ranks that
were handed the same one (:class:`LearnerGroup` checks before the rendezvous, where NCCL would
otherwise hang or fail obscurely).
"""

from __future__ import annotations

import copy
import math
import os
import socket
from datetime import timedelta
from typing import Any, Callable, Literal, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from pirl.algorithms.buffer import RolloutBatch
from pirl.algorithms.ppo import PPOUpdater, RatioCheckError
from pirl.distributed.store import from_store, to_store


Backend = Literal["auto", "nccl", "gloo"]


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """'nccl' or 'gloo' for learner ranks whose policy lives on ``device`` ('auto': nccl on CUDA, gloo on CPU)."""
    device = torch.device(device)
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"learner backend must be 'auto', 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"learner backend 'nccl' reduces CUDA tensors only; the policy is on {device} "
                         "(use 'gloo' or 'auto' for a CPU policy)")
    return backend


def _indexed(device: torch.device | str) -> torch.device:
    """``device`` with its index filled in ('cuda' -> the current CUDA device)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def gpu_uuid(device: torch.device | str) -> Optional[str]:
    """The physical identity of ``device``'s GPU (same in every process that sees it, whatever its index
    there), or None off CUDA."""
    device = _indexed(device)
    return str(torch.cuda.get_device_properties(device).uuid) if device.type == "cuda" else None


def shared_gpus(uuids: list[Optional[str]]) -> dict[str, list[int]]:
    """GPU UUID -> the ranks (list positions) that were handed that one GPU, for GPUs held by more than one
    rank; ranks without a GPU (None) share nothing."""
    ranks: dict[str, list[int]] = {}
    for rank, uuid in enumerate(uuids):
        if uuid is not None:
            ranks.setdefault(uuid, []).append(rank)
    return {uuid: r for uuid, r in ranks.items() if len(r) > 1}


def check_one_gpu_per_rank(uuids: list[Optional[str]], backend: str) -> None:
    """Raises (with the cause and the fixes) when nccl ranks would share a GPU: NCCL refuses that, by hanging
    or failing in the rendezvous rather than with a message naming it. gloo ranks may share."""
    shared = shared_gpus(uuids)
    if backend != "nccl" or not shared:
        return
    which = "; ".join(f"ranks {r} on GPU {uuid}" for uuid, r in shared.items())
    raise RuntimeError(
        f"runner.learner_backend='nccl' needs one GPU per learner rank, but {which} (rank 0 is the trainer). Ray does "
        "not count the trainer's (driver's) GPU, so it can hand a learner rank the trainer's GPU. Fixes: give Ray "
        "only the GPUs the trainer does not use, e.g. on a 4-GPU node `ray start --head --num-gpus=3` (Ray hands "
        "out GPUs 0-2) and the trainer with runner.address=auto, CUDA_VISIBLE_DEVICES including one more GPU than Ray "
        "is given (all 4) and device=cuda:3; or use runner.learner_backend=gloo, whose ranks may share a GPU.")


def init_process_group(rank: int, world_size: int, *, address: str = "127.0.0.1", port: int = 29511,
                       backend: str = "gloo", timeout_s: float = 300.0,
                       device: Optional[torch.device | str] = None) -> None:
    """Joins the ``world_size`` learner processes (rank 0 listens on address:port). nccl binds this process
    to ``device`` (default: the current CUDA device)."""
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        device = _indexed(device or "cuda")
        # NCCL's communicator and every later collective use the current device, which need not be the policy's
        torch.cuda.set_device(device)
        kwargs["device_id"] = device
    # an explicit tcp:// address: MASTER_* left in the environment by an earlier group would win over ours
    dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s), **kwargs)


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Makes every rank's weights rank ``src``'s (call once after building the policy)."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


class DistributedPPOUpdater(PPOUpdater):
    """PPOUpdater whose minibatches are split across the ranks of the default process group."""

    sharded = False
    """True when ``policy`` is this rank's shard of the weights (FSDP), not a full replica."""

    def __init__(self, *args, group: Optional[dist.ProcessGroup] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_process_group() first")
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.device = next(self.policy.parameters()).device
        """Where every tensor handed to a collective lives (nccl reduces CUDA tensors only)."""

    # -- full state (collectives in the sharded subclass: every rank calls them together) -------------
    def full_state_dict(self) -> dict[str, Tensor]:
        """The policy's full state dict (CPU tensors): every rank's own here, rank 0's only when sharded."""
        return {k: v.detach().cpu().clone() for k, v in self.policy.state_dict().items()}

    def optimizer_state_dict(self) -> dict[str, Any]:
        """The full optimiser state on rank 0, in ``torch.optim.Optimizer.state_dict()`` layout."""
        return self.optimizer.state_dict()

    def load(self, state: dict[str, Any]) -> None:
        """Loads whichever of full ``policy`` weights, ``optimizer`` state (``state_dict()`` layout) and
        minibatch ``generator`` state ``state`` holds."""
        if "policy" in state:
            self.load_weights(state["policy"])
        if state.get("optimizer") is not None:
            self.load_optimizer(state["optimizer"])
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def load_weights(self, state: dict[str, Tensor]) -> None:
        self.policy.load_state_dict(state)

    def load_optimizer(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

    # -- the update ----------------------------------------------------------------------------------
    def _shard(self, mb: RolloutBatch) -> RolloutBatch:
        """This rank's contiguous share of a minibatch (sizes differ by at most one row)."""
        n = len(mb)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        return mb.index(torch.arange(lo, hi, device=mb.advantages.device))

    def _filler(self, mb: RolloutBatch) -> RolloutBatch:
        """A row every rank can re-score when its own share is empty: the pass keeps the ranks in step
        (a sharded policy all-gathers its weights in every forward) and weighs nothing."""
        return mb.index(torch.arange(1, device=mb.advantages.device))

    @torch.no_grad()
    def check_ratio(self, batch: RolloutBatch) -> dict[str, float]:
        """This rank's share checked, the results reduced (max deviation and use, min tolerance): every rank
        decides and reports alike."""
        shard = self._shard(batch)
        # every rank re-scores in as many passes as the largest share needs (a sharded policy all-gathers its
        # weights in every forward: unequal pass counts would hang the collectives)
        micro = self.cfg.micro_batch_size
        largest = math.ceil(len(batch) / self.world)  # the largest share's row count
        self._ratio_passes = math.ceil(largest / micro) if micro else 1
        self._ratio_filler = self._filler(batch)
        try:
            # a filler row is another rank's: its deviation is that rank's too
            m, used, _ = self.ratio_deviation(shard if len(shard) else self._ratio_filler)
        finally:
            self._ratio_passes = 0
        # MAX of (deviation, -tolerance, use) in one collective; a NaN use fails the check on every rank
        used = used if used == used else math.inf
        vec = torch.tensor([m["policy/ratio_check"], -m["policy/ratio_check_tol"], used], device=self.device)
        dist.all_reduce(vec, op=dist.ReduceOp.MAX, group=self.group)
        dev, neg_tol, used = vec.tolist()
        if not used <= 1.0:
            return super().check_ratio(batch)  # raises with the full message
        return {"policy/ratio_check": dev, "policy/ratio_check_tol": -neg_tol}

    _ratio_passes = 0
    """During check_ratio: the evaluate passes every rank makes (the rest are weightless filler passes)."""

    def _evaluate_in_micro_batches(self, batch: RolloutBatch):
        out = super()._evaluate_in_micro_batches(batch)
        micro = self.cfg.micro_batch_size
        done = -(-len(batch) // micro) if micro and micro < len(batch) else 1
        for _ in range(self._ratio_passes - done):
            self.policy.evaluate(self._ratio_filler.obs, self._ratio_filler.chain)
        return out

    def _parts(self, mb: RolloutBatch, micro: int) -> list[tuple[RolloutBatch, float]]:
        """This rank's micro-batches of ``mb`` with their loss weights (fraction of the whole minibatch),
        padded with weight-0 filler rows so that every rank runs the same number of passes."""
        n, shard = len(mb), self._shard(mb)
        parts = []
        for s in range(0, len(shard), micro):
            part = shard.index(torch.arange(s, min(s + micro, len(shard)), device=mb.advantages.device))
            parts.append((part, len(part) / n))
        largest = -(-n // self.world)  # ceil: the largest share's row count
        return parts + [(self._filler(mb), 0.0)] * (-(-largest // micro) - len(parts))

    def _accumulate(self, mb: RolloutBatch, micro: int) -> tuple[dict[str, Tensor], bool]:
        """Forward/backward of this rank's share, weighted by its fraction of the whole minibatch,
        then SUM-reduction of gradients and weighted diagnostics (MAX for ratio_max)."""
        zero = torch.zeros((), device=self.device)
        diag_sum: dict[str, Tensor] = {"policy/ratio_max": zero.clone()}  # reduced in place below
        finite = True
        for part, w in self._parts(mb, micro):
            loss, diag = self.loss(part)
            # a non-finite loss still runs its backward (every rank joins every pass); the step is dropped
            finite = finite and bool(torch.isfinite(loss))
            (loss * w).backward()
            for k, v in diag.items():
                if k == "policy/ratio_max":
                    diag_sum[k] = torch.maximum(diag_sum[k], v) if w else diag_sum[k]
                else:
                    diag_sum[k] = diag_sum.get(k, zero) + (v * w if w else 0.0)
        flag = torch.tensor(float(finite), device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.group)
        if flag.item() == 0.0:
            return diag_sum, False
        self._reduce_grads()
        keys = sorted(k for k in diag_sum if k != "policy/ratio_max")
        vec = torch.stack([torch.as_tensor(diag_sum[k], dtype=torch.float32, device=self.device) for k in keys])
        dist.all_reduce(vec, group=self.group)
        diag_sum.update(zip(keys, vec.unbind()))
        dist.all_reduce(diag_sum["policy/ratio_max"], op=dist.ReduceOp.MAX, group=self.group)
        return diag_sum, True

    def _reduce_grads(self) -> None:
        """Sums the ranks' gradients: one all-reduce of a flat buffer (the sharded subclass's reduce-scatter
        ran during backward)."""
        has = torch.tensor([float(p.grad is not None) for p in self.params], device=self.device)
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


Strategy = Literal["ddp", "fsdp"]


def make_updater(strategy: Strategy, policy: torch.nn.Module, ppo: Any, optim: Any, seed: int,
                 **kwargs: Any) -> DistributedPPOUpdater:
    """This rank's updater: over ``policy`` itself (ddp: every rank a full replica) or over a sharded copy
    (fsdp: :mod:`pirl.distributed.fsdp`; ``kwargs`` go to FSDPPPOUpdater)."""
    if strategy == "fsdp":
        from pirl.distributed.fsdp import FSDPPPOUpdater

        return FSDPPPOUpdater(policy, ppo, optim, seed=seed, **kwargs)
    if strategy != "ddp":
        raise ValueError(f"learner strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    return DistributedPPOUpdater(policy, ppo, optim, seed=seed)


class LearnerFailure(RuntimeError):
    """A learner rank died or its collective broke (not a bug in the update): the trainer restarts the learner
    group and resumes from the last checkpoint (``TrainConfig.runner.max_learner_restarts``)."""


def _dead_ranks(pending: list, timeout_s: float = 5.0) -> list[int]:
    """Ranks (1-based) among ``pending`` calls whose actor is dead: a dead actor's call fails within a moment."""
    import ray

    if not pending:
        return []
    ready, _ = ray.wait(pending, num_returns=len(pending), timeout=timeout_s)
    dead = []
    for rank, ref in enumerate(pending, start=1):
        if ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError:
                dead.append(rank)
            except Exception:  # noqa: BLE001 - the rank's own error: it is alive, the cause is elsewhere
                pass
    return dead


def _is_link_error(e: BaseException) -> bool:
    """A torch.distributed transport error (a peer gone or a collective timed out), not an error of the math."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("gloo", "Connection closed by peer", "Connection reset", "Timed out", "timed out"))


class LearnerRank:
    """Learner rank >= 1 in a Ray actor: a policy replica (or shard) stepping in lockstep with the trainer (rank 0).

    On ``device='cuda'`` the replica lives on the GPU Ray gave the actor (Ray sets its CUDA_VISIBLE_DEVICES, so
    it is ``cuda:0`` here); states and batches arrive as CPU tensors and move there."""

    def __init__(self, rank: int, world: int, skeleton: list, ppo: Any, optim: Any, seed: int,
                 threads: int = 1, strategy: Strategy = "ddp", device: str = "cpu") -> None:
        import ray

        if threads:
            torch.set_num_threads(threads)
        self.rank, self.world, self.ppo, self.optim, self.seed = rank, world, ppo, optim, seed
        self.strategy = strategy
        self.device = _indexed(device)
        self.policy = ray.get(skeleton[0]).to(self.device)

    def pid(self) -> int:
        return os.getpid()

    def gpu(self) -> Optional[str]:
        """The UUID of this rank's GPU (None on CPU)."""
        return gpu_uuid(self.device)

    def join(self, address: str, port: int, timeout_s: float = 300.0, backend: str = "gloo") -> None:
        init_process_group(self.rank, self.world, address=address, port=port, timeout_s=timeout_s,
                           backend=backend, device=self.device)
        # fsdp shards this process's copy in place: no full replica stays behind
        kwargs = {"copy": False} if self.strategy == "fsdp" else {}
        self.updater = make_updater(self.strategy, self.policy, self.ppo, self.optim, self.seed, **kwargs)
        self.policy = self.updater.policy

    def load(self, state: dict[str, Any]) -> None:
        self.updater.load(from_store(state))  # copies: the optimiser state is written in place later

    def update(self, batch: RolloutBatch) -> None:
        self.updater.update(from_store(batch).to(self.device))  # rank 0 reports the (all-reduced) metrics
        if self.updater.sharded:
            self.updater.full_state_dict()  # a collective: rank 0 keeps the gathered weights

    def optimizer_state_dict(self) -> None:
        self.updater.optimizer_state_dict()  # a collective: rank 0 keeps the gathered state

    def state_dict(self) -> dict[str, Tensor]:
        """This rank's weights (CPU copies): a full replica (ddp) or its shards (fsdp)."""
        return {k: (v.to_local() if hasattr(v, "to_local") else v).detach().cpu().clone()
                for k, v in self.policy.state_dict().items()}

    def close(self) -> None:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LearnerGroup:
    """The PPO update over ``world`` processes: this process is rank 0, Ray actors are the others.

    Every rank gets the full batch through the object store (one ``ray.put`` per update) and
    re-scores its share; they start from rank 0's weights, optimiser and minibatch RNG
    (:meth:`load`) and stay equal because every step is the same all-reduced one.

    ``strategy='ddp'``: every rank holds the whole policy and optimiser; rank 0's are the trainer's
    own policy and ``self.updater``'s optimiser, which checkpoints save. ``strategy='fsdp'``: every
    rank, rank 0 included, holds a shard of a copy of the policy and of the optimiser state; after
    every update the full weights are gathered into the trainer's ``policy`` (rollouts, evaluation,
    checkpoints), and :attr:`optimizer` gathers / scatters the full optimiser state for checkpoints.

    Devices: the ranks run where the trainer's ``policy`` is. On CPU they are gloo processes. On CUDA
    every rank actor asks Ray for ``gpus_per_rank`` GPUs (default 1) and moves its replica to its GPU;
    ``backend='auto'`` is then nccl, which needs one GPU per rank, the trainer's included. Ray does not
    count the driver's GPU, so it may hand a rank the trainer's: the ranks' GPU UUIDs are compared before
    the rendezvous and a shared GPU is an error naming the fixes (:func:`check_one_gpu_per_rank`).
    ``backend='gloo'`` with ``gpus_per_rank < 1`` lets ranks share a GPU (gloo reduces CUDA tensors
    through host memory: for tests and one-GPU machines, not for speed); fsdp on CUDA needs nccl.
    Everything shipped to the ranks (the policy skeleton, states, batches) is a CPU copy.

    A rank that dies makes :meth:`update` raise :class:`LearnerFailure`. Under gloo that happens within a
    moment of its death (its peers' sockets close), not after the timeout; the trainer then rebuilds the
    group and resumes from its last checkpoint. Under nccl a dead peer is noticed only at the collective
    timeout (``timeout_s``), and NCCL's watchdog may then abort the trainer process (not tested).
    """

    def __init__(self, policy: torch.nn.Module, ppo: Any, optim: Any, *, world: int, seed: int = 0,
                 strategy: Strategy = "ddp", backend: Backend = "auto", threads: int = 1,
                 cpus_per_rank: float = 1.0, gpus_per_rank: Optional[float] = None, timeout_s: float = 300.0,
                 actor_options: Optional[Any] = None) -> None:
        import ray

        if world < 2:
            raise ValueError(f"a learner group needs world >= 2 processes, got {world}")
        if strategy not in ("ddp", "fsdp"):
            raise ValueError(f"learner strategy must be 'ddp' or 'fsdp', got {strategy!r}")
        device = _indexed(next(policy.parameters()).device)
        if device.type not in ("cpu", "cuda"):
            raise NotImplementedError(f"learner ranks run on CPU or CUDA, not {device.type}")
        backend = resolve_backend(backend, device)
        cuda = device.type == "cuda"
        if gpus_per_rank is None:
            gpus_per_rank = 1.0 if cuda else 0.0
        if cuda and not gpus_per_rank > 0:
            raise ValueError(f"a policy on {device} needs learner ranks on GPUs: gpus_per_rank > 0, "
                             f"got {gpus_per_rank}")
        if not cuda and gpus_per_rank:
            raise ValueError(f"gpus_per_rank={gpus_per_rank} for a policy on {device}: GPU ranks need a CUDA policy")
        if backend == "nccl" and gpus_per_rank < 1:
            raise ValueError(f"learner backend 'nccl' needs one GPU per rank: gpus_per_rank >= 1, got {gpus_per_rank} "
                             "(gloo ranks may share a GPU)")
        if strategy == "fsdp" and cuda and backend != "nccl":
            # FSDP all-gathers and reduce-scatters, which gloo does for CPU tensors only
            raise NotImplementedError("runner.learner_strategy='fsdp' on CUDA needs runner.learner_backend='nccl'")
        if cuda and ray.cluster_resources().get("GPU", 0.0) < gpus_per_rank * (world - 1):
            # the actors would wait for GPUs that never come
            raise ValueError(f"{world - 1} learner rank(s) x gpus_per_rank={gpus_per_rank} need "
                             f"{gpus_per_rank * (world - 1):g} GPUs; the Ray cluster has "
                             f"{ray.cluster_resources().get('GPU', 0.0):g}")
        self.policy, self.device, self.backend = policy, device, backend
        address, port = ray.util.get_node_ip_address(), _free_port()
        cls = ray.remote(num_cpus=cpus_per_rank, num_gpus=gpus_per_rank, max_restarts=0,
                         enable_task_events=False)(LearnerRank)
        options = actor_options or (lambda i: {})
        skeleton = [ray.put(copy.deepcopy(policy).cpu() if cuda else policy)]
        self.actors = [cls.options(**options(r - 1)).remote(r, world, skeleton, ppo, optim, seed, threads, strategy,
                                                              device.type)
                       for r in range(1, world)]
        try:
            # rendezvous only once every rank's process is up: starting actors can take minutes on a busy or
            # cold cluster, and the collective timeout should be about the collective, not that
            ray.get([a.pid.remote() for a in self.actors])
            check_one_gpu_per_rank([gpu_uuid(device)] + ray.get([a.gpu.remote() for a in self.actors]), backend)
        except BaseException:
            self._kill()
            raise
        joined = [a.join.remote(address, port, timeout_s, backend) for a in self.actors]
        init_process_group(0, world, address=address, port=port, timeout_s=timeout_s, backend=backend,
                           device=device)  # returns once all joined
        self.updater = make_updater(strategy, policy, ppo, optim, seed)  # fsdp: collectives the actors join
        ray.get(joined)
        self.load()

    @property
    def optimizer(self) -> Any:
        """What checkpoints save and restore: rank 0's optimiser (ddp), or the sharded one as a full state (fsdp)."""
        return _GatheredOptimizer(self) if self.updater.sharded else self.updater.optimizer

    @property
    def generator(self) -> torch.Generator:
        return self.updater.generator

    def load(self) -> None:
        """Copies rank 0's weights, minibatch RNG and (ddp) optimiser state to every rank (start, resume)."""
        state = {"policy": {k: v.detach().to("cpu", copy=True) for k, v in self.policy.state_dict().items()},
                 "generator": self.updater.generator.get_state()}
        if not self.updater.sharded:
            state["optimizer"] = self.updater.optimizer.state_dict()
        self._load(state)

    def _together(self, pending: list, rank0: Callable[[], Any], what: str) -> Any:
        """Runs rank 0's part of a step the actors' ``pending`` calls take part in, then waits for them.
        A dead rank or a broken link becomes :class:`LearnerFailure`; any other error (the update's own,
        e.g. a failed ratio check) propagates unchanged."""
        import ray

        try:
            out = rank0()
            ray.get(pending)  # surfaces a rank's error instead of a later hang
            return out
        except RatioCheckError:
            raise
        except Exception as e:
            dead = _dead_ranks(pending)
            if dead or isinstance(e, ray.exceptions.RayActorError) or _is_link_error(e):
                who = f"learner rank(s) {dead} died" if dead else "a learner collective failed"
                raise LearnerFailure(f"{who} during {what} ({type(e).__name__}: {str(e)[:300]})") from e
            raise

    def _load(self, state: dict[str, Any]) -> None:
        import ray

        ref = ray.put(to_store(state))
        pending = [a.load.remote(ref) for a in self.actors]
        # scattering into shards is a collective: rank 0 joins
        self._together(pending, lambda: self.updater.load(state) if self.updater.sharded else None, "a state load")

    def optimizer_state_dict(self) -> dict[str, Any]:
        """The full optimiser state (``state_dict()`` layout), gathered from every rank under fsdp."""
        pending = [a.optimizer_state_dict.remote() for a in self.actors] if self.updater.sharded else []
        return self._together(pending, self.updater.optimizer_state_dict, "an optimiser-state gather")

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        import ray

        ref = ray.put(to_store(batch))
        pending = [a.update.remote(ref) for a in self.actors]

        def rank0() -> dict[str, float]:
            metrics = self.updater.update(batch)
            if self.updater.sharded:  # the trainer's full policy takes the new weights (a collective)
                self.policy.load_state_dict(self.updater.full_state_dict())
            return metrics

        return self._together(pending, rank0, "the update")

    def _kill(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []

    def close(self) -> None:
        import ray

        try:
            ray.get([a.close.remote() for a in self.actors], timeout=30)
        except Exception:  # noqa: BLE001 - a dead rank has nothing to close
            pass
        self._kill()
        if dist.is_initialized():
            dist.destroy_process_group()


class _GatheredOptimizer:
    """A sharded optimiser as checkpoints see it: ``state_dict()`` gathers the full state to rank 0 and
    ``load_state_dict()`` scatters one into every rank's shards (both are collectives over the group)."""

    def __init__(self, group: LearnerGroup) -> None:
        self.group = group

    def state_dict(self) -> dict[str, Any]:
        return self.group.optimizer_state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.group._load({"optimizer": state})
