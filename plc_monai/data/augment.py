"""Batched training augmentations of the paper as MONAI randomizable dictionary transforms.

:class:`RandSpatialBatchd` (affine and elastic) and :class:`RandBrightnessContrastBatchd` take a whole batch
``[B, C, H, W]`` (or ``[B, C, H, W, D]``, spatial only) on any device, draw independent per-sample parameters
from a CPU :class:`torch.Generator` and apply them with a few vectorised torch ops (no loop over the batch).
They work in ``Compose``, are seeded through ``set_random_state`` and can be built from bundle configs with
``_target_``. Defaults and deviations from the authors' code: ``docs/method.md`` (D5).
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import MAX_SEED, ensure_tuple_rep

__all__ = [
    "PAPER_AFFINE_OPTIONS",
    "IntensityBatchParams",
    "RandBrightnessContrastBatchd",
    "RandSpatialBatchd",
    "SpatialBatchParams",
]

#: The five per-slice options of the authors' ``augmentation_function``, in the order of their
#: ``np.random.randint(5)`` draw. ``affine_choice_weights`` of :class:`RandSpatialBatchd` follows it.
PAPER_AFFINE_OPTIONS: tuple[str, ...] = ("rotate", "scale", "flip", "rotate45", "identity")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
    return value


def _check_prob(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}.")
    return value


def _symmetric_range(name: str, value: float | Sequence[float], centre: float = 0.0) -> tuple[float, float]:
    """``x -> (centre - x, centre + x)``; a pair ``(lo, hi)`` is taken as is."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative when given as one number, got {value}.")
        return (centre - float(value), centre + float(value))
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or pair[0] > pair[1]:
        raise ValueError(f"{name} must be a number or a pair (low, high) with low <= high, got {value!r}.")
    return pair  # type: ignore[return-value]


