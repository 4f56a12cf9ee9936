"""Model-agnostic flow samplers: ODE, Flow-SDE (hybrid or all steps), Flow-Noise, with exact log-probs."""

from pirl.flow.config import SamplerConfig
from pirl.flow.noise import NoiseHead, PriorHead
from pirl.flow.sampler import (
    METHODS,
    Chain,
    aggregate,
    gaussian_entropy,
    gaussian_log_prob,
    init_log_prob,
    log_prob,
    log_prob_roundoff,
    num_terms,
    sample,
    sde_sigma,
    time_grid,
    transition_log_probs,
)

__all__ = [
    "METHODS",
    "Chain",
    "NoiseHead",
    "PriorHead",
    "SamplerConfig",
    "aggregate",
    "gaussian_entropy",
    "gaussian_log_prob",
    "init_log_prob",
    "log_prob",
    "log_prob_roundoff",
    "num_terms",
    "sample",
    "sde_sigma",
    "time_grid",
    "transition_log_probs",
]
