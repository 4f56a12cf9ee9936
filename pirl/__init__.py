"""pirl: online RL fine-tuning of flow-matching robot policies."""

__version__ = "0.1.0"
