"""The on-disk cache of the preprocessing chain (the paper's Section IV-B).

The chain itself is defined once, as config: ``train#preprocessing`` of each bundle
(``bundles/<dataset>/configs/train.json``; ``inference.json``'s ``preprocessing`` is its image-only
form)::

    LoadImaged -> EnsureChannelFirstd -> SelectChanneld -> MapLabelValuesd -> CopyItemsd(native_label)
    -> SliceAxisLastd -> N4BiasFieldCorrectiond -> PercentileNormalized -> Spacingd(r, r, keep)
    -> ResizeWithPadOrCropd(H, W, keep) -> EnsureTyped(float32)

so a volume becomes ``image [1, H, W, S]`` (float32, slice axis last) and ``label [1, H, W, S]``
(class indices as float32); ``Invertd`` with the chain maps a prediction back to the volume's grid.
Python code that needs it parses it from the bundle
(``ConfigParser.get_parsed_content("train#preprocessing")``), as ``python -m plc_monai prepare``
(:func:`plc_monai.cli.prepare`), the tests and the experiment figures do.

This module holds what the bundles' datasets use to cache the chain's output:
:class:`AtomicPersistentDataset` (a MONAI ``PersistentDataset`` whose files appear atomically and
load with their metadata) and :func:`hash_transforms` (the part of each file name that changes when a
parameter of the chain changes: spacing, N4 on/off, crop size, label values ...).
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

#: Bumped whenever the preprocessing code changes its output for unchanged parameters; it is
#: part of the cache hash, so old cache files are then ignored.
CACHE_FORMAT_VERSION = 1


#: Attributes that hold run-time state, not parameters: MONAI's image readers remember the
#: files they read last in ``filenames``, and traceable transforms create a thread-local
#: ``_tracing`` flag on first use; either would change the hash after the first volume.
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

    MONAI's suggested ``pickle_hashing`` of the transform objects is not stable: once a
    transform list has run, its image readers hold the last file names read (the hash changes,
    the cache misses) and its traceable transforms hold a thread-local (pickling fails). This
    hashes a description of every attribute (class names, numbers, strings, nested objects)
    except such run-time state, plus the cache format version. Spacing, N4 on/off, crop size
    and label values all change the hash.

    Args:
        transforms: the deterministic prefix MONAI passes in.

    Returns:
        a hex digest as bytes.
    """
    return pickle_hashing({"version": CACHE_FORMAT_VERSION, "transforms": _describe(list(transforms))})


def _cache_safe_globals() -> list:
    """Classes a cached MetaTensor needs under ``torch.load(weights_only=True)``.

    The NIfTI header in the meta dictionary holds numpy arrays and dtypes, and the applied
    operations hold MONAI enums. Without this list MONAI 1.6.1's ``PersistentDataset`` with
    ``track_meta=True`` fails to load every file, treats it as corrupt and silently recomputes
    it on every run.
    """
    import monai.utils.enums as monai_enums

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / numpy 1
    numpy_types = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    numpy_types += [c for _, c in inspect.getmembers(np.dtypes, inspect.isclass)]
    enums = [c for _, c in inspect.getmembers(monai_enums, inspect.isclass) if issubclass(c, enum.Enum)]
    return [MetaTensor, *numpy_types, *enums]


class AtomicPersistentDataset(PersistentDataset):
    """``PersistentDataset`` whose cache files appear atomically and load with their metadata.

    MONAI 1.6.1 writes each cache file into a fresh system temporary directory and then
    ``shutil.move``-s it into ``cache_dir``. When ``/tmp`` is another file system that move is a
    copy, so a killed process can leave a truncated file under the final name. Here the file is
    written to a temporary name inside ``cache_dir`` and renamed with ``os.replace``.
    Files are read with ``weights_only=True`` and an explicit allowlist
    (:func:`_cache_safe_globals`); unreadable files are deleted and recomputed with a warning.
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
        atomic_write(
            hashfile,
            lambda f: torch.save(
                convert_to_tensor(result, convert_numeric=False, track_meta=self.track_meta),
                f,
                pickle_module=look_up_option(self.pickle_module, SUPPORTED_PICKLE_MOD),
                pickle_protocol=self.pickle_protocol,
            ),
        )
        return result
