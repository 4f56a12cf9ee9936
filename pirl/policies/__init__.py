"""Policies sharing one interface: flow policies (encode / velocity / value_features) and non-flow heads."""

from pirl.policies.base import ActOutput, EvalOutput, FlowPolicy, Normalizer, Obs, Policy, ValueHead
from pirl.policies.heads import ActionSample, HeadPolicy, HeadPolicyConfig, HeadSamplerConfig
from pirl.policies.mlp import MLPFlowPolicy, MLPPolicyConfig, make_mlp_policy
from pirl.policies.regression import RegressionPolicy, RegressionPolicyConfig, fit_scale_head, make_regression_policy
from pirl.policies.tokenized import TokenizedPolicy, TokenizedPolicyConfig, make_tokenized_policy
from pirl.policies.vla import VLAFlowPolicy, VLAPolicyConfig, make_vla_policy

__all__ = [
    "ActionSample",
    "ActOutput",
    "EvalOutput",
    "FlowPolicy",
    "HeadPolicy",
    "HeadPolicyConfig",
    "HeadSamplerConfig",
    "MLPFlowPolicy",
    "MLPPolicyConfig",
    "Normalizer",
    "Obs",
    "Policy",
    "RegressionPolicy",
    "RegressionPolicyConfig",
    "TokenizedPolicy",
    "TokenizedPolicyConfig",
    "VLAFlowPolicy",
    "VLAPolicyConfig",
    "ValueHead",
    "fit_scale_head",
    "make_mlp_policy",
    "make_regression_policy",
    "make_tokenized_policy",
    "make_vla_policy",
]
