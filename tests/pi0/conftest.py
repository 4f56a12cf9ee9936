"""Shared fixtures for the π0 tests: a tiny BPE tokenizer built on the spot, fake observations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

try:  # the π0 models need the optional "pi0" extra
    import transformers  # noqa: F401
except ImportError:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> str:
    """A byte-level BPE tokenizer.json with PaliGemma's special ids (pad 0, eos 1, bos 2, unk 3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    corpus = ["pick up the red block", "put the bowl on the plate\n", "Task: open the drawer, State: 12 200 3;\nAction: "] * 20
    tok.train_from_iterator(corpus, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def make_env_obs(cfg, batch: int = 2, seed: int = 0, drop_camera: bool = True) -> dict:
    """Environment-style observation: uint8 HWC images of a non-square size, raw state, text."""
    rng = np.random.default_rng(seed)
    cams = cfg.cameras[:-1] if drop_camera else cfg.cameras
    return {
        "images": {c: rng.integers(0, 256, (batch, 30, 40, 3), dtype=np.uint8) for c in cams},
        "state": rng.normal(size=(batch, cfg.state_dim)).astype(np.float32),
        "instruction": ["pick up the red block", "put the bowl on the plate"][:batch] + ["open the drawer"] * max(0, batch - 2),
    }


def make_model_obs(cfg, batch: int = 2, seed: int = 0) -> dict:
    """Model-input observation with a masked camera and padded prompt tokens."""
    g = torch.Generator().manual_seed(seed)
    s = cfg.vision.image_size
    C = len(cfg.cameras)
    masks = torch.ones(batch, C, dtype=torch.bool)
    masks[-1, -1] = False
    tmask = torch.ones(batch, cfg.token_len, dtype=torch.bool)
    tmask[0, cfg.token_len // 2:] = False
    return {
        "images": torch.rand(batch, C, 3, s, s, generator=g) * 2 - 1,
        "image_masks": masks,
        "tokens": torch.randint(4, cfg.vocab_size, (batch, cfg.token_len), generator=g),
        "token_mask": tmask,
        "state": torch.randn(batch, cfg.max_state_dim, generator=g),
    }


@pytest.fixture
def env_obs():
    return make_env_obs


@pytest.fixture
def model_obs():
    return make_model_obs
