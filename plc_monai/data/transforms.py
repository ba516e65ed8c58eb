"""Deterministic preprocessing of the paper's Section IV-B as MONAI dictionary transforms.

The pieces that MONAI lacks or that behave differently from what the paper needs: channel selection,
label value mapping, moving the slice axis last, N4 bias-field correction and percentile normalisation.
The chain itself is config (``train#preprocessing`` of each bundle); see ``docs/data.md``. ``itk`` is
imported lazily inside :func:`n4_bias_field_correction`, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor
from monai.utils.enums import TraceKeys

__all__ = [
    "slice_axis_from_spacing",
    "source_name",
    "n4_bias_field_correction",
    "SelectChanneld",
    "MapLabelValuesd",
    "SliceAxisLastd",
    "N4BiasFieldCorrectiond",
    "PercentileNormalized",
]


def source_name(img: Any) -> str:
    """The file a MetaTensor was loaded from (``filename_or_obj``), or ``"<in-memory array>"``, for errors."""
    name = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
    return str(name) if name else "<in-memory array>"


def slice_axis_from_spacing(spacing: Sequence[float], rtol: float = 1e-3) -> int:
    """Return the through-plane axis: the spatial axis with the largest voxel spacing (ties: the last).

    Args:
        spacing: voxel spacing per spatial axis, e.g. ``(1.5, 1.5, 10.0)``.
        rtol: relative tolerance under which two spacings count as equal.

    Returns:
        the index of the slice axis among the spatial axes.

    Raises:
        ValueError: when ``spacing`` is empty or holds non-positive or non-finite values.
    """
    sp = np.asarray(spacing, dtype=float).ravel()
    if sp.size == 0 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"voxel spacing must be positive and finite, got {tuple(sp.tolist())}.")
    tied = np.flatnonzero(np.isclose(sp, sp.max(), rtol=rtol, atol=0.0))
    return int(tied[-1])


class SelectChanneld(MapTransform):
    """Keep one channel of a channel-first volume, returning ``[1, X, Y, Z]`` (prostate: T2 of T2+ADC).

    The channel comes from the dictionary's ``channel_key`` entry when present (the readers write it),
    otherwise from ``channel``. Not invertible: predictions have their own channel axis.

    Args:
        keys: keys of the channel-first images ``[C, X, Y, Z]``.
        channel: channel used when the dictionary has no ``channel_key`` entry. Defaults to 0.
        channel_key: dictionary key that holds the channel index per entry. Defaults to ``"channel"``.
        allow_missing_keys: don't raise when a key is missing.

    Raises:
        ValueError: when ``channel`` is negative.
    """

    def __init__(
        self,
        keys: KeysCollection,
        channel: int = 0,
        channel_key: str | None = "channel",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(channel) < 0:
            raise ValueError(f"channel must be >= 0, got {channel}.")
        self.channel = int(channel)
        self.channel_key = channel_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Select the channel of every key.

        Raises:
            ValueError: when the requested channel does not exist, naming the file.
        """
        d = dict(data)
        channel = self.channel
        if self.channel_key is not None and d.get(self.channel_key) is not None:
            channel = int(d[self.channel_key])
        for key in self.key_iterator(d):
            img = d[key]
            if not 0 <= channel < img.shape[0]:
                raise ValueError(
                    f"{source_name(img)}: channel {channel} requested for key {key!r}, but the image has "
                    f"{img.shape[0]} channel(s) (shape {tuple(img.shape)}, channel first)."
                )
            out = img[channel : channel + 1]
            if isinstance(out, MetaTensor):
                out.meta["original_channel_dim"] = "no_channel"
            d[key] = out
        return d


