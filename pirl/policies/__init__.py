"""Policies sharing one interface: flow policies (encode / velocity / value_features) and non-flow heads."""

from pirl.policies.base import ActOutput, EvalOutput, FlowPolicy, Normalizer, Obs, Policy, ValueHead
from pirl.policies.mlp import MLPFlowPolicy, MLPPolicyConfig, make_mlp_policy

__all__ = [
    "ActOutput",
    "EvalOutput",
    "FlowPolicy",
    "MLPFlowPolicy",
    "MLPPolicyConfig",
    "Normalizer",
    "Obs",
    "Policy",
    "ValueHead",
    "make_mlp_policy",
]
