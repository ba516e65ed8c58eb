"""The preprocessing chain of the paper's Section IV-B and its on-disk cache.

``preprocessing_transforms`` returns the deterministic, invertible transform list shared by the
training and inference bundles::

    LoadImaged -> EnsureChannelFirstd -> SelectChanneld -> SliceAxisLastd -> MapLabelValuesd
    -> N4BiasFieldCorrectiond -> PercentileNormalized -> Spacingd(r, r, keep) -> ResizeWithPadOrCropd(H, W, keep)

so a volume becomes ``image [1, H, W, S]`` (float32, slice axis last) and ``label [1, H, W, S]``
(class indices as float32). ``Invertd(keys="pred", transform=Compose(list), orig_keys="image")``
maps a prediction ``[C, H, W, S]`` back to the original voxel grid (shape and affine).

``load_preprocessed`` runs the chain once per volume with a MONAI ``PersistentDataset`` whose
file names include a hash of the transforms, so changing a parameter (spacing, N4 on/off, ...)
recomputes; :func:`plc_monai.data.slice_pool.build_slice_pool` turns the volumes into the slice
tensors the training engine keeps in memory. ``prepare`` fills such a cache for a whole dataset from
Python; the bundles' own cache (their ``train#preprocessing``, which also keeps the native label) is
filled by ``python -m plc_monai prepare --bundle <name>``.
"""

from __future__ import annotations

import enum
import inspect
import os
import pickle
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset, MetaTensor, PersistentDataset
from monai.data.utils import SUPPORTED_PICKLE_MOD, pickle_hashing
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    ResizeWithPadOrCropd,
    Spacingd,
    Transform,
)
from monai.utils import convert_to_tensor, look_up_option

from plc_monai.data.specs import DatasetSpec, get_spec
from plc_monai.data.transforms import (
    MapLabelValuesd,
    N4BiasFieldCorrectiond,
    PercentileNormalized,
    SelectChanneld,
    SliceAxisLastd,
)
from plc_monai.atomic_files import atomic_write

__all__ = [
    "CACHE_FORMAT_VERSION",
    "preprocessing_transforms",
    "hash_transforms",
    "AtomicPersistentDataset",
    "load_preprocessed",
    "prepare",
]

#: Bumped whenever the preprocessing code changes its output for unchanged parameters; it is
#: part of the cache hash, so old cache files are then ignored.
CACHE_FORMAT_VERSION = 1


def preprocessing_transforms(
    dataset: str | DatasetSpec,
    keys: Sequence[str] = ("image", "label"),
    n4: bool = True,
    spacing_mm: float | None = None,
    crop_size: Sequence[int] | int | None = None,
    label: bool = True,
    channel: int = 0,
    channel_key: str | None = "channel",
    label_aliases: Mapping[float, int] | None = None,
) -> list[Transform]:
    """Build the deterministic preprocessing chain for one dataset.

    Args:
        dataset: dataset name (``acdc``, ``prostate``, ``mmwhs``) or a :class:`DatasetSpec`.
        keys: ``(image_key, label_key)``; only the first is used when ``label`` is False.
        n4: run N4 bias-field correction (the paper does). ``False`` keeps the transform in the
            list but disabled, so the list has the same length either way.
        spacing_mm: in-plane target spacing ``r_f``; defaults to ``spec.spacing_mm``.
        crop_size: in-plane size ``(H, W)`` (or one int) after centre crop or zero pad;
            defaults to ``spec.crop_size``.
        label: include the label key (training, evaluation). With a label key every transform
            has ``allow_missing_keys=True``, so unlabeled entries go through the same chain.
        channel: image channel kept when an entry has no ``channel_key`` (0 = T2 for prostate).
        channel_key: datalist key with the channel per entry.
        label_aliases: extra ``{raw value: class index}`` for :class:`MapLabelValuesd`.

    Returns:
        the transform list; wrap it in ``monai.transforms.Compose`` (or give it to
        :func:`load_preprocessed`).

    Raises:
        ValueError: on an unknown dataset, an empty ``keys`` or non-positive spacing/crop size.
    """
    spec = get_spec(dataset) if isinstance(dataset, str) else dataset
    if len(keys) == 0:
        raise ValueError("keys must name at least the image key.")
    r = float(spec.spacing_mm if spacing_mm is None else spacing_mm)
    if r <= 0:
        raise ValueError(f"spacing_mm must be positive, got {r}.")
    size = spec.crop_size if crop_size is None else crop_size
    size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"crop_size must be two positive ints (H, W), got {size}.")
    image_key = keys[0]
    use_label = label and len(keys) > 1
    all_keys = [image_key, keys[1]] if use_label else [image_key]
    missing_ok = use_label
    xforms: list[Transform] = [
        LoadImaged(all_keys, image_only=True, allow_missing_keys=missing_ok),
        EnsureChannelFirstd(all_keys, allow_missing_keys=missing_ok),
        SelectChanneld(image_key, channel=channel, channel_key=channel_key),
        SliceAxisLastd(all_keys, ref_key=image_key, allow_missing_keys=missing_ok),
    ]
    if use_label:
        xforms.append(
            MapLabelValuesd(keys[1], raw_values=spec.raw_label_values, aliases=label_aliases, allow_missing_keys=True)
        )
    xforms += [
        N4BiasFieldCorrectiond(image_key, enabled=n4),
        PercentileNormalized(image_key, lower=1.0, upper=99.0),
        # pixdim -1 keeps the slice axis (spacing, direction, count). The grid spans the input's
        # first to last voxel centre: round((N - 1) * s / r) + 1 voxels per in-plane axis. The
        # authors' skimage.rescale spans the voxel extent instead (round(N * s / r), at most one
        # voxel more), but MONAI 1.6.1's scale_extent=True places that grid with
        # abs(position) * sign(corner), which is off by a fraction of a voxel when the affine's
        # translation is near 0, and it warns that it is incompatible with align_corners=False.
        Spacingd(
            all_keys,
            pixdim=(r, r, -1.0),
            mode=["bilinear", "nearest"][: len(all_keys)],
            padding_mode="border",
            scale_extent=False,
            dtype=torch.float32,
            allow_missing_keys=missing_ok,
        ),
        ResizeWithPadOrCropd(all_keys, spatial_size=(size[0], size[1], -1), allow_missing_keys=missing_ok),
    ]
    return xforms


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


