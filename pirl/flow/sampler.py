"""Flow samplers with exact per-transition log-probabilities.

Convention (docs/MATH.md): time runs from t = 1 (noise) to t = 0 (data) on the grid
t_k = 1 - k/K, k = 0..K, step delta = 1/K. The velocity is any callable
``velocity(x, t) -> v`` (or ``(v, std)`` for Flow-Noise) with ``x`` of shape [B, ...]
and ``t`` a float tensor [B]. The model has already encoded its observation and holds
that context inside the closure; this module knows nothing about models.

Sampling and re-scoring share one code path (:func:`_transition`), so recomputing a
stored chain's log-probability under the same parameters returns the stored value
bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Optional, Union

import torch
from torch import Tensor

from pirl.errors import NonFiniteError

Method = Literal["ode", "flow_sde", "flow_noise"]
SdeSteps = Literal["one", "all"]
NoiseSteps = Literal["all", "one"]
Reduce = Literal["sum", "mean"]
VelocityOut = Union[Tensor, tuple[Tensor, Tensor]]
VelocityFn = Callable[[Tensor, Tensor], VelocityOut]
NoiseStdFn = Callable[[Tensor, Tensor], Tensor]

METHODS = ("ode", "flow_sde", "flow_noise")
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class Chain:
    """A sampled denoising chain and the Gaussian transitions it was drawn from.

    Shapes: B batch, K denoising steps, ``...`` the sample shape (e.g. an action chunk [H, D]).
    """

    xs: Tensor
    """[B, K+1, ...] the chain x at t = 1, 1 - 1/K, ..., 0 (float32)."""
    means: Tensor
    """[B, K, ...] mean of every transition (float32)."""
    stds: Tensor
    """[B, K, ...] std of every transition; 0 where the transition is deterministic."""
    stochastic: Tensor
    """[B, K] bool, True where transition k was drawn with noise."""
    log_probs: Tensor
    """[B, K] float32 log-density of each transition (0 where deterministic)."""
    init_log_prob: Tensor
    """[B] log N(x^0; 0, I) (Flow-Noise counts it in the chain's likelihood)."""
    method: str
    steps: int
    noise_level: Optional[float] = None
    reduce: str = "sum"
    mask: Optional[Tensor] = field(default=None, repr=False)
    """Elements that count in the log-probabilities (broadcastable to [B, ...]); None = all."""
    init_mean: Optional[Tensor] = field(default=None, repr=False)
    """[B, ...] mean of a learned prior N(init_mean, I) that x^0 was drawn from; its log-density then counts in the
    chain's likelihood whatever the method. None: x^0 ~ N(0, I), counted by Flow-Noise only."""

    @property
    def learned_prior(self) -> bool:
        return self.init_mean is not None

    @property
    def actions(self) -> Tensor:
        """[B, ...] the final sample x at t = 0."""
        return self.xs[:, -1]

    @property
    def log_prob(self) -> Tensor:
        """[B] the chain's log-likelihood, aggregated as :func:`aggregate` describes."""
        return aggregate(self.log_probs, self.stochastic, self.init_log_prob, self.method, self.reduce,
                         self.learned_prior)

    def index(self, idx: Tensor | slice) -> "Chain":
        """The chains of the selected batch rows (for minibatches)."""
        return replace(
            self,
            xs=self.xs[idx],
            means=self.means[idx],
            stds=self.stds[idx],
            stochastic=self.stochastic[idx],
            log_probs=self.log_probs[idx],
            init_log_prob=self.init_log_prob[idx],
            mask=self.mask[idx] if (self.mask is not None and self.mask.dim() == self.xs.dim() - 1) else self.mask,
            init_mean=None if self.init_mean is None else self.init_mean[idx],
        )

    def to(self, device: torch.device | str) -> "Chain":
        """A copy on another device."""
        return replace(
            self,
            xs=self.xs.to(device),
            means=self.means.to(device),
            stds=self.stds.to(device),
            stochastic=self.stochastic.to(device),
            log_probs=self.log_probs.to(device),
            init_log_prob=self.init_log_prob.to(device),
            mask=self.mask.to(device) if self.mask is not None else None,
            init_mean=None if self.init_mean is None else self.init_mean.to(device),
        )

    @staticmethod
    def cat(chains: "list[Chain]") -> "Chain":
        """Concatenates chains of one method and K along the batch."""
        first = chains[0]
        for c in chains[1:]:
            if (c.method, c.steps, c.noise_level, c.reduce, c.learned_prior) != (
                    first.method, first.steps, first.noise_level, first.reduce, first.learned_prior):
                raise ValueError("cannot concatenate chains sampled with different methods, step counts or priors")
        per_row_mask = first.mask is not None and first.mask.dim() == first.xs.dim() - 1
        return replace(
            first,
            xs=torch.cat([c.xs for c in chains]),
            means=torch.cat([c.means for c in chains]),
            stds=torch.cat([c.stds for c in chains]),
            stochastic=torch.cat([c.stochastic for c in chains]),
            log_probs=torch.cat([c.log_probs for c in chains]),
            init_log_prob=torch.cat([c.init_log_prob for c in chains]),
            mask=torch.cat([c.mask for c in chains]) if per_row_mask else first.mask,
            init_mean=torch.cat([c.init_mean for c in chains]) if first.learned_prior else None,
        )

    def detach(self) -> "Chain":
        """A copy whose tensors carry no autograd history."""
        return replace(
            self,
            xs=self.xs.detach(),
            means=self.means.detach(),
            stds=self.stds.detach(),
            log_probs=self.log_probs.detach(),
            init_log_prob=self.init_log_prob.detach(),
            init_mean=None if self.init_mean is None else self.init_mean.detach(),
        )


def time_grid(steps: int, device: torch.device | str | None = None) -> Tensor:
    """[K+1] float32 times t_k = 1 - k/K, from noise (1) to data (0)."""
    _check_steps(steps)
    k = torch.arange(steps + 1, device=device, dtype=torch.float64)
    return (1.0 - k / steps).to(torch.float32)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Elementwise log N(x; mean, std^2) in float32."""
    x, mean, std = x.float(), mean.float(), std.float()
    z = (x - mean) / std
    return -torch.log(std) - _LOG_SQRT_2PI - 0.5 * z * z


def gaussian_entropy(std: Tensor) -> Tensor:
    """Elementwise entropy 1/2 log(2 pi e std^2) of a Gaussian."""
    return torch.log(std.float()) + _LOG_SQRT_2PI + 0.5


def sde_sigma(t: Tensor, steps: int, noise_level: float) -> Tensor:
    """Flow-SDE noise schedule sigma_t = a sqrt(t / (1 - t)).

    At t = 1 the schedule is infinite; as in the reference, (1 - t) in the denominator
    is replaced by the step delta there, giving sigma_1 = a sqrt(K).
    """
    delta = 1.0 / steps
    one_minus = torch.where(t >= 1.0, torch.full_like(t, delta), 1.0 - t)
    return noise_level * torch.sqrt(t / one_minus)


def sde_coefficients(t: Tensor, steps: int, noise_level: float) -> tuple[Tensor, Tensor, Tensor]:
    """The Flow-SDE Euler-Maruyama transition from t to t - delta as mean = cx x - cv v, std (float32).

    Same as MATH.md's mu = x - delta v - delta sigma_t^2 / (2t) (x + (1 - t) v), grouped so that
    sampling (one t per step) and re-scoring (one t per row) run identical float32 arithmetic.
    """
    delta = 1.0 / steps
    sigma = sde_sigma(t, steps, noise_level)
    c = delta * sigma.square() / (2.0 * t)
    return 1.0 - c, delta + c * (1.0 - t), sigma * math.sqrt(delta)


def aggregate(
    log_probs: Tensor, stochastic: Tensor, init_log_prob: Tensor, method: str, reduce: str = "sum",
    learned_prior: bool = False,
) -> Tensor:
    """Chain log-likelihood [B] from per-transition log-probs [B, K].

    ``sum`` (default): sum over the stochastic transitions, plus log N(x^0; 0, I) for Flow-Noise, or log N(x^0;
    mu, I) of a learned prior (``learned_prior``) for any method.
    ``mean``: that sum divided by the number of its terms (:func:`num_terms`; the πRL reference
    averages over the K + 1 terms of Flow-Noise). PPO's clip and KL act on the chain's (summed)
    log-ratio either way: a flow policy reports the divisor (``EvalOutput.log_prob_terms``) and the
    loss scales its clip bounds by it, so averaging changes the gradient's scale, not the trust region.
    """
    total = (log_probs * stochastic).sum(dim=1)
    if method == "flow_noise" or learned_prior:
        total = total + init_log_prob
    if reduce == "sum":
        return total
    if reduce == "mean":
        return total / num_terms(stochastic, method, learned_prior).to(total.dtype)
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")


def num_terms(stochastic: Tensor, method: str, learned_prior: bool = False) -> Tensor:
    """[B] number of terms of a chain's log-likelihood (at least 1): its stochastic transitions, plus N(x^0)
    for Flow-Noise or a learned prior. ``reduce="mean"`` divides the sum by it: the chain's log-ratio is this times
    the averaged one.
    """
    n = stochastic.sum(dim=1).to(torch.float32)
    return (n + 1 if (method == "flow_noise" or learned_prior) else n).clamp(min=1)


FLOAT32_EPS = torch.finfo(torch.float32).eps


def log_prob_roundoff(chain: Chain, velocity_eps: float = 0.0) -> Tensor:
    """[B] first-order round-off of ``chain.log_prob`` (same aggregation): eps x the magnitude of its terms.

    ``velocity_eps``: the relative precision of the velocity network when it computes in a lower precision than
    float32 (bf16 weights: 2^-7). Its error moves each mean by about velocity_eps x |x - mu| (the step's drift),
    hence each element's log-density by velocity_eps x |z| |x - mu| / s; this dominates float32's terms.

    Re-scoring a chain repeats the sampler's arithmetic, but batched matrix products may sum in another
    order at another batch size, so the velocity, the mean, and every element's log-density can move by
    a few units in the last place. An element's log-density -log s - log sqrt(2 pi) - z^2 / 2 with
    z = (x' - mu) / s moves by about eps x (|log s| + 1 + z^2 / 2 + |z| (|x| + |mu| + |x'|) / s): the
    last term is the subtraction x' - mu (mu itself computed from x and the velocity) seen through 1 / s.
    Summed over the counted elements and the chain's terms, this is the scale below which a ratio-1 check
    cannot tell a mismatch from round-off; a shifted time grid or changed inputs move the log-prob by
    orders of magnitude more. The network's own round-off adds a constant factor (PPOConfig.ratio_check_factor).
    """
    stoch = chain.stochastic
    x, x_next = chain.xs[:, :-1].float(), chain.xs[:, 1:].float()
    mean, std = chain.means.float(), chain.stds.float()
    sb = stoch.view(*stoch.shape, *([1] * (x.dim() - 2)))
    std = torch.where(sb, std, torch.ones_like(std))  # deterministic steps count nothing (zeroed below)
    z = (x_next - mean) / std
    elem = std.log().abs() + 1.0 + 0.5 * z * z + z.abs() * (x.abs() + mean.abs() + x_next.abs()) / std
    if velocity_eps:
        elem = elem + (velocity_eps / FLOAT32_EPS) * z.abs() * (x - mean).abs() / std
    if chain.mask is not None:  # [...] or per row [B, ...]: broadcast over the K transitions
        m = chain.mask
        elem = elem * (m.unsqueeze(1) if m.dim() == x.dim() - 1 else m).to(elem.dtype)
    per_step = elem.flatten(2).sum(dim=2)
    x0 = chain.xs[:, 0].float()
    mu0 = torch.zeros_like(x0) if chain.init_mean is None else chain.init_mean.float()
    z0 = x0 - mu0  # the same for N(x^0; mu, 1): s = 1 (mu = 0 unless the prior is learned)
    init = _masked_sum(1.0 + 0.5 * z0 * z0 + z0.abs() * (x0.abs() + mu0.abs()), chain.mask)
    return FLOAT32_EPS * aggregate(per_step, stoch, init, chain.method, chain.reduce, chain.learned_prior)


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")


def _validate(
    method: str, steps: int, noise_level: Optional[float], sde_steps: str, reduce: str, noise_steps: str = "all"
) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    _check_steps(steps)
    if method == "flow_sde":
        if noise_level is None:
            raise ValueError("method 'flow_sde' needs noise_level (the SDE's a, reference 0.5)")
        if not (isinstance(noise_level, (int, float)) and math.isfinite(noise_level) and noise_level > 0):
            raise ValueError(f"noise_level must be a finite number > 0, got {noise_level!r}")
        if noise_level >= math.sqrt(2.0):
            # the SDE mean's coefficient of x at t = 1 is 1 - a^2 / 2 (MATH.md): a >= sqrt(2) flips x's sign
            raise ValueError(f"noise_level must be < sqrt(2) ~ 1.414 (the first SDE step's mean keeps x's sign only "
                             f"while 1 - a^2/2 > 0), got {noise_level!r}; the πRL reference uses 0.5")
        if sde_steps not in ("one", "all"):
            raise ValueError(f"sde_steps must be 'one' (hybrid) or 'all', got {sde_steps!r}")
    if method == "flow_noise" and noise_steps not in ("all", "one"):
        raise ValueError(f"noise_steps must be 'all' (the joint chain) or 'one' (one random noisy step), "
                         f"got {noise_steps!r}")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")


def _call_velocity(
    velocity: VelocityFn, x: Tensor, t: Tensor, method: str, noise_std: Optional[NoiseStdFn], check: bool
) -> tuple[Tensor, Optional[Tensor]]:
    out = velocity(x, t)
    std = None
    if isinstance(out, tuple):
        if len(out) != 2:
            raise ValueError(f"velocity must return v or (v, std); got a tuple of {len(out)}")
        v, std = out
    else:
        v = out
    if not isinstance(v, Tensor) or v.shape != x.shape:
        got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"velocity returned shape {got} for x of shape {tuple(x.shape)}; they must match")
    v = v.float()
    if check and not torch.isfinite(v).all():
        raise NonFiniteError("velocity returned non-finite values (NaN/inf); check the model's weights and inputs")
    if method == "flow_noise":
        if std is None:
            if noise_std is None:
                raise ValueError("method 'flow_noise' needs a std: return (v, std) from velocity or pass noise_std")
            std = noise_std(x, t)
        std = std.float()
        try:
            torch.broadcast_shapes(std.shape, x.shape)
        except RuntimeError:
            raise ValueError(f"std of shape {tuple(std.shape)} does not broadcast to x {tuple(x.shape)}") from None
        if check and not (std > 0).all():
            raise ValueError("std must be > 0 everywhere (got a value <= 0 or NaN); bound the noise head's output")
    return v, std


def _transition(
    x: Tensor, v: Tensor, t: Tensor, delta: float, method: str, noise_level: Optional[float], steps: int,
    std: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """Mean and std of the transition from x at time t to t - delta (float32). ``t``: [B]."""
    tb = t.view(-1, *([1] * (x.dim() - 1)))
    if method == "flow_sde":
        cx, cv, sd = sde_coefficients(tb, steps, noise_level)
        return x * cx - v * cv, sd.expand_as(x)
    mean = x - delta * v
    if method == "flow_noise":
        return mean, std.expand_as(x)
    return mean, torch.zeros_like(x)


def _masked_sum(logp: Tensor, mask: Optional[Tensor]) -> Tensor:
    if mask is not None:
        logp = logp * mask.to(logp.dtype)
    return logp.flatten(1).sum(dim=1)


def sample(
    velocity: VelocityFn,
    x_init: Tensor,
    *,
    steps: int,
    method: Method = "ode",
    noise_level: Optional[float] = None,
    sde_steps: SdeSteps = "one",
    noise_std: Optional[NoiseStdFn] = None,
    generator: Optional[torch.Generator] = None,
    reduce: Reduce = "sum",
    mask: Optional[Tensor] = None,
    check_finite: bool = True,
    noise_where: str = "all",
    noise_steps: NoiseSteps = "all",
    init_mean: Optional[Tensor] = None,
) -> Chain:
    """Integrate from ``x_init`` (noise at t = 1) to t = 0 in ``steps`` steps and record the chain.

    Args:
        velocity: ``velocity(x, t)`` -> v, or (v, std) for Flow-Noise; x [B, ...], t [B].
        x_init: [B, ...] starting noise (usually standard normal).
        steps: K, the number of denoising steps.
        method: ``"ode"`` (Euler), ``"flow_sde"`` (MATH.md's SDE with noise level a),
            ``"flow_noise"`` (Euler mean, learned std, every step stochastic).
        noise_level: a, for Flow-SDE.
        sde_steps: Flow-SDE only; ``"one"`` = hybrid ODE-SDE (one random transition per sample
            is stochastic), ``"all"`` = every transition stochastic.
        noise_std: for Flow-Noise, a callable ``(x, t) -> std`` when velocity returns v alone.
        generator: torch RNG for the noise and the hybrid step index.
        reduce: how :attr:`Chain.log_prob` aggregates transitions (``"sum"`` or ``"mean"``).
        mask: elements of x that count in log-probabilities (e.g. executed actions, unpadded dims).
        check_finite: raise ``ValueError`` on non-finite velocities or non-positive stds.
        noise_where: ``"all"``: stochastic transitions draw noise for every element; ``"counted"``: only where
            ``mask`` is true, the other elements taking the Euler (ODE) step.
        noise_steps: Flow-Noise only; ``"all"`` = every transition draws the learned noise (πRL's joint
            log-likelihood), ``"one"`` = one random transition per sample does, the others take the Euler step
            (RLinf's ``joint_logprob: false``; the same structure as hybrid Flow-SDE).
        init_mean: [B, ...] the mean of a learned prior N(init_mean, I) that ``x_init`` was drawn from (a policy's
            prior head): log N(x^0; init_mean, I) then counts in the chain's likelihood for every method, so the
            choice of x^0, which picks the mode a chunk comes from, is credited. None: x^0 ~ N(0, I).
    """
    _validate(method, steps, noise_level, sde_steps, reduce, noise_steps)
    if noise_where not in ("all", "counted"):
        raise ValueError(f"noise_where must be 'all' or 'counted', got {noise_where!r}")
    counted = None  # [B or 1, ...] float: where noise is drawn
    if noise_where == "counted" and mask is not None:
        counted = (mask if mask.dim() == x_init.dim() else mask.unsqueeze(0)).to(torch.float32)
    if not isinstance(x_init, Tensor) or x_init.dim() < 1 or x_init.shape[0] < 1:
        raise ValueError("x_init must be a tensor [B, ...] with B >= 1")
    B, device = x_init.shape[0], x_init.device
    x = x_init.float()
    grid = time_grid(steps, device)
    delta = 1.0 / steps

    one_step = (method == "flow_sde" and sde_steps == "one") or (method == "flow_noise" and noise_steps == "one")
    if one_step:
        r = torch.randint(0, steps, (B,), device=device, generator=generator)
        stochastic = torch.nn.functional.one_hot(r, steps).bool()
    elif method == "ode":
        stochastic = torch.zeros(B, steps, dtype=torch.bool, device=device)
    else:
        stochastic = torch.ones(B, steps, dtype=torch.bool, device=device)

    hybrid = method == "flow_sde" and sde_steps == "one"
    if hybrid:
        r = stochastic.float().argmax(dim=1)
        hybrid_rows = [(r == k).nonzero().squeeze(1) for k in range(steps)]
        coefs = sde_coefficients(grid[:-1], steps, noise_level)
        cx, cv, sd = (c.tolist() for c in coefs)  # exact float32 values, one per step
        sde_means: list[Tensor] = []
    xs, means, stds, log_probs = [x], [], [], []
    for k in range(steps):
        t = grid[k].expand(B)
        # checked once after the loop: a per-step check syncs the device K times per chunk (and breaks graphs)
        v, std = _call_velocity(velocity, x, t, method, noise_std, False)
        if hybrid:
            # Euler for every row; the SDE transition only for the ~B/K rows whose stochastic step this is.
            # Their means, stds and log-densities are filled in after the loop, in one batched pass.
            mean = x - delta * v
            idx = hybrid_rows[k]
            x_next = mean
            if idx.numel():
                sde_mean = x[idx] * cx[k] - v[idx] * cv[k]
                eps = torch.randn(sde_mean.shape, device=device, generator=generator, dtype=torch.float32)
                drawn = sde_mean + eps * sd[k]
                if counted is not None:  # uncounted elements take the Euler step
                    c = counted[idx] if counted.shape[0] == B and B > 1 else counted
                    drawn = torch.where(c.bool(), drawn, mean[idx])
                x_next = mean.index_copy(0, idx, drawn)
                sde_means.append(sde_mean)
            step_std, lp = None, None
        else:
            mean, step_std = _transition(x, v, t, delta, method, noise_level, steps, std)
            if method == "ode":
                x_next, lp = mean, torch.zeros(B, device=device)
            else:
                eps = torch.randn(x.shape, device=device, generator=generator, dtype=torch.float32)
                x_next = mean + step_std * eps
                if counted is not None:  # uncounted elements take the Euler step
                    x_next = torch.where(counted.bool(), x_next, x - delta * v)
                if one_step:  # Flow-Noise with one noisy step: the other rows take the Euler step
                    noisy = _rows(stochastic[:, k], x)
                    x_next = torch.where(noisy, x_next, mean)
                    step_std = torch.where(noisy, step_std, torch.zeros_like(step_std))
                    lp = _masked_sum(gaussian_log_prob(x_next, mean, torch.where(noisy, step_std, 1.0)), mask)
                    lp = torch.where(stochastic[:, k], lp, torch.zeros_like(lp))
                else:
                    lp = _masked_sum(gaussian_log_prob(x_next, mean, step_std), mask)
        xs.append(x_next)
        means.append(mean)
        stds.append(step_std)
        log_probs.append(lp)
        x = x_next

    x0 = xs[0]
    if init_mean is not None:
        if init_mean.shape != x0.shape:
            raise ValueError(f"init_mean of shape {tuple(init_mean.shape)} for x_init {tuple(x0.shape)}; they must match")
        init_mean = init_mean.float()
    init_lp = init_log_prob(x0, init_mean, mask)
    xs_t, means_t = torch.stack(xs, 1), torch.stack(means, 1)
    if hybrid:
        rows = torch.cat(hybrid_rows)
        steps_of_rows = r[rows]
        means_t = means_t.index_put((rows, steps_of_rows), torch.cat(sde_means))
        std_r = coefs[2][steps_of_rows].view(-1, *([1] * (x.dim() - 1))).expand_as(x0[rows])
        stds_t = torch.zeros_like(means_t).index_put((rows, steps_of_rows), std_r)
        row_mask = mask[rows] if (mask is not None and mask.dim() == x.dim()) else mask
        lp = _masked_sum(gaussian_log_prob(xs_t[rows, steps_of_rows + 1], means_t[rows, steps_of_rows], std_r), row_mask)
        log_probs_t = torch.zeros(B, steps, device=device).index_put((rows, steps_of_rows), lp)
    else:
        stds_t, log_probs_t = torch.stack(stds, 1), torch.stack(log_probs, 1)
    if check_finite:
        _check_chain(xs_t, stds_t, stochastic, method)
    return Chain(
        xs=xs_t,
        means=means_t,
        stds=stds_t,
        stochastic=stochastic,
        log_probs=log_probs_t,
        init_log_prob=init_lp,
        method=method,
        steps=steps,
        noise_level=noise_level,
        reduce=reduce,
        mask=mask,
        init_mean=init_mean,
    )


def init_log_prob(x0: Tensor, init_mean: Optional[Tensor], mask: Optional[Tensor]) -> Tensor:
    """[B] log N(x^0; init_mean, I) over the counted elements (``init_mean`` None: the standard normal)."""
    mean = torch.zeros_like(x0) if init_mean is None else init_mean
    return _masked_sum(gaussian_log_prob(x0, mean, torch.ones_like(x0)), mask)


def _check_chain(xs: Tensor, stds: Optional[Tensor], stochastic: Tensor, method: str) -> None:
    """One device sync per chunk: a non-finite velocity (or std) at any step leaves the chain's states non-finite."""
    if not bool(torch.isfinite(xs).all()):
        raise NonFiniteError("velocity returned non-finite values (NaN/inf); check the model's weights and inputs")
    if method == "flow_noise" and stds is not None:
        drawn = stochastic.view(*stochastic.shape, *([1] * (stds.dim() - 2)))
        if bool((drawn & ~(stds > 0)).any()):
            raise ValueError("std must be > 0 everywhere (got a value <= 0 or NaN); bound the noise head's output")


def _rows(rows: Tensor, like: Tensor) -> Tensor:
    return rows.view(-1, *([1] * (like.dim() - 1)))


def transition_log_probs(
    velocity: VelocityFn,
    chain: Chain,
    *,
    noise_std: Optional[NoiseStdFn] = None,
    check_finite: bool = True,
    return_std: bool = False,
):
    """[B, K] log-probabilities of the chain's stored transitions under the current velocity.

    Evaluates the velocity only where a transition is stochastic: for a hybrid chain
    (one stochastic transition per sample) that is a single batched call at each
    sample's own (x^r, t_r); otherwise one call per denoising step that has any.
    With ``return_std`` also returns the stds [B, K, ...] used (for entropy bonuses).
    """
    xs, stoch = chain.xs, chain.stochastic
    B, K = stoch.shape
    if xs.shape[1] != K + 1:
        raise ValueError(f"chain.xs has {xs.shape[1]} states for {K} transitions; expected {K + 1}")
    method, delta, device = chain.method, 1.0 / chain.steps, xs.device
    grid = time_grid(chain.steps, device)
    log_probs = torch.zeros(B, K, device=device, dtype=torch.float32)
    stds = torch.zeros_like(xs[:, 1:]) if return_std else None
    if method == "ode":
        return (log_probs, stds) if return_std else log_probs

    counts = stoch.sum(dim=1)
    if bool((counts == 1).all()):
        r = stoch.float().argmax(dim=1)
        idx = torch.arange(B, device=device)
        x, x_next, t = xs[idx, r], xs[idx, r + 1], grid[r]
        v, std = _call_velocity(velocity, x, t, method, noise_std, check_finite)
        mean, std = _transition(x, v, t, delta, method, chain.noise_level, chain.steps, std)
        lp = _masked_sum(gaussian_log_prob(x_next, mean, std), chain.mask)
        log_probs = log_probs.index_put((idx, r), lp)
        if return_std:
            stds = stds.index_put((idx, r), std)
    else:
        columns = []
        std_cols = []
        for k in range(K):
            noisy = stoch[:, k]
            if not bool(noisy.any()):
                columns.append(torch.zeros(B, device=device))
                std_cols.append(torch.zeros_like(xs[:, 0]))
                continue
            x = xs[:, k]
            t = grid[k].expand(B)
            v, std = _call_velocity(velocity, x, t, method, noise_std, check_finite)
            mean, std = _transition(x, v, t, delta, method, chain.noise_level, chain.steps, std)
            safe_std = torch.where(_rows(noisy, x), std, 1.0)
            lp = _masked_sum(gaussian_log_prob(xs[:, k + 1], mean, safe_std), chain.mask)
            columns.append(torch.where(noisy, lp, torch.zeros_like(lp)))
            std_cols.append(torch.where(_rows(noisy, x), std, torch.zeros_like(std)))
        log_probs = torch.stack(columns, 1)
        if return_std:
            stds = torch.stack(std_cols, 1)
    return (log_probs, stds) if return_std else log_probs


def log_prob(
    velocity: VelocityFn,
    chain: Chain,
    *,
    noise_std: Optional[NoiseStdFn] = None,
    reduce: Optional[Reduce] = None,
    check_finite: bool = True,
) -> Tensor:
    """[B] log-likelihood of a stored chain under the current parameters.

    Same aggregation as :attr:`Chain.log_prob` (``reduce`` overrides the chain's). Under
    the parameters that sampled the chain, the result equals ``chain.log_prob``. A learned prior's term is the stored
    one: the policy that owns the prior re-scores it (:meth:`pirl.policies.FlowPolicy.evaluate`).
    """
    lps = transition_log_probs(velocity, chain, noise_std=noise_std, check_finite=check_finite)
    return aggregate(lps, chain.stochastic, chain.init_log_prob, chain.method, reduce or chain.reduce,
                     chain.learned_prior)