@functools.lru_cache(maxsize=32)
def _axis_factor(
    n: int, axis: int, nd: int, g: int, upsample: str, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``[n, g + nd]`` factor of one axis for the separable grid of :meth:`RandSpatialBatchd.sampling_grid`.

    The first ``g`` columns are the weights with which ``F.interpolate`` (``align_corners=False``)
    upsamples ``g`` coarse values to ``n`` pixels along this axis (bicubic and linear interpolation are
    separable). Column ``g + axis`` holds the centred pixel coordinates and the other extra columns are
    ones, so the affine part rides along in the same product.
    """
    impulses = torch.eye(g, dtype=torch.float64).view(g, 1, g, 1)
    weights = F.interpolate(impulses, size=(n, 1), mode=upsample, align_corners=False)
    extra = torch.ones(n, nd, dtype=torch.float64)
    extra[:, axis] = torch.arange(n, dtype=torch.float64) + (0.5 - n / 2.0)
    return torch.cat([weights[:, 0, :, 0].T, extra], dim=1).to(device=device, dtype=dtype)


class _BatchRandomizable(RandomizableTransform, MapTransform):
    """Seeding, RNG state and input handling shared by the batched transforms.

    Parameters are drawn from ``self.generator`` (CPU), so a seeded run is reproducible on any device and
    independent of the global RNGs; MONAI's ``self.R`` is seeded alongside but not used for draws.
    Subclasses implement ``_transform(tensors, randomize)`` on the gathered plain tensors.
    """

    def __init__(self, keys: KeysCollection, prob: float, allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=_check_prob("prob", prob))
        self.generator = torch.Generator(device="cpu")
        self.set_random_state()

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> _BatchRandomizable:
        """Seed the parameter generator, MONAI style; with neither argument, from torch's global RNG.

        Args:
            seed: integer seed (modulo ``MAX_SEED``; another object is seeded by its ``id`` as in MONAI).
            state: a ``np.random.RandomState``; one integer drawn from it seeds the generator.

        Returns:
            this transform.

        Raises:
            TypeError: when ``state`` is not a ``np.random.RandomState``.
        """
        super().set_random_state(seed=seed, state=state)
        if seed is not None:
            torch_seed = int(seed if isinstance(seed, (int, np.integer)) else id(seed)) % MAX_SEED
        elif state is not None:
            torch_seed = int(state.randint(MAX_SEED, dtype=np.int64))
        else:
            torch_seed = int(torch.randint(0, MAX_SEED, (1,)).item())
        self.generator.manual_seed(torch_seed)
        return self

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, dtype=torch.float64)

    def _uniform(self, bounds: tuple[float, float], n: int) -> torch.Tensor:
        return bounds[0] + (bounds[1] - bounds[0]) * self._rand(n)

    def __call__(self, data: Mapping[Hashable, Any], randomize: bool = True) -> dict[Hashable, Any]:
        """Transform the batch tensors of ``data``.

        Args:
            data: dictionary holding the batch tensors under ``keys`` (MetaTensors become plain tensors).
            randomize: draw new parameters; ``False`` reuses ``self.params`` (set it to inject parameters).

        Returns:
            a shallow copy of ``data``, the keys replaced by transformed tensors (same dtype and device).

        Raises:
            ValueError: on a shape, dtype or mode mismatch, naming the key and its shape.
        """
        d = dict(data)
        tensors = {}
        for key in self.key_iterator(d):
            value = d[key]
            try:
                tensors[key] = value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ValueError(
                    f"{type(self).__name__}: key {key!r} must hold a tensor or array, got {type(value).__name__}."
                ) from err
        if tensors:
            d.update(self._transform(tensors, randomize))
        return d


@dataclass(frozen=True)
class SpatialBatchParams:
    """Resolved per-sample geometry of :class:`RandSpatialBatchd` (CPU tensors).

    The forward map of sample ``b``: flip the width axis if ``flip[b]``, rotate by ``angle[b]`` degrees in
    the ``(H, W)`` plane (positive = the direction of ``torch.rot90(x, 1, dims=(-2, -1))``), scale by
    ``scale[b]`` (``> 1`` magnifies) about the image centre, then displace by the elastic field. Set it as
    ``params`` and call the transform with ``randomize=False`` to inject a deterministic geometry.

    Attributes:
        apply: ``[B]`` bool, samples that are transformed at all (the ``prob`` draw).
        angle: ``[B]`` float64 degrees.
        scale: ``[B]`` float64 isotropic zoom factors.
        flip: ``[B]`` bool, left-right (width axis) flip.
        elastic: ``[B, N, g, g]`` (2D) or ``[B, N, g, g, g]`` (3D) float32 coarse displacement in pixels,
            channel ``i`` along spatial axis ``i``; all zero for undeformed samples.
    """

    apply: torch.Tensor
    angle: torch.Tensor
    scale: torch.Tensor
    flip: torch.Tensor
    elastic: torch.Tensor

    @classmethod
    def identity(cls, batch_size: int, spatial_dims: int = 2, grid: int = 3) -> SpatialBatchParams:
        """Parameters that leave every sample unchanged; ``replace`` fields to build a test case."""
        return cls(
            apply=torch.ones(batch_size, dtype=torch.bool),
            angle=torch.zeros(batch_size, dtype=torch.float64),
            scale=torch.ones(batch_size, dtype=torch.float64),
            flip=torch.zeros(batch_size, dtype=torch.bool),
            elastic=torch.zeros((batch_size, spatial_dims) + (grid,) * spatial_dims),
        )

    @property
    def unchanged(self) -> torch.Tensor:
        """``[B]`` bool: samples whose geometry is exactly the identity (they are passed through)."""
        no_elastic = self.elastic.flatten(1).eq(0).all(dim=1)
        return ~self.apply | (self.angle.eq(0) & self.scale.eq(1) & ~self.flip & no_elastic)


class RandSpatialBatchd(_BatchRandomizable):
    """Random affine plus elastic deformation of a whole batch, one ``grid_sample`` per key.

    Every key holds ``[B, C, H, W]`` or ``[B, C, H, W, D]``, or the same without the channel axis (e.g. a
    ``uint8`` label store ``[B, H, W]``); sample ``b`` of every key gets the same geometry. Sampling uses
    ``align_corners=False`` and pixel units, so non-square images are not sheared; in 3D the rotation is in
    the ``(H, W)`` plane. Samples with identity geometry are returned bit for bit; a pure flip or ``k * 90``
    degree rotation equals ``torch.flip`` / ``torch.rot90`` (exactly with nearest, to ~1e-5 with bilinear).

    Example::

        aug = RandSpatialBatchd(keys=("image", "label")).set_random_state(seed=0)
        out = aug({"image": images, "label": labels})   # images [20, 1, 192, 192] on any device

    Args:
        keys: keys of the batch tensors to transform.
        mode: ``grid_sample`` mode per key: ``"bilinear"``, ``"nearest"`` or ``"bicubic"`` (2D only); integer
            and bool keys need ``"nearest"``.
        prob: per-sample probability of transforming the sample at all.
        rotate_range: rotation in **degrees** (not radians as in MONAI's ``RandAffine``): a number ``r`` means
            ``U(-r, r)``, a pair ``(lo, hi)`` means ``U(lo, hi)``.
        rotate45_prob: ``affine_mode="compose"`` only: probability of an extra rotation by ``k * 45`` degrees
            (the default is that option's frequency in paper mode).
        scale_range: zoom factor range: a number ``s`` means ``U(1 - s, 1 + s)``, a pair is taken as is.
        flip_prob: probability of the left-right flip (when the flip option is chosen in paper mode).
        elastic_prob: per-sample probability of the elastic displacement: ``elastic_grid`` coarse offsets per
            axis, ``N(0, elastic_sigma)`` pixels, upsampled to the image size (the authors deform about half
            of each batch).
        elastic_sigma: standard deviation of the coarse displacements in pixels.
        elastic_grid: number of coarse grid points per axis.
        padding_mode: ``grid_sample`` padding per key: ``"zeros"`` (as the authors), ``"border"``, ``"reflection"``.
        affine_mode: ``"paper"`` (the authors' code): per sample one of :data:`PAPER_AFFINE_OPTIONS` (rotation,
            scale, flip, ``k * 45`` degrees with ``k ~ U{0..7}``, nothing); ``"compose"``: rotation and scale
            always, flip and the ``k * 45`` rotation with their probabilities, all together.
        affine_choice_weights: paper mode: relative weights of :data:`PAPER_AFFINE_OPTIONS` (``None``: uniform).
        elastic_upsample: ``"bicubic"`` (the authors' order-3 resize) or ``"bilinear"``, as ``F.interpolate``
            with ``align_corners=False``; evaluated separably, so bicubic works in 3D too.
        allow_missing_keys: do not raise when a key is absent.

    Raises:
        ValueError: when an argument is out of range or unknown.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        mode: str | Sequence[str] = ("bilinear", "nearest"),
        prob: float = 1.0,
        rotate_range: float | Sequence[float] = 15.0,
        rotate45_prob: float = 0.2,
        scale_range: float | Sequence[float] = (0.95, 1.05),
        flip_prob: float = 0.5,
        elastic_prob: float = 0.5,
        elastic_sigma: float = 5.0,
        elastic_grid: int = 3,
        padding_mode: str | Sequence[str] = "zeros",
        affine_mode: str = "paper",
        affine_choice_weights: Sequence[float] | None = None,
        elastic_upsample: str = "bicubic",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        n_keys = len(self.keys)
        self.mode = tuple(
            _check_choice("mode", m, ("bilinear", "nearest", "bicubic")) for m in ensure_tuple_rep(mode, n_keys)
        )
        self.padding_mode = tuple(
            _check_choice("padding_mode", p, ("zeros", "border", "reflection"))
            for p in ensure_tuple_rep(padding_mode, n_keys)
        )
        self.rotate_range = _symmetric_range("rotate_range", rotate_range)
        self.scale_range = _symmetric_range("scale_range", scale_range, centre=1.0)
        if self.scale_range[0] <= 0:
            raise ValueError(f"scale_range must be positive, got {self.scale_range}.")
        self.rotate45_prob = _check_prob("rotate45_prob", rotate45_prob)
        self.flip_prob = _check_prob("flip_prob", flip_prob)
        self.elastic_prob = _check_prob("elastic_prob", elastic_prob)
        if elastic_sigma < 0:
            raise ValueError(f"elastic_sigma must be non-negative (pixels), got {elastic_sigma}.")
        self.elastic_sigma = float(elastic_sigma)
        if int(elastic_grid) != elastic_grid or elastic_grid < 1:
            raise ValueError(f"elastic_grid must be a positive integer, got {elastic_grid}.")
        self.elastic_grid = int(elastic_grid)
        self.affine_mode = _check_choice("affine_mode", affine_mode, ("paper", "compose"))
        weights = [1.0] * len(PAPER_AFFINE_OPTIONS) if affine_choice_weights is None else affine_choice_weights
        weights_t = torch.as_tensor([float(w) for w in weights], dtype=torch.float64)
        if weights_t.numel() != len(PAPER_AFFINE_OPTIONS) or (weights_t < 0).any() or weights_t.sum() <= 0:
            raise ValueError(
                f"affine_choice_weights must be {len(PAPER_AFFINE_OPTIONS)} non-negative weights for "
                f"{PAPER_AFFINE_OPTIONS} with a positive sum, got {affine_choice_weights!r}."
            )
        self.affine_choice_weights = weights_t / weights_t.sum()
        self.elastic_upsample = _check_choice("elastic_upsample", elastic_upsample, ("bicubic", "bilinear"))
        self.params: SpatialBatchParams | None = None

    def randomize(self, batch_size: int, spatial_dims: int = 2) -> None:
        """Draw per-sample parameters into ``self.params``.

        Args:
            batch_size: number of samples ``B``.
            spatial_dims: 2 or 3.
        """
        b = batch_size
        # Every field is drawn on every call, so the stream does not depend on the options chosen.
        apply = self._rand(b) < self.prob
        angle = self._uniform(self.rotate_range, b)
        scale = self._uniform(self.scale_range, b)
        flip = self._rand(b) < self.flip_prob
        angle45 = 45.0 * torch.randint(0, 8, (b,), generator=self.generator).double()
        use45 = self._rand(b) < self.rotate45_prob
        choice = torch.multinomial(self.affine_choice_weights.expand(b, -1), 1, True, generator=self.generator)[:, 0]
        elastic_on = self._rand(b) < self.elastic_prob
        coarse = torch.randn((b, spatial_dims) + (self.elastic_grid,) * spatial_dims, generator=self.generator)

        if self.affine_mode == "paper":
            option = {name: choice == i for i, name in enumerate(PAPER_AFFINE_OPTIONS)}
            angle = torch.where(option["rotate"], angle, 0.0) + torch.where(option["rotate45"], angle45, 0.0)
            scale = torch.where(option["scale"], scale, 1.0)
            flip = flip & option["flip"]
        else:
            angle = angle + torch.where(use45, angle45, 0.0)
        keep_elastic = (elastic_on & apply).view((b,) + (1,) * (spatial_dims + 1))
        self.params = SpatialBatchParams(
            apply=apply,
            angle=torch.where(apply, angle, 0.0),
            scale=torch.where(apply, scale, 1.0),
            flip=flip & apply,
            elastic=torch.where(keep_elastic, coarse * self.elastic_sigma, 0.0),
        )

    def sampling_grid(
        self, params: SpatialBatchParams, spatial_shape: Sequence[int], device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """The ``grid_sample`` grid of ``params`` for images of ``spatial_shape``.

        The source of centred pixel ``u`` is ``M (u + d(u)) / (n / 2)`` per axis, with the inverse linear map
        ``M = flip @ rot(-angle) / scale`` and ``d`` the upsampled elastic field; both terms are separable, so
        the grid is one matmul of per-axis factors with a small per-sample coefficient tensor (float64 on CUDA,
        so that TF32 matmul settings cannot blur the coordinates).

        Args:
            params: per-sample parameters (``B`` samples).
            spatial_shape: ``(H, W)`` or ``(H, W, D)``.
            device: where the grid is built.

        Returns:
            ``[B, H, W, 2]`` (or ``[B, H, W, D, 3]``) float32, normalised coordinates in ``grid_sample``
            order (last spatial axis first), ``align_corners=False``.

        Raises:
            ValueError: when ``spatial_shape`` is not 2D or 3D.
        """
        shape, g = tuple(int(n) for n in spatial_shape), self.elastic_grid
        nd = len(shape)
        if nd not in (2, 3):
            raise ValueError(f"spatial_shape must have 2 or 3 entries, got {tuple(spatial_shape)}.")
        device = torch.device(device)
        dtype = torch.float64 if device.type == "cuda" else torch.float32
        b = params.apply.shape[0]
        theta = torch.deg2rad(params.angle)
        # Snap multiples of 90 degrees, so that k*90 rotations sample exactly on pixel centres.
        cos, sin = (torch.where(v.abs() < 1e-12, 0.0, v) for v in (torch.cos(theta), torch.sin(theta)))
        mats = torch.eye(nd, dtype=torch.float64).repeat(b, 1, 1)
        # rot(-angle) in (row, col) coordinates: the inverse of the forward rotation.
        mats[:, 0, 0], mats[:, 0, 1], mats[:, 1, 0], mats[:, 1, 1] = cos, sin, -sin, cos
        mats[:, 1, :] = mats[:, 1, :] * torch.where(params.flip, -1.0, 1.0)[:, None]
        sizes = torch.tensor(shape, dtype=torch.float64)
        # output -> source in normalised units, rows reversed into grid_sample order (last axis first).
        mats = (mats / params.scale[:, None, None] * (2.0 / sizes)[None, :, None]).flip(1)
        coef = torch.zeros((b, nd) + (g + nd,) * nd, dtype=torch.float64)  # [B, N, (g + N) x N]
        coarse = torch.einsum("bij,bj...->bi...", mats, params.elastic.double())
        coef[(slice(None), slice(None)) + (slice(0, g),) * nd] = coarse
        for j in range(nd):
            coef[(slice(None), slice(None)) + (g + j,) * nd] = mats[:, :, j]
        coef = coef.to(device=device, dtype=dtype, non_blocking=True)
        factors = [_axis_factor(n, axis, nd, g, self.elastic_upsample, device, dtype) for axis, n in enumerate(shape)]
        if nd == 2:
            tail = torch.einsum("bcpq,wq->bpwc", coef, factors[1])  # [B, K, W, 2], small
        else:
            tail = torch.einsum("bcpqr,wq,dr->bpwdc", coef, factors[1], factors[2])  # [B, K, W, D, 3]
        grid = torch.matmul(factors[0], tail.reshape(b, tail.shape[1], -1))  # [B, H, W * (D) * N]
        return grid.view((b,) + shape + (nd,)).to(torch.float32)

    def _validate(self, tensors: dict[Hashable, torch.Tensor]) -> tuple[int, tuple[int, ...]]:
        name = type(self).__name__
        (ref_key, ref), *_ = tensors.items()
        if ref.ndim not in (4, 5):
            raise ValueError(
                f"{name}: key {ref_key!r} must be [B, C, H, W] or [B, C, H, W, D], got shape {tuple(ref.shape)}."
            )
        batch, spatial = ref.shape[0], tuple(ref.shape[2:])
        if len(spatial) == 3 and "bicubic" in self.mode:
            raise ValueError(f"{name}: mode 'bicubic' supports 2D only, got spatial shape {spatial}.")
        modes = dict(zip(self.keys, self.mode))
        for key, x in tensors.items():
            if x.ndim not in (ref.ndim, ref.ndim - 1) or x.shape[0] != batch or x.shape[-len(spatial) :] != spatial:
                raise ValueError(
                    f"{name}: key {key!r} has shape {tuple(x.shape)}, expected [B, C, *spatial] or [B, *spatial] "
                    f"with B={batch} and spatial={spatial} (from key {ref_key!r})."
                )
            if not x.is_floating_point() and (x.is_complex() or modes[key] != "nearest"):
                raise ValueError(
                    f"{name}: key {key!r} has dtype {x.dtype} (shape {tuple(x.shape)}); complex values are not "
                    f"supported and integer ones need mode 'nearest', got {modes[key]!r}."
                )
        return batch, spatial

    def _transform(self, tensors: dict[Hashable, torch.Tensor], randomize: bool) -> dict[Hashable, torch.Tensor]:
        batch, spatial = self._validate(tensors)
        nd = len(spatial)
        if randomize:
            self.randomize(batch, spatial_dims=nd)
        params = self.params
        if params is None or params.apply.shape[0] != batch or params.elastic.shape[1] != nd:
            raise ValueError(
                f"{type(self).__name__}: parameters for {None if params is None else params.apply.shape[0]} samples "
                f"do not fit a batch of {batch} with {nd} spatial dims; call randomize first."
            )
        unchanged = params.unchanged
        if bool(unchanged.all()):
            return tensors
        grid = self.sampling_grid(params, spatial, next(iter(tensors.values())).device)
        keep = unchanged.to(device=grid.device, non_blocking=True) if bool(unchanged.any()) else None
        modes = dict(zip(self.keys, zip(self.mode, self.padding_mode)))
        out = {}
        for key, x in tensors.items():
            mode, padding = modes[key]
            src = x.unsqueeze(1) if x.ndim == nd + 1 else x
            # half/bfloat16 grids would round coordinates to ~0.05-0.4 px at 192 px: resample in float32.
            work = src if x.dtype in (torch.float32, torch.float64) else src.float()
            res = F.grid_sample(work, grid.to(work.dtype), mode=mode, padding_mode=padding, align_corners=False)
            res = res.reshape(x.shape).to(x.dtype)
            out[key] = res if keep is None else torch.where(keep.view((-1,) + (1,) * (x.ndim - 1)), x, res)
        return out


@dataclass(frozen=True)
class IntensityBatchParams:
    """Per-sample parameters of :class:`RandBrightnessContrastBatchd` (CPU tensors).

    Attributes:
        apply: ``[B]`` bool, samples that are changed (the ``prob`` draw).
        delta: ``[B]`` float64 additive brightness.
        factor: ``[B]`` float64 contrast factor around each image's spatial mean.
    """

    apply: torch.Tensor
    delta: torch.Tensor
    factor: torch.Tensor


class RandBrightnessContrastBatchd(_BatchRandomizable):
    """Random brightness and contrast of a batch, the intensity augmentation of the contrastive branch.

    For sample ``b`` and channel ``c`` with spatial mean ``m``, ``out = clip((x - m) * factor_b + m + delta_b,
    *clip)``: brightness ``x + delta`` followed by contrast around the brightened image's mean, as the
    authors' ``brit_cont_net``. Samples not selected by ``prob`` are returned unchanged (not clipped).

    Args:
        keys: keys of ``[B, C, *spatial]`` floating-point batch tensors.
        prob: per-sample probability of changing the sample.
        brightness: a number ``b`` means ``delta ~ U(-b, b)``; a pair ``(lo, hi)`` means ``U(lo, hi)``.
        contrast: a pair ``(lo, hi)`` for ``factor ~ U(lo, hi)``, or a number ``c`` for ``U(1 - c, 1 + c)``.
        clip: ``(low, high)`` output range, or ``None`` for no clipping.
        per_sample: independent draws per sample (``True``) or one draw for the batch (``False``, the
            authors' TF graph).
        allow_missing_keys: do not raise when a key is absent.

    Raises:
        ValueError: when an argument is out of range.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        prob: float = 1.0,
        brightness: float | Sequence[float] = 0.3,
        contrast: float | Sequence[float] = (0.7, 1.3),
        clip: Sequence[float] | None = (0.0, 1.5),
        per_sample: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        self.brightness = _symmetric_range("brightness", brightness)
        self.contrast = _symmetric_range("contrast", contrast, centre=1.0)
        if self.contrast[0] < 0:
            raise ValueError(f"contrast factors must be non-negative, got {self.contrast}.")
        self.clip = None if clip is None else tuple(float(c) for c in clip)
        if self.clip is not None and (len(self.clip) != 2 or self.clip[0] > self.clip[1]):
            raise ValueError(f"clip must be None or (low, high) with low <= high, got {clip!r}.")
        self.per_sample = bool(per_sample)
        self.params: IntensityBatchParams | None = None

    def randomize(self, batch_size: int) -> None:
        """Draw per-sample parameters into ``self.params``.

        Args:
            batch_size: number of samples ``B``.
        """
        n = batch_size if self.per_sample else 1
        apply = self._rand(batch_size) < self.prob
        delta = self._uniform(self.brightness, n).expand(batch_size).clone()
        factor = self._uniform(self.contrast, n).expand(batch_size).clone()
        self.params = IntensityBatchParams(apply=apply, delta=delta, factor=factor)

    def _transform(self, tensors: dict[Hashable, torch.Tensor], randomize: bool) -> dict[Hashable, torch.Tensor]:
        name = type(self).__name__
        first = next(iter(tensors.values()))
        batch = first.shape[0] if first.ndim else -1
        for key, x in tensors.items():
            if x.ndim < 3 or not x.is_floating_point() or x.shape[0] != batch:
                raise ValueError(
                    f"{name}: key {key!r} must be a floating-point [B, C, *spatial] tensor with a common B, "
                    f"got shape {tuple(x.shape)} and dtype {x.dtype}."
                )
        if randomize:
            self.randomize(batch)
        params = self.params
        if params is None or params.apply.shape[0] != batch:
            raise ValueError(f"{name}: parameters do not fit a batch of {batch}; call randomize first.")
        if not bool(params.apply.any()):
            return tensors
        delta = params.delta.to(device=first.device, dtype=torch.float32, non_blocking=True)
        factor = params.factor.to(device=first.device, dtype=torch.float32, non_blocking=True)
        apply = None if bool(params.apply.all()) else params.apply.to(device=first.device, non_blocking=True)
        out = {}
        for key, x in tensors.items():
            view = (-1,) + (1,) * (x.ndim - 1)
            work = x if x.dtype in (torch.float32, torch.float64) else x.float()
            f = factor.view(view).to(work.dtype)
            mean = work.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
            # (x - m) * f + m + delta == x * f + (m * (1 - f) + delta): one pass over the pixels.
            res = torch.addcmul(mean * (1 - f) + delta.view(view).to(work.dtype), work, f)
            if self.clip is not None:
                res.clamp_(self.clip[0], self.clip[1])
            res = res.to(x.dtype)
            out[key] = res if apply is None else torch.where(apply.view(view), res, x)
        return out

