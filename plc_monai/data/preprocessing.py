"""The on-disk cache of the preprocessing chain (``train#preprocessing`` of each bundle; docs/data.md).

:class:`AtomicPersistentDataset` is a MONAI ``PersistentDataset`` whose files appear atomically and load with
their metadata; :func:`hash_transforms` gives the part of each file name that changes with the chain's parameters.
"""

from __future__ import annotations

import enum
import inspect
import pickle
import threading
import warnings
from collections.abc import Mapping, Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, PersistentDataset
from monai.data.utils import SUPPORTED_PICKLE_MOD, pickle_hashing
from monai.transforms import Transform
from monai.utils import convert_to_tensor, look_up_option

from plc_monai.atomic_files import atomic_write

__all__ = ["CACHE_FORMAT_VERSION", "hash_transforms", "AtomicPersistentDataset"]

#: Part of the cache hash; bumped when the preprocessing code changes its output for unchanged parameters.
CACHE_FORMAT_VERSION = 1


#: Run-time state, not parameters (the image readers' last ``filenames``, the traceable transforms'
#: thread-local ``_tracing``): left out of the hash, which would otherwise change after the first volume.
_VOLATILE_ATTRIBUTES = frozenset({"filenames", "_tracing"})


def _describe(obj: Any, _seen: frozenset = frozenset()) -> Any:
    """A deterministic, picklable description of a transform's parameters (for hashing)."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, threading.local):
        return "<thread-local>"
    if isinstance(obj, enum.Enum):
        return f"{type(obj).__qualname__}.{obj.name}"
    if isinstance(obj, (torch.dtype, np.dtype)) or (isinstance(obj, type) and issubclass(obj, np.generic)):
        return str(obj)
    if isinstance(obj, type) or inspect.isroutine(obj):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        values = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        return ("array", str(obj.dtype), np.asarray(values).tolist())
    if id(obj) in _seen:
        return "<cycle>"
    seen = _seen | {id(obj)}
    if isinstance(obj, Mapping):
        return sorted((repr(k), _describe(v, seen)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return [_describe(v, seen) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(repr(_describe(v, seen)) for v in obj)
    attrs = getattr(obj, "__dict__", None)
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if attrs is None:
        return name
    return [name, sorted((k, _describe(v, seen)) for k, v in attrs.items() if k not in _VOLATILE_ATTRIBUTES)]


def hash_transforms(transforms: Sequence[Transform]) -> bytes:
    """Hash the parameters of the cached transforms (``PersistentDataset``'s ``hash_transform``).

    Unlike ``pickle_hashing`` of the transform objects, this hashes a description of every attribute except
    run-time state, plus :data:`CACHE_FORMAT_VERSION`, so a transform list keeps its hash after it has run.

    Args:
        transforms: the deterministic prefix MONAI passes in.

    Returns:
        A hex digest as bytes.
    """
    return pickle_hashing({"version": CACHE_FORMAT_VERSION, "transforms": _describe(list(transforms))})


def _cache_safe_globals() -> list:
    """Classes a cached MetaTensor needs under ``torch.load(weights_only=True)``: numpy types, MONAI enums."""
    import monai.utils.enums as monai_enums

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / numpy 1
    numpy_types = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    numpy_types += [c for _, c in inspect.getmembers(np.dtypes, inspect.isclass)]
    enums = [c for _, c in inspect.getmembers(monai_enums, inspect.isclass) if issubclass(c, enum.Enum)]
    return [MetaTensor, *numpy_types, *enums]


class AtomicPersistentDataset(PersistentDataset):
    """``PersistentDataset`` whose cache files appear atomically and load with their metadata.

    Files are written to a temporary name inside ``cache_dir`` and renamed with ``os.replace`` (MONAI 1.6.1's
    ``shutil.move`` from ``/tmp`` can leave a truncated file), and read with ``weights_only=True`` and the
    allowlist of :func:`_cache_safe_globals`; unreadable files are deleted and recomputed with a warning.
    """

    def _cachecheck(self, item_transformed: Any) -> Any:
        if self.cache_dir is None:
            return self._pre_transform(deepcopy(item_transformed))
        key = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
        hashfile = self.cache_dir / f"{key}.pt"
        if hashfile.is_file():
            try:
                with torch.serialization.safe_globals(_cache_safe_globals()):
                    return torch.load(hashfile, weights_only=self.weights_only)
            except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
                warnings.warn(f"unreadable cache file {hashfile} ({e}); recomputing it.", stacklevel=2)
                hashfile.unlink(missing_ok=True)
        result = self._pre_transform(deepcopy(item_transformed))
        tensors = convert_to_tensor(result, convert_numeric=False, track_meta=self.track_meta)
        module = look_up_option(self.pickle_module, SUPPORTED_PICKLE_MOD)
        atomic_write(
            hashfile, lambda f: torch.save(tensors, f, pickle_module=module, pickle_protocol=self.pickle_protocol)
        )
        return result
