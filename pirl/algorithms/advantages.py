"""Advantage estimators and group filters as pure functions on tensors.

Layout: rollouts are [T, N] (T chunk steps, N sub-environments); one env step executes
one action chunk, so gamma and lambda act on chunks (MATH.md). ``valid`` marks the steps
that belong to an episode: in episodic rollouts an env's steps after its episode ended
are invalid. Groups (GRPO / LOOP) are given by an integer id per env [N].
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _check_finite(name: str, x: Tensor, where: Optional[Tensor] = None) -> None:
    bad = ~torch.isfinite(x)
    if where is not None:
        bad = bad & where
    if bool(bad.any()):
        raise ValueError(f"{name} contains {int(bad.sum())} non-finite value(s) (NaN/inf); check the environment's rewards")


def _check_same_shape(**tensors: Tensor) -> tuple[int, ...]:
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    first = next(iter(shapes.values()))
    if any(s != first for s in shapes.values()):
        raise ValueError(f"shape mismatch: {shapes}; all must be [T, N]")
    if len(first) != 2:
        raise ValueError(f"expected [T, N] tensors, got shape {first}")
    if first[0] == 0 or first[1] == 0:
        raise ValueError(f"empty rollout: shape {first}")
    return first


def gae(
    rewards: Tensor,
    values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    bootstrap_values: Tensor,
    valid: Tensor,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Chunk-level generalised advantage estimation. Returns (advantages, returns), both [T, N].

    All inputs are [T, N]. ``values[t]`` is V(o_t). At a terminated step the next value is 0;
    at a truncated step it is ``bootstrap_values[t]`` (V of the episode's final observation).
    A valid step in the last row T - 1 that neither terminated nor truncated (the rollout
    window ended mid-episode) also bootstraps from ``bootstrap_values``. The recursion
    never crosses an episode end. Invalid steps get advantage and return 0.
    """
    T, N = _check_same_shape(
        rewards=rewards, values=values, terminated=terminated, truncated=truncated,
        bootstrap_values=bootstrap_values, valid=valid,
    )
    valid = valid.bool()
    terminated, truncated = terminated.bool() & valid, truncated.bool() & valid
    _check_finite("rewards", rewards, valid)
    _check_finite("values", values, valid)
    ended = terminated | truncated
    # An episode must not stop being valid without ending (that would silently drop a bootstrap).
    if T > 1:
        gap = valid[:-1] & ~ended[:-1] & ~valid[1:]
        if bool(gap.any()):
            t, n = (int(i) for i in gap.nonzero()[0])
            raise ValueError(
                f"step (t={t}, n={n}) is valid, did not terminate or truncate, but step t+1 is invalid; "
                "mark the episode's last step terminated or truncated"
            )
    r = rewards.float()
    v = values.float().detach()
    # next value: 0 after termination, V(final obs) after truncation or at the window's end
    need_boot = truncated.clone()
    need_boot[-1] |= valid[-1] & ~ended[-1]
    _check_finite("bootstrap_values", bootstrap_values, need_boot)
    v_next = torch.zeros_like(v)
    v_next[:-1] = v[1:]
    v_next = torch.where(need_boot, bootstrap_values.float().detach(), v_next)
    v_next = torch.where(terminated, torch.zeros_like(v), v_next)
    delta = r - v + gamma * v_next
    adv = torch.zeros_like(v)
    last = torch.zeros(N, dtype=v.dtype, device=v.device)
    for t in reversed(range(T)):
        carry = torch.where(ended[t], torch.zeros_like(last), last)
        last = torch.where(valid[t], delta[t] + gamma * lam * carry, torch.zeros_like(last))
        adv[t] = last
    returns = torch.where(valid, adv + v, torch.zeros_like(v))
    return adv, returns


def episode_returns(rewards: Tensor, valid: Tensor) -> Tensor:
    """[N] undiscounted return of each env's episode: the sum of its valid rewards [T, N]."""
    _check_same_shape(rewards=rewards, valid=valid)
    valid = valid.bool()
    _check_finite("rewards", rewards, valid)
    return torch.where(valid, rewards.float(), torch.zeros_like(rewards, dtype=torch.float32)).sum(0)


