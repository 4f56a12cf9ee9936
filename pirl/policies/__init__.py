"""Flow policies sharing one interface (encode / velocity / value_features)."""

from pirl.policies.base import ActOutput, EvalOutput, FlowPolicy, Normalizer, Obs, ValueHead
from pirl.policies.mlp import MLPFlowPolicy, MLPPolicyConfig, make_mlp_policy
from pirl.policies.vla import VLAFlowPolicy, VLAPolicyConfig, make_vla_policy

__all__ = [
    "ActOutput",
    "EvalOutput",
    "FlowPolicy",
    "MLPFlowPolicy",
    "MLPPolicyConfig",
    "Normalizer",
    "Obs",
    "VLAFlowPolicy",
    "VLAPolicyConfig",
    "ValueHead",
    "make_mlp_policy",
    "make_vla_policy",
]
