"""Checkpoint round trip, exact continuation, atomicity and refusal of bad checkpoints."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from pirl.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    verify_checkpoint,
)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    m.register_buffer("stats", torch.arange(3.0))
    return m


def _step(model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> float:
    x = torch.randn(16, 4, generator=gen) + torch.randn(16, 4)  # explicit and global RNG both matter
    loss = (model(x) - float(np.random.rand()) - random.random()).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def _setup(seed: int = 0):
    model = _model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    gen = torch.Generator().manual_seed(123)
    return model, opt, sched, gen


def _save(path, model, opt, sched, gen, rng_np, rng_py, **trainer):
    return save_checkpoint(
        path,
        models={"policy": model},
        stateful={"optim": opt, "sched": sched},
        generators={"gen": gen, "np": rng_np, "py": rng_py},
        trainer_state=trainer,
    )


def test_round_trip_continues_identically(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    model, opt, sched, gen = _setup()
    rng_np, rng_py = np.random.default_rng(5), random.Random(5)
    for _ in range(3):
        _step(model, opt, gen), sched.step()
    _save(tmp_path / "ck", model, opt, sched, gen, rng_np, rng_py, step=3, env_steps=300, hist=(1, 2))
    ref_losses = []
    for _ in range(4):
        ref_losses.append(_step(model, opt, gen)), sched.step()
    ref_draws = (rng_np.random(3).tolist(), rng_py.random(), torch.rand(2).tolist())
    ref_weights = {k: v.clone() for k, v in model.state_dict().items()}

    # a fresh process: different init, different RNG states, then restore
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    model2, opt2, sched2, gen2 = _setup(seed=7)
    rng_np2, rng_py2 = np.random.default_rng(0), random.Random(0)
    trainer = load_checkpoint(
        tmp_path / "ck",
        models={"policy": model2},
        stateful={"optim": opt2, "sched": sched2},
        generators={"gen": gen2, "np": rng_np2, "py": rng_py2},
    )
    assert trainer == {"step": 3, "env_steps": 300, "hist": (1, 2)}
    losses = []
    for _ in range(4):
        losses.append(_step(model2, opt2, gen2)), sched2.step()
    assert losses == ref_losses  # bitwise: same floats
    assert (rng_np2.random(3).tolist(), rng_py2.random(), torch.rand(2).tolist()) == ref_draws
    for k, v in model2.state_dict().items():
        assert torch.equal(v, ref_weights[k]), k
    assert opt2.param_groups[0]["betas"] == (0.9, 0.99)


def test_weights_bitwise_and_tied(tmp_path):
    model = _model()
    model[2].weight = nn.Parameter(torch.randn(2, 8))
    tied = nn.Module()
    tied.a = nn.Linear(3, 3)
    tied.b = nn.Linear(3, 3)
    tied.b.weight = tied.a.weight  # shared storage: safetensors would refuse it as is
    save_checkpoint(tmp_path / "ck", models={"policy": model, "tied": tied})
    m2, t2 = _model(3), nn.Module()
    t2.a, t2.b = nn.Linear(3, 3), nn.Linear(3, 3)
    m2[2].weight = nn.Parameter(torch.zeros(2, 8))
    load_model_weights(tmp_path / "ck", {"policy": m2, "tied": t2})
    for (k, v), (k2, v2) in zip(model.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(t2.b.weight, tied.a.weight)


def test_truncated_and_corrupted_refused(tmp_path):
    model = _model()
    path = save_checkpoint(tmp_path / "ck", models={"policy": model})
    f = path / "model-policy.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model-policy\.safetensors: truncated"):
        load_checkpoint(path, models={"policy": _model()})
    f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointError, match=r"model-policy\.safetensors: corrupted: sha256"):
        load_checkpoint(path, models={"policy": _model()})
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest.json: missing"):
        load_checkpoint(path, models={"policy": _model()})


def test_mismatch_lists_keys_and_changes_nothing(tmp_path):
    path = save_checkpoint(tmp_path / "ck", models={"policy": _model()})
    other = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2), nn.Linear(2, 2))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, models={"policy": other})
    msg = str(e.value)
    assert "model-policy.safetensors" in msg
    assert "missing keys: 3.bias, 3.weight" in msg
    assert "unexpected keys: stats" in msg
    assert "0.weight: checkpoint (8, 4) vs model (16, 4)" in msg
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    with pytest.raises(CheckpointError, match="not in this checkpoint"):
        load_checkpoint(path, models={"critic": _model()})


def test_no_pickle_in_checkpoint(tmp_path):
    model, opt, sched, gen = _setup()
    path = _save(tmp_path / "ck", model, opt, sched, gen, np.random.default_rng(0), random.Random(0), step=1)
    names = sorted(p.name for p in path.iterdir())
    assert all(n.endswith((".safetensors", ".json")) for n in names), names
    for n in names:
        if n.endswith(".json"):
            json.loads((path / n).read_text())


def test_atomic_write_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    import pirl.train.checkpoint as ck

    model = _model()
    mgr = CheckpointManager(tmp_path / "ckpts")
    mgr.save(1, models={"policy": model})

    def boom(path, data):  # the process dies while writing the trainer state
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(2, models={"policy": model})
    monkeypatch.undo()
    assert mgr.steps() == [1] and mgr.latest == mgr.path(1)
    assert not any(p.name.startswith(".tmp") for p in mgr.root.iterdir())
    # a temp dir left by SIGKILL is swept by the next manager
    (mgr.root / ".tmp-step_000000003-1").mkdir()
    assert CheckpointManager(mgr.root).steps() == [1]
    assert not (mgr.root / ".tmp-step_000000003-1").exists()


def test_manager_keeps_latest_and_best(tmp_path):
    model = _model()
    mgr = CheckpointManager(tmp_path / "ckpts", keep_last=2)
    for step, metric in [(10, 0.5), (20, 0.9), (30, 0.1), (40, 0.2), (50, None)]:
        mgr.save(step, metric=metric, models={"policy": model}, trainer_state={"step": step})
    assert mgr.steps() == [20, 40, 50]
    assert mgr.latest == mgr.path(50) and mgr.best == mgr.path(20) and mgr.best_metric == 0.9
    mgr2 = CheckpointManager(tmp_path / "ckpts", keep_last=2)  # index survives a restart
    assert mgr2.best == mgr.path(20)
    assert verify_checkpoint(mgr2.latest)["models"] == ["policy"]
    mgr2.save(50, models={"policy": model}, trainer_state={"step": 50, "again": True})  # overwrite in place
    assert load_checkpoint(mgr2.latest)["again"] is True


def test_a_damaged_index_is_named_with_its_fix(tmp_path):
    from pirl.train.checkpoint import DamagedCheckpointError

    mgr = CheckpointManager(tmp_path / "ckpts")
    mgr.save(1, metric=0.5, models={"policy": _model()})
    (mgr.root / "index.json").write_text("{garbage")
    with pytest.raises(DamagedCheckpointError, match=r"index.json is damaged \(JSONDecodeError.*delete it to go on"):
        CheckpointManager(mgr.root)
    (mgr.root / "index.json").unlink()
    assert CheckpointManager(mgr.root).latest == mgr.path(1)


def test_find_checkpoint_and_tensor_in_trainer_state(tmp_path):
    from pirl.train.checkpoint import find_checkpoint

    mgr = CheckpointManager(tmp_path / "run" / "checkpoints", keep_last=3)
    for step in (1, 2, 3):
        mgr.save(step, models={"policy": _model()}, metric=1.0 if step == 2 else 0.0)
    assert find_checkpoint(tmp_path / "run") == mgr.path(3)
    assert find_checkpoint(tmp_path / "run", "best") == mgr.path(2)
    assert find_checkpoint(mgr.path(1)) == mgr.path(1)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        find_checkpoint(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)
    with pytest.raises(CheckpointError, match=r"trainer_state holds tensors at \['trainer.x'\]"):
        save_checkpoint(tmp_path / "ck", trainer_state={"x": torch.ones(1)})
    assert not (tmp_path / "ck").exists()
