"""π0 and π0.5 (PaliGemma + Gemma action expert) as flow policies, with openpi/LeRobot checkpoints.

Needs the optional ``pi0`` extra (``transformers``); importing :mod:`pirl.policies` does not.

    from pirl.policies.pi0 import make_pi0_policy, tiny_config, load_pretrained
    policy = make_pi0_policy(tiny_config("pi05"))                     # random tiny model + heads
    policy = load_pretrained("ckpt/pi05_libero", tokenizer_path="paligemma/tokenizer.json")  # LeRobot dir
    policy = load_pretrained("ckpt/openpi_pi0", preset("pi0", action_horizon=50))            # openpi dir
    policy.attach_value_head(policy.value_feature_dim); policy.attach_noise_head(policy.feature_dim)
    policy.set_trainable("expert"); policy.to_bf16(); policy.gradient_checkpointing_enable()
    out = policy.act(policy.prepare(env_obs), SamplerConfig(method="flow_sde", steps=4))
"""

from pirl.policies.pi0.checkpoint import CheckpointError, load_lerobot, load_openpi, load_pretrained, save_lerobot, save_openpi
from pirl.policies.pi0.configuration import GemmaSpec, Pi0Config, VisionSpec, full_config, preset, tiny_config
from pirl.policies.pi0.modeling import Pi0Model, PrefixCache
from pirl.policies.pi0.policy import Pi0Context, Pi0Policy, make_pi0_policy
from pirl.policies.pi0.processing import PaligemmaTokenizer, Pi0Normalizer

__all__ = [
    "CheckpointError", "load_lerobot", "load_openpi", "load_pretrained", "save_lerobot", "save_openpi",
    "GemmaSpec", "PaligemmaTokenizer", "Pi0Config", "Pi0Context", "Pi0Model", "Pi0Normalizer", "Pi0Policy",
    "PrefixCache", "VisionSpec", "full_config", "make_pi0_policy", "preset", "tiny_config",
]
