"""Typed sampler configuration shared by policies, algorithms and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pirl.flow.sampler import _validate


@dataclass(frozen=True)
class SamplerConfig:
    """How a flow policy turns noise into an action chunk during rollouts."""

    method: Literal["ode", "flow_sde", "flow_noise"] = "flow_sde"
    """ode: deterministic Euler; flow_sde: ODE->SDE conversion; flow_noise: learned noise network."""
    steps: int = 4
    """K, denoising steps per action chunk (πRL ablation: 2-4 best on LIBERO)."""
    noise_level: float = 0.5
    """Flow-SDE noise level a, 0 < a < sqrt(2) (πRL reference 0.5; ignored by other methods)."""
    sde_steps: Literal["one", "all"] = "one"
    """Flow-SDE: 'one' = hybrid ODE-SDE (one random stochastic transition), 'all' = every step."""
    noise_steps: Literal["all", "one"] = "all"
    """Flow-Noise: 'all' = every transition noisy (πRL's joint log-likelihood of the chain), 'one' = one random
    noisy transition per sample, the others Euler (RLinf's joint_logprob false, hybrid Flow-SDE's structure)."""
    reduce: Literal["sum", "mean"] = "sum"
    """Aggregation of the chain's transition log-probs (the πRL Flow-Noise reference averages). PPO's clip, KL and
    target_kl act on the chain's summed log-ratio either way (PPOConfig.chain_clip): mean only rescales gradients."""
    logp_steps: Optional[int] = None
    """Leading actions of the chunk that count in log-probs (the executed ones); None = all H."""
    noise_where: Literal["all", "counted"] = "all"
    """Where stochastic transitions inject noise: 'all' elements of the chunk, or only the 'counted' ones (the
    executed actions' real dims, whose log-probs the chain sums); the others follow the ODE, so the chain's
    log-prob accounts for every draw that depends on the weights (π0 pads actions to 32 dims: noise there
    reaches the executed actions through attention without being counted)."""

    def __post_init__(self) -> None:
        _validate(self.method, self.steps, self.noise_level, self.sde_steps, self.reduce, self.noise_steps)
        if self.logp_steps is not None and self.logp_steps < 1:
            raise ValueError(f"logp_steps must be >= 1 or None, got {self.logp_steps}")
        if self.noise_where not in ("all", "counted"):
            raise ValueError(f"noise_where must be 'all' or 'counted', got {self.noise_where!r}")

    def deterministic(self) -> "SamplerConfig":
        """The same K with the ODE, used for evaluation and deployment."""
        return SamplerConfig(method="ode", steps=self.steps, reduce=self.reduce, logp_steps=self.logp_steps)