class MapLabelValuesd(MapTransform):
    """Map raw label values to class indices ``0..C-1`` with one vectorised lookup; unknown values raise.

    ``raw_values[k]`` becomes class ``k``. Further raw values come from ``aliases`` (``{raw value: class
    index}``) and, per datalist entry, from the ``aliases_key`` entry written by the readers (``[[raw,
    target raw], ...]``, e.g. MM-WHS's ``[[421, 420]]``). Unlike MONAI's ``MapLabelValued`` (one full-volume
    comparison per pair, unknown values silently kept) one ``searchsorted`` maps every voxel.

    Args:
        keys: keys of the label volumes.
        raw_values: raw value of each class, background first, e.g. ``spec.raw_label_values``.
        aliases: optional ``{raw value: class index}`` for additional raw values.
        aliases_key: data dictionary key with per-entry ``[[raw, target raw], ...]`` aliases;
            ``None`` ignores such entries.
        dtype: output dtype. Defaults to ``torch.float32`` (what MONAI's spatial transforms expect).
        atol: raw values within ``atol`` of an integer are rounded to it first (float-stored labels).
        allow_missing_keys: don't raise when a key is missing (unlabeled entries).

    Raises:
        ValueError: when ``raw_values`` is empty or has duplicates, or when an alias refers to a
            class index outside ``0..len(raw_values)-1`` or contradicts ``raw_values``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        raw_values: Sequence[float],
        aliases: Mapping[float, int] | None = None,
        aliases_key: str | None = "raw_label_aliases",
        dtype: torch.dtype = torch.float32,
        atol: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.raw_values = tuple(float(v) for v in raw_values)
        if len(self.raw_values) == 0 or len(set(self.raw_values)) != len(self.raw_values):
            raise ValueError(f"raw_values must be non-empty and unique, got {tuple(raw_values)}.")
        self.aliases = {float(k): int(v) for k, v in (aliases or {}).items()}
        self.aliases_key = aliases_key
        self.dtype = dtype
        self.atol = float(atol)
        self._table(self.aliases)  # validate now rather than at the first volume

    def _table(self, aliases: Mapping[float, int]) -> dict[float, int]:
        """``{raw value: class}`` for ``raw_values`` plus ``aliases``, validated."""
        table = {v: k for k, v in enumerate(self.raw_values)}
        for raw, cls in aliases.items():
            if not 0 <= int(cls) < len(self.raw_values):
                raise ValueError(f"alias {raw} -> {cls}: class index must be in 0..{len(self.raw_values) - 1}.")
            if float(raw) in table and table[float(raw)] != int(cls):
                raise ValueError(f"alias {raw} -> {cls} contradicts raw_values (maps to {table[float(raw)]}).")
            table[float(raw)] = int(cls)
        return table

    def map_array(
        self, label: torch.Tensor, name: str = "<in-memory array>", aliases: Mapping[float, int] | None = None
    ) -> torch.Tensor:
        """Map one raw label tensor of any shape to class indices of dtype ``self.dtype``.

        Args:
            label: raw label tensor.
            name: file name used in error messages.
            aliases: extra ``{raw value: class index}`` for this tensor only.

        Raises:
            ValueError: on values that are not in ``raw_values`` or the aliases.
        """
        table = self._table({**self.aliases, **(aliases or {})})
        order = sorted(table)
        sorted_raw = torch.tensor(order, dtype=torch.float64, device=label.device)
        sorted_cls = torch.tensor([table[v] for v in order], dtype=torch.int64, device=label.device)
        x = label.detach().to(torch.float64).reshape(-1)
        rounded = torch.round(x)
        pos = torch.searchsorted(sorted_raw, rounded).clamp_(max=len(order) - 1)
        hit = (sorted_raw[pos] == rounded) & ((x - rounded).abs() <= self.atol)
        if not bool(hit.all()):
            bad = torch.unique(x[~hit])
            shown = [float(v) for v in bad[:10]]
            raise ValueError(
                f"{name}: unknown label value(s) {shown}{' ...' if bad.numel() > 10 else ''}; expected one of {order}."
            )
        return sorted_cls[pos].reshape(label.shape).to(self.dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Map every key.

        Raises:
            ValueError: on unknown label values or bad per-entry aliases, naming the file.
        """
        d = dict(data)
        pairs = d.get(self.aliases_key) if self.aliases_key is not None else None
        if isinstance(pairs, Mapping):
            pairs = pairs.items()
        for key in self.key_iterator(d):
            img = d[key]
            name = source_name(img)
            extra = {}
            for raw, target in pairs or ():  # the readers' [[raw, target raw], ...]
                if float(target) not in self.raw_values:
                    raise ValueError(
                        f"{name}: label alias {raw} -> {target}: {target} is not one of {self.raw_values}."
                    )
                extra[float(raw)] = self.raw_values.index(float(target))
            mapped = self.map_array(convert_to_tensor(img, track_meta=False), name, extra)
            d[key], *_ = convert_to_dst_type(mapped, img, dtype=self.dtype)
        return d


