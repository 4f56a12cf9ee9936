"""Hugging Face hub ids for policies and datasets: which sources are ids, and fetching them when online."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional, Sequence

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(spec: object) -> bool:
    """Whether ``spec`` ("org/name") names a hub repository rather than a local path: it matches the id pattern
    and neither it nor its parent folder exists here."""
    if not isinstance(spec, str) or not HUB_ID.match(spec) or spec.endswith(".safetensors"):
        return False
    path = Path(spec)
    return not path.exists() and not path.parent.exists()


def snapshot(repo_id: str, *, repo_type: Literal["model", "dataset"] = "model",
             allow_patterns: Optional[Sequence[str]] = None) -> Path:
    """Downloads (or finds in the local cache) a hub repository with ``huggingface_hub``; raises ImportError when it
    is not installed and the hub's own errors (offline, unknown or gated repository) for the caller to word."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, repo_type=repo_type,
                                  allow_patterns=list(allow_patterns) if allow_patterns else None))
