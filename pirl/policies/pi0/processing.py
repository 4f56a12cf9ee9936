"""Pre/post-processing for π0 / π0.5: prompt tokens, images, state/action normalisation and padding.

Conventions follow openpi: images resized with padding to a square and mapped to [-1, 1];
prompts ``<bos> task \\n`` (π0) or ``<bos> Task: ..., State: 12 200 ...;\\nAction: `` (π0.5, the
state discretised into 256 bins of [-1, 1]); z-score (π0) or 1%/99% quantile (π0.5)
normalisation; state and actions zero-padded to 32 dims.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pirl.errors import MissingFileError
from pirl.policies.pi0.configuration import NormMode


class PaligemmaTokenizer:
    """The PaliGemma prompt tokenizer, read from a local file (nothing is fetched).

    ``path``: a ``tokenizer.json`` (or a directory holding one), read with ``tokenizers``; or a
    SentencePiece ``.model`` (openpi's ``paligemma_tokenizer.model``, needs ``sentencepiece``).
    The BOS token is prepended explicitly, so the file's post-processor does not matter.
    """

    def __init__(self, path: str | os.PathLike, max_len: int) -> None:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.exists(path):
            raise MissingFileError(f"no tokenizer at {path!r}: set pi0.tokenizer to a local tokenizer.json or "
                                   "SentencePiece .model (openpi's paligemma_tokenizer.model)")
        self.max_len = max_len
        if path.endswith(".model"):
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=path)
            self._encode = lambda s: list(sp.encode(s))
            self.bos_id = sp.bos_id()
        else:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(path)
            self._encode = lambda s: tok.encode(s, add_special_tokens=False).ids
            bos = tok.token_to_id("<bos>")
            if bos is None:
                raise ValueError(f"tokenizer {path!r} has no '<bos>' token")
            self.bos_id = bos

    def tokenize(self, prompt: str, state: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [L] int64, mask [L] bool), right-padded with 0 / truncated to ``max_len``."""
        text = prompt.strip().replace("_", " ").replace("\n", " ")
        if state is not None:
            bins = np.digitize(state, bins=np.linspace(-1, 1, 256 + 1)[:-1]) - 1
            ids = [self.bos_id] + self._encode(f"Task: {text}, State: {' '.join(map(str, bins))};\nAction: ")
        else:
            # "\n" is tokenised on its own: the "start of answer" token
            ids = [self.bos_id] + self._encode(text) + self._encode("\n")
        ids = ids[: self.max_len]
        tokens = np.zeros(self.max_len, dtype=np.int64)
        mask = np.zeros(self.max_len, dtype=bool)
        tokens[: len(ids)] = ids
        mask[: len(ids)] = True
        return tokens, mask


class HashTokenizer:
    """pirl's word-hash tokenizer for models trained from scratch: lower-cased words hashed (CRC32) into
    ``3 .. vocab_size - 1``, ``<bos>`` = 1, the "start of answer" newline = 2, padding 0. Needs no file, gives
    the same ids on every machine; π0.5's discretised state becomes one token per state dim."""

    BOS, NEWLINE = 1, 2

    def __init__(self, vocab_size: int, max_len: int) -> None:
        if vocab_size < 16:
            raise ValueError(f"the hash tokenizer needs vocab_size >= 16, got {vocab_size}")
        self.vocab_size, self.max_len = vocab_size, max_len

    def _ids(self, text: str) -> list[int]:
        return [3 + zlib.crc32(w.encode()) % (self.vocab_size - 3) for w in re.findall(r"[a-z0-9]+", text.lower())]

    def tokenize(self, prompt: str, state: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [L] int64, mask [L] bool), as :meth:`PaligemmaTokenizer.tokenize`."""
        ids = [self.BOS] + self._ids(prompt.replace("_", " "))
        if state is not None:
            bins = np.digitize(state, bins=np.linspace(-1, 1, 256 + 1)[:-1]) - 1
            ids += [3 + int(b) % (self.vocab_size - 3) for b in bins]
        ids = (ids + [self.NEWLINE])[: self.max_len]
        tokens = np.zeros(self.max_len, dtype=np.int64)
        tokens[: len(ids)] = ids
        return tokens, tokens > 0


def make_tokenizer(spec: str, max_len: int, vocab_size: int) -> "PaligemmaTokenizer | HashTokenizer":
    """``hash`` -> :class:`HashTokenizer`; a path -> :class:`PaligemmaTokenizer` (file checked here)."""
    if spec == "hash":
        return HashTokenizer(vocab_size, max_len)
    if not spec:
        raise ValueError("no tokenizer given")
    return PaligemmaTokenizer(spec, max_len)


def resize_with_pad(images: Tensor, size: int) -> Tensor:
    """[N, 3, h, w] float in [-1, 1] -> [N, 3, size, size]: aspect kept, padded with -1 (black)."""
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    ratio = max(w / size, h / size)
    rh, rw = int(h / ratio), int(w / ratio)
    # antialias on downscaling, like the PIL resize openpi applies to its training data
    out = F.interpolate(images, size=(rh, rw), mode="bilinear", align_corners=False, antialias=rh < h).clamp(-1.0, 1.0)
    top, left = (size - rh) // 2, (size - rw) // 2
    return F.pad(out, (left, size - rw - left, top, size - rh - top), value=-1.0)


def to_model_image(image: Any, size: int) -> Tensor:
    """One camera's batch: uint8 [B, h, w, 3] / [B, 3, h, w], or float in [0, 1] -> [B, 3, size, size] in [-1, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4:
        raise ValueError(f"image of shape {tuple(x.shape)}; expected [B, H, W, 3] or [B, 3, H, W]")
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return resize_with_pad(x * 2.0 - 1.0, size)


class Pi0Normalizer(nn.Module):
    """State or action normalisation whose statistics travel with the weights (buffers).

    ``mean_std``: (x - mean) / (std + eps); ``quantile``: 2 (x - q01) / (q99 - q01 + eps) - 1.
    Statistics cover the environment's D dims; outputs are zero-padded to ``pad_to``.
    """

    def __init__(self, dim: int, pad_to: int, mode: NormMode, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim, self.pad_to, self.mode, self.eps = dim, pad_to, mode, eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("q01", -torch.ones(dim))
        self.register_buffer("q99", torch.ones(dim))

    def set_stats(self, stats: dict[str, Any], eps: Optional[float] = None) -> None:
        """Loads any of mean/std/q01/q99 (numpy, lists or tensors); values are cut to the env's D dims."""
        for name in ("mean", "std", "q01", "q99"):
            if name in stats and stats[name] is not None:
                value = torch.as_tensor(np.asarray(stats[name], dtype=np.float32)).flatten()
                if value.numel() < self.dim:
                    raise ValueError(f"{name} statistics have {value.numel()} dims; the model needs {self.dim}")
                getattr(self, name).copy_(value[: self.dim])
        if eps is not None:
            self.eps = eps

    def stats(self) -> dict[str, list[float]]:
        return {n: getattr(self, n).tolist() for n in ("mean", "std", "q01", "q99")}

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()[..., : self.dim]
        if self.mode == "quantile":
            y = 2.0 * (x - self.q01) / (self.q99 - self.q01 + self.eps) - 1.0
        else:
            y = (x - self.mean) / (self.std + self.eps)
        return F.pad(y, (0, self.pad_to - self.dim))

    def inverse(self, y: Tensor) -> Tensor:
        y = y.float()[..., : self.dim]
        if self.mode == "quantile":
            return (y + 1.0) / 2.0 * (self.q99 - self.q01 + self.eps) + self.q01
        return y * (self.std + self.eps) + self.mean


def load_openpi_norm_stats(path: str | os.PathLike) -> dict[str, dict[str, list[float]]]:
    """openpi's ``norm_stats.json`` -> {"state": {...}, "actions": {...}}."""
    with open(path) as f:
        data = json.load(f)
    return data.get("norm_stats", data)


def stack_images(obs: dict[str, Any], cameras: Sequence[str], size: int, batch: int) -> tuple[Tensor, Tensor]:
    """(images [B, C, 3, S, S], masks [B, C]) for the configured cameras; a missing camera is
    a -1 image whose tokens are masked out. Images are read from ``obs["images"][name]`` or
    ``obs[name]``; optional ``obs["image_masks"][name]`` [B] marks per-sample absence."""
    source = obs.get("images", obs)
    given_masks = obs.get("image_masks", {})
    imgs, masks = [], []
    for name in cameras:
        if name in source:
            img = to_model_image(source[name], size)
            m = torch.as_tensor(np.asarray(given_masks[name]), dtype=torch.bool) if name in given_masks else torch.ones(img.shape[0], dtype=torch.bool)
        else:
            img = torch.full((batch, 3, size, size), -1.0)
            m = torch.zeros(batch, dtype=torch.bool)
        imgs.append(img)
        masks.append(m)
    if not any(bool(m.any()) for m in masks):
        raise ValueError(f"no camera of {list(cameras)} in the observation (keys: {sorted(source)})")
    return torch.stack(imgs, 1), torch.stack(masks, 1)


__all__ = ["HashTokenizer", "PaligemmaTokenizer", "make_tokenizer", "Pi0Normalizer", "load_openpi_norm_stats", "resize_with_pad", "stack_images", "to_model_image"]