class SliceAxisLastd(MapTransform, InvertibleTransform):
    """Move the through-plane axis (largest voxel spacing) to the last spatial position; invertible.

    The 2D network and everything downstream (in-plane resampling, crop, slice stacking, ``SliceInferer``)
    assume the slice axis is last. Unlike MONAI's ``Transposed``, the permutation is chosen per volume from
    the reference key's spacing and the affine's columns are permuted with the data, so world coordinates
    are unchanged. Volumes already stored that way get the identity (still recorded for ``Invertd``).

    Args:
        keys: keys of channel-first volumes ``[C, X, Y, Z]`` to permute together.
        ref_key: key whose voxel spacing decides the slice axis. Defaults to the first of ``keys``
            present in the dictionary, so image and label always get the same permutation.
        allow_missing_keys: don't raise when a key is missing.
    """

    def __init__(self, keys: KeysCollection, ref_key: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key

    @staticmethod
    def _spacing(img: Any) -> np.ndarray:
        if isinstance(img, MetaTensor):
            return np.asarray(img.pixdim, dtype=float)[: img.ndim - 1]
        return np.ones(img.ndim - 1)

    @staticmethod
    def _permute(img: Any, perm: Sequence[int]) -> Any:
        """Permute the spatial axes of ``img`` ``[C, *spatial]`` and the affine's columns."""
        out = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
        out = out.permute(0, *(p + 1 for p in perm)).contiguous()
        if isinstance(out, MetaTensor):
            affine = torch.as_tensor(out.affine, dtype=torch.float64).clone()
            n = len(perm)
            affine[:n, :n] = affine[:n, :n][:, list(perm)]
            out.affine = affine
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = self.ref_key if self.ref_key is not None else next(iter(self.key_iterator(d)), None)
        if ref is None:
            return d
        ref_img = d[ref]
        if ref_img.ndim < 3:
            raise ValueError(
                f"{source_name(ref_img)}: expected a channel-first volume, got shape {tuple(ref_img.shape)}."
            )
        axis = slice_axis_from_spacing(self._spacing(ref_img))
        perm = [a for a in range(ref_img.ndim - 1) if a != axis] + [axis]
        for key in self.key_iterator(d):
            d[key] = self._permute(d[key], perm)
            self.push_transform(d, key, extra_info={"permutation": perm})
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            xform = self.get_most_recent_transform(d, key)
            perm = [int(p) for p in xform[TraceKeys.EXTRA_INFO]["permutation"]]
            d[key] = self._permute(d[key], np.argsort(perm).tolist())
            self.pop_transform(d, key)
        return d


def _check_n4_arguments(mask: str | None, shrink_factor: int, num_fitting_levels: int, num_iterations: int) -> None:
    """Raise ``ValueError`` for an unknown mask mode or a non-positive N4 setting."""
    if mask not in ("otsu", None):
        raise ValueError(f"mask must be 'otsu' or None, got {mask!r}.")
    if shrink_factor < 1 or num_fitting_levels < 1 or num_iterations < 1:
        raise ValueError(
            f"shrink_factor, num_fitting_levels and num_iterations must be >= 1, got "
            f"{shrink_factor}, {num_fitting_levels}, {num_iterations}."
        )


def n4_bias_field_correction(
    image: np.ndarray,
    spacing: Sequence[float],
    shrink_factor: int = 4,
    num_fitting_levels: int = 4,
    num_iterations: int = 50,
    convergence_threshold: float = 0.001,
    mask: str | None = "otsu",
    name: str = "<in-memory array>",
) -> tuple[np.ndarray, np.ndarray]:
    """N4 bias-field correction of one volume, fitted on an in-plane-shrunk copy.

    The fit runs on a strictly positive copy (shifted when needed), inside an Otsu foreground mask,
    block-averaged by ``shrink_factor`` in-plane (not along the slice axis); the log bias field is
    resampled linearly to full resolution and the *unshifted* image divided by ``exp(log bias)``, so zeros
    stay zero. The choices are explained in ``docs/data.md`` (N4).

    Args:
        image: volume ``[X, Y, Z]`` (singleton axes are allowed and ignored; at least 2 non-singleton axes).
        spacing: voxel spacing per axis of ``image`` in mm.
        shrink_factor: in-plane shrink factor for the fit (clipped to each axis' size).
        num_fitting_levels: B-spline fitting levels.
        num_iterations: maximum iterations per level.
        convergence_threshold: N4 convergence threshold.
        mask: ``"otsu"`` for an Otsu foreground mask, ``None`` to fit on every voxel (the authors' choice).
        name: file name for error messages.

    Returns:
        ``(corrected, log_bias)``, both float32 with the shape of ``image``.

    Raises:
        ValueError: on bad arguments, non-finite values, fewer than 2 non-singleton axes, a
            constant image or an empty mask.
    """
    _check_n4_arguments(mask, shrink_factor, num_fitting_levels, num_iterations)
    arr = np.asarray(image, dtype=np.float32)
    if len(spacing) != arr.ndim:
        raise ValueError(f"{name}: spacing {tuple(spacing)} does not match the image shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: image holds NaN or infinite values; N4 needs finite intensities.")
    keep = [ax for ax, n in enumerate(arr.shape) if n > 1]
    if len(keep) not in (2, 3):
        raise ValueError(f"{name}: N4 needs a 2D or 3D image (non-singleton axes), got shape {arr.shape}.")
    vol = arr.reshape([arr.shape[ax] for ax in keep])
    sp = np.asarray([float(spacing[ax]) for ax in keep])
    lo, hi = float(vol.min()), float(vol.max())
    if hi <= lo:
        raise ValueError(f"{name}: constant image (all values {lo}); N4 cannot estimate a bias field.")
    # N4 works on log intensities: fit on a strictly positive copy, apply to the original.
    fit = vol if lo > 0 else vol + np.float32(1e-3 * (hi - lo) - lo)

    import itk  # lazy: itk takes seconds to load

    image_type, mask_type = itk.Image[itk.F, vol.ndim], itk.Image[itk.UC, vol.ndim]
    itk_image = itk.image_from_array(np.ascontiguousarray(fit, dtype=np.float32))  # ITK axes = numpy axes reversed
    itk_image.SetSpacing([float(s) for s in sp[::-1]])
    if mask == "otsu":
        itk_mask = itk.otsu_threshold_image_filter(
            itk_image, inside_value=0, outside_value=1, number_of_histogram_bins=200, ttype=(image_type, mask_type)
        )
    else:
        itk_mask = itk.image_from_array(np.ones(fit.shape, dtype=np.uint8))
        itk_mask.CopyInformation(itk_image)
    if not np.any(itk.array_view_from_image(itk_mask)):
        raise ValueError(f"{name}: the N4 foreground mask is empty.")

    slice_ax = slice_axis_from_spacing(sp) if vol.ndim == 3 else -1
    factors = [1 if ax == slice_ax else max(1, min(int(shrink_factor), n)) for ax, n in enumerate(vol.shape)]
    # BinShrink, not ShrinkImageFilter: the latter labels its samples half a voxel off for even factors.
    small = itk.bin_shrink_image_filter(itk_image, shrink_factors=factors[::-1])
    small_mask = itk.bin_shrink_image_filter(itk_mask, shrink_factors=factors[::-1])
    n4 = itk.N4BiasFieldCorrectionImageFilter[image_type, mask_type, image_type].New(Input=small, MaskImage=small_mask)
    n4.SetNumberOfFittingLevels(int(num_fitting_levels))
    n4.SetMaximumNumberOfIterations([int(num_iterations)] * int(num_fitting_levels))
    n4.SetConvergenceThreshold(float(convergence_threshold))
    n4.Update()
    log_bias_itk = n4.ReconstructBiasField(n4.GetLogBiasFieldControlPointLattice())
    # Linear resampling to full resolution (origin 0); beyond the outermost coarse voxel centres the border
    # value is kept, where ITK's linear resampling would write 0 (no correction along a band at each edge).
    coarse = itk.array_from_image(log_bias_itk)
    origin = np.asarray(log_bias_itk.GetOrigin(), dtype=float)[::-1]
    step = np.asarray(log_bias_itk.GetSpacing(), dtype=float)[::-1]
    coords = []
    for ax, n in enumerate(coarse.shape):
        idx = (np.arange(vol.shape[ax]) * sp[ax] - origin[ax]) / step[ax]
        coords.append(torch.as_tensor(2.0 * idx / (n - 1) - 1.0 if n > 1 else np.zeros_like(idx), dtype=torch.float32))
    grid = torch.stack(torch.meshgrid(*coords, indexing="ij")[::-1], dim=-1)[None]  # grid_sample: last axis first
    src = torch.as_tensor(np.ascontiguousarray(coarse), dtype=torch.float32)[None, None]
    log_bias = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0].numpy()
    corrected = (vol / np.exp(log_bias)).astype(np.float32)
    return corrected.reshape(arr.shape), log_bias.reshape(arr.shape)


