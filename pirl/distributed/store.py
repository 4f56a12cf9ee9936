"""Tensors through Ray's object store as raw-byte numpy arrays.

Ray pickles a torch tensor in band (a copy through pickle, ~0.2 GB/s on the 2-core machine) but
stores a numpy array out of band and lets a reader map it from shared memory: a 2 GB state's round
trip went from 9.1 s to 0.50 s (``bench/bench_publish.py``). :func:`to_store` swaps every tensor
inside dicts, lists, tuples and dataclasses for a :class:`StoredTensor` (on the CPU, whatever its
device); :func:`from_store` swaps them back. Anything else travels as it is.
"""

from __future__ import annotations

import copy as _copy
import dataclasses
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """A tensor as its raw bytes: ``data`` uint8 [nbytes], plus what rebuilds it."""

    data: np.ndarray
    dtype: torch.dtype
    shape: tuple[int, ...]


def _map(obj: Any, fn) -> Any:
    """``obj`` with ``fn`` applied to every leaf inside dicts, lists, tuples (named too) and dataclass instances."""
    if isinstance(obj, dict):
        return type(obj)((k, _map(v, fn)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_map(v, fn) for v in obj]
    if isinstance(obj, tuple):
        items = [_map(v, fn) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and not isinstance(obj, StoredTensor):
        new = _copy.copy(obj)  # not dataclasses.replace: __post_init__ checks would see the swapped leaves
        for f in dataclasses.fields(obj):
            object.__setattr__(new, f.name, _map(getattr(obj, f.name), fn))
        return new
    return fn(obj)


def _store(x: Any) -> Any:
    if isinstance(x, Tensor):
        t = x.detach()
        return StoredTensor(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy(), t.dtype, tuple(t.shape))
    return x


def to_store(obj: Any) -> Any:
    """``obj`` ready for ``ray.put``: every tensor in it a :class:`StoredTensor`. ``ray.put`` copies the arrays
    into the store before it returns, so they may share memory with live tensors until then."""
    return _map(obj, _store)


def from_store(obj: Any, *, copy: bool = True) -> Any:
    """The tensors of :func:`to_store` back (on the CPU). An object fetched with ``ray.get`` is read-only
    shared memory: ``copy=False`` returns tensors viewing it, only for a reader that copies out of them and
    never writes (``load_state_dict``); an in-place write there would crash the process."""

    def load(x: Any) -> Any:
        if not isinstance(x, StoredTensor):
            return x
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            t = torch.from_numpy(x.data).view(x.dtype).reshape(x.shape)
        return t.clone() if copy else t

    return _map(obj, load)


def stored_bytes(obj: Any) -> int:
    """Bytes of tensor data inside a :func:`to_store` result."""
    total = 0

    def count(x: Any) -> Any:
        nonlocal total
        if isinstance(x, StoredTensor):
            total += x.data.nbytes
        return x

    _map(obj, count)
    return total