def _as_compose(transforms: Sequence[Transform] | Compose) -> Compose:
    return transforms if isinstance(transforms, Compose) else Compose(list(transforms))


def load_preprocessed(
    datalist: Sequence[Mapping[str, Any]],
    transforms: Sequence[Transform] | Compose,
    cache_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Run the preprocessing chain over a datalist, reading and filling an on-disk cache.

    Cache file names combine a hash of the datalist entry (its file paths and other keys) and
    :func:`hash_transforms` of the deterministic transforms, so a changed parameter computes new
    files next to the old ones. A changed file behind an unchanged path is *not* detected:
    clear ``cache_dir`` after replacing raw data.

    Args:
        datalist: MONAI datalist entries (``image``, optionally ``label``, ``id``, ``channel``).
        transforms: the list from :func:`preprocessing_transforms` (or a ``Compose``).
        cache_dir: cache folder (created when missing); ``None`` computes everything in memory
            with a plain ``Dataset``.

    Returns:
        one preprocessed dictionary per entry, in datalist order; images and labels are
        MetaTensors (affine and the applied operations kept, so ``Invertd`` works on them).
    """
    compose = _as_compose(transforms)
    data = [dict(entry) for entry in datalist]
    if cache_dir is None:
        ds: Dataset = Dataset(data, transform=compose)
    else:
        ds = AtomicPersistentDataset(
            data, transform=compose, cache_dir=cache_dir, hash_transform=hash_transforms, track_meta=True
        )
    return [ds[i] for i in range(len(ds))]


def prepare(
    dataset: str,
    dataset_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    n4: bool = True,
    spacing_mm: float | None = None,
    crop_size: Sequence[int] | int | None = None,
    label: bool = True,
) -> dict[str, Any]:
    """Preprocess a whole dataset into ``cache_dir`` with :func:`preprocessing_transforms`.

    This is the Python-level cache of this module's chain. The bundles use their own
    ``train#preprocessing`` (it also keeps the native label), so their cache is filled by
    ``python -m plc_monai prepare --bundle <name>`` (:func:`plc_monai.cli.prepare`), not by this function.

    Reads the datalist with :func:`plc_monai.data.readers.read_datalist`, runs
    :func:`preprocessing_transforms` with a cache, and prints the time per volume. A second run
    with the same parameters only reads the cache.

    Args:
        dataset: ``acdc``, ``prostate`` or ``mmwhs``.
        dataset_dir: root of the raw download.
        cache_dir: cache folder, shared with later calls using the same parameters.
        n4: run N4 bias-field correction.
        spacing_mm: in-plane spacing; defaults to the dataset's.
        crop_size: in-plane crop size; defaults to the dataset's.
        label: preprocess labels where the datalist has them.

    Returns:
        a summary ``{"dataset", "volumes", "cache_dir", "seconds"}``.

    Raises:
        FileNotFoundError: when ``dataset_dir`` does not exist.
    """
    from plc_monai.data.readers import read_datalist  # imported here: readers may pull optional deps

    if not Path(dataset_dir).is_dir():
        raise FileNotFoundError(f"dataset_dir {dataset_dir} does not exist or is not a folder.")
    entries = read_datalist(dataset, dataset_dir)
    transforms = preprocessing_transforms(dataset, n4=n4, spacing_mm=spacing_mm, crop_size=crop_size, label=label)
    start = time.perf_counter()
    for i, entry in enumerate(entries):
        t0 = time.perf_counter()
        out = load_preprocessed([entry], transforms, cache_dir=cache_dir)[0]
        name = entry.get("id", Path(str(entry["image"])).name)
        print(
            f"[{i + 1}/{len(entries)}] {name}: {tuple(out['image'].shape)} in {time.perf_counter() - t0:.2f} s",
            flush=True,
        )
    seconds = time.perf_counter() - start
    print(f"prepared {len(entries)} volume(s) of {dataset} in {seconds:.1f} s into {cache_dir}", flush=True)
    return {"dataset": dataset, "volumes": len(entries), "cache_dir": str(cache_dir), "seconds": round(seconds, 2)}
