"""Training loops: SFT, online RL (rollout collection + updates), evaluation, checkpoints."""
