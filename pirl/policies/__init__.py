"""Flow policies sharing one interface (encode / velocity / value_features)."""

from pirl.policies.base import ActOutput, EvalOutput, FlowPolicy, Normalizer, Obs, ValueHead
from pirl.policies.mlp import MLPFlowPolicy, MLPPolicyConfig, make_mlp_policy

__all__ = [
    "ActOutput",
    "EvalOutput",
    "FlowPolicy",
    "MLPFlowPolicy",
    "MLPPolicyConfig",
    "Normalizer",
    "Obs",
    "ValueHead",
    "make_mlp_policy",
]
