"""RL algorithms on rollout batches: advantages (GAE, GRPO, RLOO/LOOP), PPO loss, update loop. No simulator or model code."""