def _group_index(groups: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """(inverse [N] group position, counts [G], unique ids [G])."""
    if groups.dim() != 1 or groups.shape[0] != n:
        raise ValueError(f"groups must be [N] = [{n}], got shape {tuple(groups.shape)}")
    uniq, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    return inverse, counts, uniq


def _check_groups(returns: Tensor, groups: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if returns.dim() != 1:
        raise ValueError(f"{what}: returns must be [N], got shape {tuple(returns.shape)}")
    if returns.shape[0] == 0:
        raise ValueError(f"{what}: empty batch (no trajectories)")
    _check_finite("returns", returns)
    inverse, counts, uniq = _group_index(groups, returns.shape[0])
    singles = uniq[counts < 2]
    if singles.numel():
        raise ValueError(
            f"{what} needs at least 2 rollouts per group; group id(s) {singles.tolist()[:8]} have 1 "
            "(raise the group size, or drop such groups with a group filter)"
        )
    return inverse, counts


def _broadcast(adv: Tensor, valid: Optional[Tensor]) -> Tensor:
    if valid is None:
        return adv
    if valid.dim() != 2 or valid.shape[1] != adv.shape[0]:
        raise ValueError(f"valid must be [T, N={adv.shape[0]}], got shape {tuple(valid.shape)}")
    return torch.where(valid.bool(), adv.unsqueeze(0).expand_as(valid), torch.zeros((), dtype=adv.dtype))


def grpo_advantages(returns: Tensor, groups: Tensor, valid: Optional[Tensor] = None, eps: float = 1e-6) -> Tensor:
    """GRPO: (R - mean_G R) / (std_G R + eps) per group, std with 1/G (population).

    ``returns`` [N], ``groups`` [N] integer ids. Without ``valid`` returns [N]; with
    ``valid`` [T, N] broadcasts to every valid step and returns [T, N] (0 elsewhere).
    A group whose returns are all equal gets advantage 0. Groups of one raise ValueError.
    """
    inverse, counts = _check_groups(returns, groups, "grpo_advantages")
    R = returns.float()
    G = counts.shape[0]
    n = counts.to(R.dtype)
    mean = torch.zeros(G, dtype=R.dtype, device=R.device).index_add_(0, inverse, R) / n
    centred = R - mean[inverse]
    var = torch.zeros(G, dtype=R.dtype, device=R.device).index_add_(0, inverse, centred.square()) / n
    adv = centred / (var.sqrt()[inverse] + eps)
    return _broadcast(adv, valid)


def rloo_advantages(returns: Tensor, groups: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """LOOP / RLOO: A_k = R_k - mean_{j != k} R_j within each group, no std normalisation.

    Shapes and ``valid`` broadcasting as :func:`grpo_advantages`. Groups of one raise ValueError.
    """
    inverse, counts = _check_groups(returns, groups, "rloo_advantages")
    R = returns.float()
    total = torch.zeros(counts.shape[0], dtype=R.dtype, device=R.device).index_add_(0, inverse, R)
    n = counts.to(R.dtype)[inverse]
    adv = R - (total[inverse] - R) / (n - 1)
    return _broadcast(adv, valid)


def filter_uniform_groups(scores: Tensor, groups: Tensor) -> tuple[Tensor, int]:
    """RIPT-VLA dynamic rejection: drop groups whose scores [N] (success or return) are all equal.

    Returns (keep [N] bool, number of groups dropped). Groups of one are all-equal, so dropped.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be [N], got shape {tuple(scores.shape)}")
    _check_finite("scores", scores)
    inverse, counts, _ = _group_index(groups, scores.shape[0])
    s = scores.float()
    G = counts.shape[0]
    gmax = torch.full((G,), -torch.inf, device=s.device).scatter_reduce(0, inverse, s, "amax")
    gmin = torch.full((G,), torch.inf, device=s.device).scatter_reduce(0, inverse, s, "amin")
    keep_group = gmax > gmin
    return keep_group[inverse], int((~keep_group).sum())


def filter_groups_by_success(success: Tensor, groups: Tensor, lo: float = 0.1, hi: float = 0.9) -> tuple[Tensor, int]:
    """πRL filter: keep groups whose mean success [N] lies in [lo, hi].

    Returns (keep [N] bool, number of groups dropped).
    """
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"need 0 <= lo <= hi <= 1, got lo={lo}, hi={hi}")
    if success.dim() != 1:
        raise ValueError(f"success must be [N], got shape {tuple(success.shape)}")
    _check_finite("success", success.float())
    inverse, counts, _ = _group_index(groups, success.shape[0])
    mean = torch.zeros(counts.shape[0], device=success.device).index_add_(0, inverse, success.float()) / counts
    keep_group = (mean >= lo) & (mean <= hi)
    return keep_group[inverse], int((~keep_group).sum())


def normalize(x: Tensor, eps: float = 1e-8) -> Tensor:
    """(x - mean) / (std + eps) over all elements (batch advantage normalisation)."""
    if x.numel() < 2:
        return x - x.mean()
    return (x - x.mean()) / (x.std(unbiased=False) + eps)


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """1 - Var(returns - values) / Var(returns); NaN when the returns are constant."""
    var = returns.float().var(unbiased=False)
    if var <= 0:
        return float("nan")
    return float(1.0 - (returns.float() - values.float()).var(unbiased=False) / var)