class N4BiasFieldCorrectiond(MapTransform):
    """N4 bias-field correction (Tustison et al., 2010) of every channel, as in the paper's preprocessing.

    Uses :func:`n4_bias_field_correction` with the MetaTensor's voxel spacing (1 mm without an affine).
    Fitting on an in-plane-shrunk copy with an Otsu mask takes seconds instead of the minutes of the
    authors' full-resolution, unmasked fit. Intensity only, so ``Invertd`` skips it.

    Args:
        keys: image keys.
        enabled: ``False`` passes the data through unchanged (N4 switched off).
        shrink_factor: in-plane shrink factor of the fit. Defaults to 4.
        num_fitting_levels: B-spline fitting levels. Defaults to 4.
        num_iterations: maximum iterations per level. Defaults to 50.
        convergence_threshold: defaults to 0.001.
        mask: ``"otsu"`` (default) or ``None`` (fit on all voxels).
        allow_missing_keys: don't raise when a key is missing.

    Raises:
        ValueError: on invalid arguments (see :func:`n4_bias_field_correction`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        enabled: bool = True,
        shrink_factor: int = 4,
        num_fitting_levels: int = 4,
        num_iterations: int = 50,
        convergence_threshold: float = 0.001,
        mask: str | None = "otsu",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        _check_n4_arguments(mask, shrink_factor, num_fitting_levels, num_iterations)
        self.enabled = bool(enabled)
        self.shrink_factor = int(shrink_factor)
        self.num_fitting_levels = int(num_fitting_levels)
        self.num_iterations = int(num_iterations)
        self.convergence_threshold = float(convergence_threshold)
        self.mask = mask

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        names = ("shrink_factor", "num_fitting_levels", "num_iterations", "convergence_threshold", "mask")
        kwargs = {name: getattr(self, name) for name in names}
        for key in self.key_iterator(d):
            img = d[key]
            spacing = SliceAxisLastd._spacing(img)
            arr = convert_to_tensor(img, track_meta=False).detach().cpu().numpy()
            out = np.stack([n4_bias_field_correction(c, spacing, name=source_name(img), **kwargs)[0] for c in arr])
            d[key], *_ = convert_to_dst_type(out, img, dtype=torch.float32)
        return d


class PercentileNormalized(MapTransform):
    """Per-volume percentile normalisation ``(x - p_lower) / (p_upper - p_lower)``, then optional clipping.

    Percentiles are taken over the whole volume (all channels) with numpy's linear interpolation, as the
    authors' ``normalize_minmax_data``. MONAI's ``ScaleIntensityRangePercentilesd`` computes the same map
    but silently returns ``x - p_lower`` for a constant image; here that is an error.

    Args:
        keys: image keys.
        lower: lower percentile in ``[0, 100)``. Defaults to 1.
        upper: upper percentile in ``(lower, 100]``. Defaults to 99.
        clip: ``(low, high)`` range of the output, or None (default) for no clipping.
        allow_missing_keys: don't raise when a key is missing.

    Raises:
        ValueError: when the percentiles are out of range or not ordered, or ``clip`` is not ``(low, high)``
            with ``low < high``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float = 1.0,
        upper: float = 99.0,
        clip: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}.")
        if clip is not None and (len(clip) != 2 or not float(clip[0]) < float(clip[1])):
            raise ValueError(f"clip must be None or (low, high) with low < high, got {clip!r}.")
        self.lower = float(lower)
        self.upper = float(upper)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Normalise every key.

        Raises:
            ValueError: on NaN values or when ``p_upper == p_lower`` (constant image), naming the file.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = convert_to_tensor(img, track_meta=False).detach().cpu().numpy().astype(np.float32, copy=False)
            if np.isnan(arr).any():
                raise ValueError(f"{source_name(img)}: image {key!r} holds NaN values; cannot normalise.")
            p_lo, p_hi = np.percentile(arr, [self.lower, self.upper])
            if not p_hi > p_lo:
                raise ValueError(
                    f"{source_name(img)}: image {key!r} has percentile {self.lower} == percentile {self.upper} "
                    f"(= {p_lo}); a constant image cannot be normalised."
                )
            out = (arr - np.float32(p_lo)) / np.float32(p_hi - p_lo)
            if self.clip is not None:
                np.clip(out, self.clip[0], self.clip[1], out=out)
            d[key], *_ = convert_to_dst_type(out, img, dtype=torch.float32)
        return d
