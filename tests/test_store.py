"""pirl.distributed.store: tensors in nested structures to raw-byte numpy arrays and back, bit for bit."""

from __future__ import annotations

import pickle
from collections import namedtuple

import numpy as np
import torch

from pirl.algorithms.buffer import RolloutBatch
from pirl.distributed.store import StoredTensor, from_store, stored_bytes, to_store
from pirl.flow import SamplerConfig
from pirl.policies.mlp import make_mlp_policy

Pair = namedtuple("Pair", "a b")


def _same(x, y) -> None:
    assert type(x) is type(y)
    if isinstance(x, torch.Tensor):
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
    elif isinstance(x, dict):
        assert x.keys() == y.keys()
        for k in x:
            _same(x[k], y[k])
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y)
        for a, b in zip(x, y):
            _same(a, b)
    else:
        assert x == y


def test_round_trip_is_exact_for_every_dtype_and_layout():
    g = torch.Generator().manual_seed(0)
    tree = {
        "bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "t": torch.randn(4, 6, generator=g).t(),  # not contiguous
        "scalar": torch.tensor(7, dtype=torch.int64),
        "mask": torch.rand(2, 3, generator=g) > 0.5,
        "empty": torch.zeros(0, 4),
        "grad": torch.ones(2, requires_grad=True),
        "rng": g.get_state(),
        "nested": [Pair(torch.arange(3), "x"), (None, 1.5)],
    }
    stored = to_store(tree)
    assert isinstance(stored["bf16"], StoredTensor) and stored["bf16"].data.dtype == np.uint8
    assert isinstance(stored["nested"][0], Pair) and stored["nested"][0].b == "x"
    assert stored_bytes(stored) == sum(v.numel() * v.element_size() for v in
                                       (tree["bf16"], tree["t"], tree["scalar"], tree["mask"], tree["empty"],
                                        tree["grad"], tree["rng"], tree["nested"][0].a))
    back = from_store(pickle.loads(pickle.dumps(stored)))  # what a Ray reader gets
    expected = {**tree, "grad": tree["grad"].detach()}
    _same(back, expected)
    assert back["t"].is_contiguous() and not back["grad"].requires_grad


def test_from_store_copies_unless_told_not_to():
    stored = to_store({"w": torch.arange(4, dtype=torch.float32)})
    stored["w"].data.setflags(write=False)  # as ray.get returns it: read-only shared memory
    owned = from_store(stored)["w"]
    owned.add_(1)  # writable: a copy
    assert torch.equal(from_store(stored, copy=False)["w"], torch.arange(4, dtype=torch.float32))
    view = from_store(stored, copy=False)["w"]
    assert view.data_ptr() == stored["w"].data.ctypes.data  # no copy: for readers that copy out (load_state_dict)


def test_rollout_batch_with_its_chain_survives_the_trip():
    torch.manual_seed(0)
    policy = make_mlp_policy(4, 2, action_horizon=4, hidden=16, depth=1)
    obs = {"state": torch.randn(5, 4)}
    out = policy.act(obs, SamplerConfig(method="flow_sde", steps=3), generator=torch.Generator().manual_seed(1))
    batch = RolloutBatch(obs=obs, chain=out.chain, old_log_prob=out.log_prob, old_value=None,
                         advantages=torch.randn(5), returns=torch.randn(5), task=torch.zeros(5, dtype=torch.long),
                         group=torch.arange(5), groups_dropped=2)
    back = from_store(pickle.loads(pickle.dumps(to_store(batch))))
    assert isinstance(back, RolloutBatch) and type(back.chain) is type(batch.chain)
    assert back.groups_dropped == 2 and back.old_value is None and back.chain.method == batch.chain.method
    for name in ("old_log_prob", "advantages", "returns", "task", "group"):
        assert torch.equal(getattr(back, name), getattr(batch, name)), name
    for name in ("xs", "means", "stds", "stochastic", "log_probs", "init_log_prob"):
        assert torch.equal(getattr(back.chain, name), getattr(batch.chain, name)), name
    # the re-scored log-probs of the round-tripped chain are the stored ones
    torch.testing.assert_close(policy.evaluate(back.obs, back.chain).log_prob, batch.old_log_prob, rtol=0, atol=1e-6)
