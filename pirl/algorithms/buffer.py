"""Rollout storage for chunked actions [T, N] and the flat batch the update loop consumes.

The buffer never looks inside a chain: it only needs the record to offer
``index(idx)``, ``cat(list)`` (static) and ``to(device)``, so non-flow policies can
bring their own record type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from pirl.algorithms import advantages as A
from pirl.algorithms.config import AdvantageConfig

Obs = dict[str, Tensor]

# Per (step, env) scalars: log-prob, value, reward, bootstrap value (float32), terminated,
# truncated, valid, success (bool).
_SCALAR_BYTES = 4 * 4 + 4 * 1


def per_sample_bytes(x: Any) -> int:
    """Bytes per batch row of a tensor / dict / list / dataclass of tensors with a leading batch dim."""
    if isinstance(x, Tensor):
        return 0 if x.dim() == 0 or x.shape[0] == 0 else x.element_size() * x.numel() // x.shape[0]
    if isinstance(x, dict):
        return sum(per_sample_bytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(per_sample_bytes(v) for v in x)
    if dataclasses.is_dataclass(x):
        return sum(per_sample_bytes(getattr(x, f.name)) for f in dataclasses.fields(x))
    return 0


def _nbytes(x: Any) -> int:
    if isinstance(x, Tensor):
        return x.element_size() * x.numel()
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(v) for v in x)
    if dataclasses.is_dataclass(x):
        return sum(_nbytes(getattr(x, f.name)) for f in dataclasses.fields(x))
    return 0


class RolloutBuffer:
    """Episodic rollouts of N sub-environments for up to T chunk steps.

    Per step t and env n: the prepared observation, the chain record, the old log-prob
    ([N] or [N, M]), the value, the chunk reward, terminated, truncated, success, and a valid
    mask (False after the env's episode ended). Per env: task, group and context ids.
    For a truncated step, ``bootstrap_value`` holds V(final observation).
    """

    def __init__(self, num_steps: int, num_envs: int, device: torch.device | str = "cpu") -> None:
        if num_steps < 1 or num_envs < 1:
            raise ValueError(f"need num_steps >= 1 and num_envs >= 1, got {num_steps}, {num_envs}")
        self.T, self.N, self.device = num_steps, num_envs, torch.device(device)
        z = lambda dtype: torch.zeros(num_steps, num_envs, dtype=dtype, device=self.device)  # noqa: E731
        self.rewards = z(torch.float32)
        self.values = z(torch.float32)
        self.bootstrap_values = z(torch.float32)
        self.terminated = z(torch.bool)
        self.truncated = z(torch.bool)
        self.success = z(torch.bool)
        self.valid = z(torch.bool)
        self.log_probs: Optional[Tensor] = None  # [T, N] or [T, N, M], allocated on the first add
        self.obs: Optional[Obs] = None
        self.chains: list[Any] = []
        self.task = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.group = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.context = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.has_values = True
        self.groups_dropped = 0
        self.step = 0

    # -- sizing --------------------------------------------------------------------------
    @staticmethod
    def estimate_bytes(num_steps: int, num_envs: int, obs: Obs, chain: Any, log_prob: Optional[Tensor] = None) -> int:
        """Bytes a buffer of T x N will hold, from one example batch of obs and chain (any batch size).

        Linear in T x N; a flow chain costs about (3K + 1) x H x D floats per sample.
        """
        row = per_sample_bytes(obs) + per_sample_bytes(chain) + _SCALAR_BYTES
        if log_prob is not None and log_prob.dim() > 1:
            row += per_sample_bytes(log_prob) - 4
        return num_steps * num_envs * row + num_envs * 3 * 8

    def nbytes(self) -> int:
        """Bytes held now."""
        held = [self.rewards, self.values, self.bootstrap_values, self.terminated, self.truncated, self.success,
                self.valid, self.log_probs, self.obs, self.chains, self.task, self.group, self.context]
        return sum(_nbytes(x) for x in held if x is not None)

    # -- filling -------------------------------------------------------------------------
    def set_ids(self, task: Tensor, group: Tensor, context: Tensor) -> None:
        """Per-env task, group and context ids, each [N]."""
        for name, x in (("task", task), ("group", group), ("context", context)):
            x = torch.as_tensor(x, device=self.device)
            if tuple(x.shape) != (self.N,):
                raise ValueError(f"{name} ids must be [N={self.N}], got shape {tuple(x.shape)}")
            getattr(self, name).copy_(x.long())

    def add(
        self,
        obs: Obs,
        chain: Any,
        log_prob: Tensor,
        value: Optional[Tensor],
        reward: Tensor,
        terminated: Tensor,
        truncated: Tensor,
        valid: Tensor,
        success: Optional[Tensor] = None,
    ) -> None:
        """Stores one chunk step for all N envs. ``valid`` [N]: the env's episode was running at this step."""
        if self.step >= self.T:
            raise ValueError(f"buffer full: it holds {self.T} steps")
        t, N = self.step, self.N
        for name, x in (("reward", reward), ("terminated", terminated), ("truncated", truncated), ("valid", valid)):
            if tuple(x.shape) != (N,):
                raise ValueError(f"{name} must be [N={N}], got shape {tuple(x.shape)}")
        if log_prob.shape[0] != N or log_prob.dim() > 2:
            raise ValueError(f"log_prob must be [N={N}] or [N, M], got shape {tuple(log_prob.shape)}")
        if value is not None and tuple(value.shape) != (N,):
            raise ValueError(f"value must be [N={N}], got shape {tuple(value.shape)}")
        for key, x in obs.items():
            if x.shape[0] != N:
                raise ValueError(f"obs[{key!r}] has batch {x.shape[0]}, expected N={N}")
        if self.obs is None:
            self.obs = {k: torch.zeros((self.T, *x.shape), dtype=x.dtype, device=self.device) for k, x in obs.items()}
            self.log_probs = torch.zeros((self.T, *log_prob.shape), dtype=torch.float32, device=self.device)
        elif set(obs) != set(self.obs):
            raise ValueError(f"obs keys changed from {sorted(self.obs)} to {sorted(obs)}")
        for k, x in obs.items():
            self.obs[k][t] = x.to(self.device)
        self.log_probs[t] = log_prob.detach().to(self.device)
        if value is None:
            self.has_values = False
        else:
            self.values[t] = value.detach().to(self.device)
        self.rewards[t] = reward.to(self.device)
        self.terminated[t] = terminated.to(self.device)
        self.truncated[t] = truncated.to(self.device)
        self.valid[t] = valid.to(self.device)
        if success is not None:
            self.success[t] = success.to(self.device)
        self.chains.append(chain.to(self.device))
        self.step += 1

    def set_bootstrap(self, env_idx: Tensor, values: Tensor, t: Optional[int] = None) -> None:
        """V(final observation) for envs ``env_idx`` truncated at step ``t`` (default: the last added)."""
        t = self.step - 1 if t is None else t
        self.bootstrap_values[t, env_idx] = values.detach().to(self.device).float()

    def drop_envs(self, drop: Tensor) -> None:
        """Marks every step of the envs in ``drop`` [N] bool invalid (filtered groups)."""
        self.valid[:, drop.to(self.device)] = False

    # -- reading -------------------------------------------------------------------------
    def _trim(self, x: Tensor) -> Tensor:
        return x[: self.step]

    def episode_success(self) -> Tensor:
        """[N] bool: the env succeeded at any valid step."""
        return (self._trim(self.success) & self._trim(self.valid)).any(0)

    def episode_returns(self) -> Tensor:
        """[N] undiscounted episode returns."""
        return A.episode_returns(self._trim(self.rewards), self._trim(self.valid))

    def advantages(self, cfg: AdvantageConfig) -> tuple[Tensor, Tensor]:
        """(advantages, returns) [T', N] for the T' steps added; returns are GAE's critic targets
        (for GRPO / RLOO the broadcast episode return)."""
        if self.step == 0:
            raise ValueError("empty rollout buffer: no step was added")
        tr = self._trim
        valid = tr(self.valid)
        if cfg.estimator == "gae":
            if not self.has_values:
                raise ValueError("GAE needs values: the policy has no value head (attach one, or use grpo / rloo)")
            return A.gae(tr(self.rewards), tr(self.values), tr(self.terminated), tr(self.truncated),
                         tr(self.bootstrap_values), valid, cfg.gamma, cfg.lam)
        kept = valid.any(0)
        if not bool(kept.any()):
            raise ValueError("empty batch: every env of the rollout is invalid (all groups dropped?)")
        R = A.episode_returns(tr(self.rewards), valid)
        adv_env = torch.zeros(self.N, device=self.device)
        if cfg.estimator == "grpo":
            adv_env[kept] = A.grpo_advantages(R[kept], self.group[kept], eps=cfg.grpo_eps)
        else:
            adv_env[kept] = A.rloo_advantages(R[kept], self.group[kept])
        adv = torch.where(valid, adv_env.expand_as(valid), torch.zeros_like(adv_env))
        returns = torch.where(valid, R.expand_as(valid), torch.zeros_like(R))
        return adv, returns

    def to_batch(self, cfg: AdvantageConfig) -> "RolloutBatch":
        """Advantages, then the valid steps flattened (t-major) into a :class:`RolloutBatch`."""
        adv, returns = self.advantages(cfg)
        T = self.step
        valid = self._trim(self.valid).reshape(-1)
        idx = valid.nonzero().squeeze(1)
        flat = lambda x: x[:T].reshape(T * self.N, *x.shape[2:])[idx]  # noqa: E731
        chain = type(self.chains[0]).cat(self.chains).index(idx)
        ids = lambda x: x.unsqueeze(0).expand(T, self.N).reshape(-1)[idx]  # noqa: E731
        return RolloutBatch(
            obs={k: flat(v) for k, v in self.obs.items()},
            chain=chain,
            old_log_prob=flat(self.log_probs),
            old_value=flat(self.values) if self.has_values else None,
            advantages=adv.reshape(-1)[idx],
            returns=returns.reshape(-1)[idx],
            task=ids(self.task),
            group=ids(self.group),
            groups_dropped=self.groups_dropped,
        )


@dataclass
class RolloutBatch:
    """B flat samples (valid chunk steps) ready for minibatching."""

    obs: Obs
    """Prepared observation tensors, each [B, ...]."""
    chain: Any
    """The stored chain records of the B samples (opaque: index / cat / to)."""
    old_log_prob: Tensor
    """[B] (chunk ratio) or [B, M] (per-element ratio) log-probs under the rollout policy."""
    old_value: Optional[Tensor]
    """[B] rollout values, or None without a critic."""
    advantages: Tensor
    """[B] advantages (not yet normalised)."""
    returns: Tensor
    """[B] value targets (GAE) or episode returns (GRPO / RLOO)."""
    task: Tensor
    """[B] task ids."""
    group: Tensor
    """[B] group ids."""
    groups_dropped: int = 0
    """Groups removed by the group filter while collecting this batch."""

    def __len__(self) -> int:
        return int(self.advantages.shape[0])

    def index(self, idx: Tensor) -> "RolloutBatch":
        """The selected rows (a minibatch)."""
        return RolloutBatch(
            obs={k: v[idx] for k, v in self.obs.items()},
            chain=self.chain.index(idx),
            old_log_prob=self.old_log_prob[idx],
            old_value=self.old_value[idx] if self.old_value is not None else None,
            advantages=self.advantages[idx],
            returns=self.returns[idx],
            task=self.task[idx],
            group=self.group[idx],
            groups_dropped=self.groups_dropped,
        )

    def to(self, device: torch.device | str) -> "RolloutBatch":
        return RolloutBatch(
            obs={k: v.to(device) for k, v in self.obs.items()},
            chain=self.chain.to(device),
            old_log_prob=self.old_log_prob.to(device),
            old_value=self.old_value.to(device) if self.old_value is not None else None,
            advantages=self.advantages.to(device),
            returns=self.returns.to(device),
            task=self.task.to(device),
            group=self.group.to(device),
            groups_dropped=self.groups_dropped,
        )

    def replace(self, **changes: Any) -> "RolloutBatch":
        return dataclasses.replace(self, **changes)

    @staticmethod
    def cat(batches: Sequence["RolloutBatch"]) -> "RolloutBatch":
        """Concatenates batches (e.g. from several rollout tries); empty ones are skipped."""
        batches = [b for b in batches if len(b) > 0]
        if not batches:
            raise ValueError("empty batch: nothing to concatenate")
        first = batches[0]
        if len({tuple(sorted(b.obs)) for b in batches}) != 1:
            raise ValueError("cannot concatenate batches with different observation keys")
        has_v = [b.old_value is not None for b in batches]
        return RolloutBatch(
            obs={k: torch.cat([b.obs[k] for b in batches]) for k in first.obs},
            chain=type(first.chain).cat([b.chain for b in batches]),
            old_log_prob=torch.cat([b.old_log_prob for b in batches]),
            old_value=torch.cat([b.old_value for b in batches]) if all(has_v) else None,
            advantages=torch.cat([b.advantages for b in batches]),
            returns=torch.cat([b.returns for b in batches]),
            task=torch.cat([b.task for b in batches]),
            group=torch.cat([b.group for b in batches]),
            groups_dropped=sum(b.groups_dropped for b in batches),
        )


def build_batch(buffers: Sequence[RolloutBuffer], cfg: AdvantageConfig) -> RolloutBatch:
    """Advantages per buffer (groups never span buffers), then one flat batch of the valid steps."""
    if not buffers:
        raise ValueError("empty batch: no rollout buffers")
    parts = [b.to_batch(cfg) for b in buffers if b.step > 0 and bool(b.valid[: b.step].any())]
    dropped = sum(b.groups_dropped for b in buffers)
    if not parts:
        raise ValueError(f"empty batch: no valid step in {len(buffers)} buffer(s) ({dropped} group(s) dropped)")
    batch = RolloutBatch.cat(parts)
    batch.groups_dropped = dropped
    return batch
