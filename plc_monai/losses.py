"""The local pixel-contrastive loss of Chaitanya et al. (Eq. 3-4), as a MONAI loss."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from plc_monai._contrastive_ops import (
    class_masks,
    class_sums_and_anchor_features,
    cosine_logits,
    draw_pixels,
    padded_labels,
)


__all__ = ["AnchorSample", "PixelContrastiveLoss"]

_MATCHING = ("intra", "inter")


class AnchorSample(NamedTuple):
    """Anchor pixels drawn by :meth:`PixelContrastiveLoss.sample_anchors`.

    Attributes:
        rows: ``[R, 2]`` long. Row ``r`` is one anchor role: ``rows[r, 0]`` is the batch index of
            the anchor image and ``rows[r, 1]`` that of its partner (``-1`` for ``"intra"``).
            ``"intra"``: ``R = B``, row ``b`` is image ``b``. ``"inter"`` with ``P`` pairs:
            ``R = 2P``, row ``p`` is ``(pairs[p, 0], pairs[p, 1])`` and row ``P + p`` is
            ``(pairs[p, 1], pairs[p, 0])``.
        pixels: ``[R, K, S]`` long, flat spatial indices (row-major over ``*spatial``) of the
            ``S = num_samples`` anchors of each candidate class (``K`` candidate classes, in the
            order of :attr:`PixelContrastiveLoss.candidate_classes`). Entries where ``valid`` is
            False are meaningless.
        valid: ``[R, K]`` bool, True where the candidate class is present in the anchor image.
    """

    rows: torch.Tensor
    pixels: torch.Tensor
    valid: torch.Tensor


class PixelContrastiveLoss(_Loss):
    """
    Local pixel-wise contrastive loss between pixel embeddings ``features`` (``[B, D, H, W[, Z]]``,
    the raw output of a projection head) and (pseudo-)labels (``[B, 1, H, W[, Z]]`` class ids).
    Each sampled anchor pixel is pulled towards the mean embedding of its own class and pushed
    away from the mean embeddings of the other classes, within its image ("intra") or within its
    image and a partner image ("inter").

    The original paper:

        Chaitanya, K., Erdil, E., Karani, N. and Konukoglu, E. (2023) Local contrastive loss with
        pseudo-label based self-training for semi-supervised medical image segmentation.
        Medical Image Analysis. Section III, Eq. (3)-(4).

    Notation: ``z(x)_i`` is the embedding of pixel ``i`` of image ``x``; ``S_k(x)`` the pixels of
    class ``k`` in ``x``; ``m_k(x) = (1/|S_k(x)|) sum_{i in S_k(x)} z(x)_i`` the class mean, taken
    over **all** pixels of the class and over the **raw** (un-normalised) embeddings;
    ``s(u, v) = u^T v / (||u|| ||v|| tau)`` the cosine similarity divided by the temperature;
    ``K(x)`` the candidate classes present in ``x`` (foreground classes ``1..C-1``, plus class 0
    when ``include_background=True``).

    - ``matching="intra"`` (Eq. 4 with ``x' = x``): an anchor ``a`` of class ``c`` in ``x`` gives
      one term ``-log( e^{s(a, m_c(x))} / sum_{k in K(x)} e^{s(a, m_k(x))} )``. The positive is in
      the denominator.
    - ``matching="inter"``: images are paired; an anchor ``a`` of class ``c`` in ``x`` with partner
      ``x'`` has one shared denominator over the class means of both images,
      ``den(a) = sum_{k in K(x)} e^{s(a, m_k(x))} + sum_{k in K(x')} e^{s(a, m_k(x'))}``, and gives
      two terms, ``-log(e^{s(a, m_c(x))} / den(a))`` and ``-log(e^{s(a, m_c(x'))} / den(a))``.
      The second exists only when ``c`` is present in ``x'``; a class absent from ``x'`` is not a
      negative either. Both images of a pair are anchor images, each with the other as partner.
      By default pair ``p`` is ``(p, p + B/2)``: the first half of the batch against the second
      half (in the paper, 10 labeled + 10 pseudo-labeled slices).

    Semantic choices:

    - Anchors: for each anchor image and each candidate class present in it, ``num_samples``
      pixels of that class drawn uniformly **with replacement** (the paper's ``|S~_c(x)| = 3``).
      ``num_samples=None`` makes every pixel of a candidate class an anchor (deterministic).
      With ``"inter"``, an image in several pairs draws fresh anchors for each pair.
    - Background (class 0) is neither an anchor nor a negative unless ``include_background=True``.
    - Classes absent from an image give no anchors and no negatives; they are skipped, never NaN.
    - An anchor without any negative class (``"intra"``: no other candidate class in its image;
      ``"inter"``: none in its image or its partner) gives no term. Its intra term would be exactly 0
      and would only dilute the mean on slices with few structures; the authors avoided the case by
      admitting only slices that hold every class.
    - Similarities are computed in float32 (float64 inputs stay float64), with autocast disabled,
      so the loss is safe to call inside ``torch.autocast``.
    - Eq. (4) is written as a probability; the loss term is its negative log, as in the authors' code.
      Eq. (3) averages over anchors of a class, then over classes. With sampling every present
      class has ``num_samples`` anchors, so the plain mean over terms equals that average (for each
      image, up to missing partner terms); with ``num_samples=None`` the plain mean weights each
      class by its pixel count.
    - Reduction ``"mean"`` is the plain mean over every term that exists, ``"sum"`` their sum and
      ``"none"`` the 1D tensor of terms ordered by row (see :class:`AnchorSample`), then anchor
      (class-major, then sample; or pixel order with ``num_samples=None``), then self term before
      partner term. A batch with no term returns ``0`` still attached to ``features``.

    Static shapes (graph-safe): every intermediate tensor has a shape fixed by ``B``, ``D``, the spatial
    size, ``K`` candidate classes and ``S = num_samples``: ``num_samples`` anchors are drawn for every
    (role, candidate class), ``[R, K, S]``, and a class absent from an image is masked (``valid``,
    ``-inf`` similarities), never dropped. With ``check_inputs=False`` and reduction ``"mean"`` or
    ``"sum"``, ``forward`` reads no device value on the host and calls no data-dependent-shape op
    (boolean indexing, ``nonzero``, ``.item()``), so ``torch.compile(fullgraph=True)`` and CUDA graphs can
    capture it; it gives the same value and gradient as with the checks on. ``"none"`` returns only
    the terms that exist (a data-dependent length), and explicit ``pairs`` are range-checked on the host.

    Differences from the authors' TensorFlow code:

    - Their running sum of terms is divided by the per-pair term count ``N`` after every pair and
      never reset, then by the number of pairs ``P``, so pair ``p = 0..P-1`` is weighted
      ``N^-(P-p) / P`` and the last pair dominates. We take a plain mean over terms.
    - They admit only slices whose label contains every class (background included) and use
      hand-wired pairs (some pairing a slice with itself). We accept any slice and skip absent
      classes; pairs are ``(p, p + B/2)`` or the caller's ``pairs``.
    - They skip a class for both images of a pair when it is absent from either; we keep the
      anchor's own (intra-image) term and drop only the missing partner term.
    """

    def __init__(
        self,
        num_classes: int,
        matching: str = "inter",
        temperature: float = 0.1,
        num_samples: int | None = 3,
        include_background: bool = False,
        reduction: LossReduction | str = LossReduction.MEAN,
        generator: torch.Generator | None = None,
        check_inputs: bool = True,
    ) -> None:
        """
        Args:
            num_classes: number of classes ``C`` in the labels, background (class 0) included.
                Must be at least 2.
            matching: ``"inter"`` (default, the authors' default) matches anchors against the
                class means of their own image and of a partner image; ``"intra"`` only against
                their own image.
            temperature: ``tau`` in Eq. (4), must be > 0. Defaults to 0.1 (the paper's value).
            num_samples: anchors drawn per (image, class), uniformly with replacement. Defaults
                to 3 (the paper's value). ``None`` uses every pixel of the class.
            include_background: if True, class 0 is treated like any other class (anchor and
                negative). Defaults to False, as in the paper.
            reduction: ``"mean"`` (mean over all terms), ``"sum"`` or ``"none"`` (1D tensor of
                terms).
            generator: random generator for anchor sampling. Defaults to torch's global RNG.
                ``forward`` accepts one too, which takes precedence.
            check_inputs: check the values of ``features`` (NaN/Inf) and ``labels`` (range; finite
                integral floats; valid one-hot) on every call. Each check reads a device value on the
                host, i.e. synchronises a CUDA stream; a training loop that already feeds valid labels
                may turn them off on the GPU. Shape checks always run (they cost nothing). With the
                checks off, labels outside ``[0, num_classes)`` give undefined (but memory-safe)
                results, and ``forward`` with ``reduction`` ``"mean"`` or ``"sum"`` is graph-safe (see
                the class docstring).

        Raises:
            ValueError: when ``num_classes < 2``, ``temperature <= 0``, ``num_samples`` is neither
                None nor an int >= 1, ``matching`` is not ``"intra"``/``"inter"`` or
                ``reduction`` is not a ``LossReduction`` value.
            TypeError: when ``generator`` is not a ``torch.Generator`` or None.
        """
        try:
            reduction_value = LossReduction(reduction).value
        except ValueError:
            raise ValueError(
                f"reduction must be one of {[r.value for r in LossReduction]}, got {reduction!r}."
            ) from None
        super().__init__(reduction=reduction_value)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}.")
        if matching not in _MATCHING:
            raise ValueError(f"matching must be one of {_MATCHING}, got {matching!r}.")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}.")
        if num_samples is not None and (
            isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
        ):
            raise ValueError(f"num_samples must be None or an int >= 1, got {num_samples!r}.")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}.")
        self.num_classes = num_classes
        self.matching = matching
        self.temperature = float(temperature)
        self.num_samples = num_samples
        self.include_background = bool(include_background)
        self.generator = generator
        self.check_inputs = bool(check_inputs)

    @property
    def candidate_classes(self) -> list[int]:
        """Class ids that can be anchors and negatives: ``1..C-1``, or ``0..C-1`` with background."""
        return list(range(self._first_candidate, self.num_classes))

    @property
    def _first_candidate(self) -> int:
        return 0 if self.include_background else 1

    def _candidate_ids(self, device: torch.device) -> torch.Tensor:
        """:attr:`candidate_classes` as a long tensor made on ``device`` (a tensor from a Python list would
        need a host-to-device copy, which blocks on CUDA)."""
        return torch.arange(self._first_candidate, self.num_classes, device=device)

    # ------------------------------------------------------------------ input handling
    def _class_ids(self, labels: torch.Tensor, batch: int, spatial: tuple[int, ...]) -> torch.Tensor:
        """Validate ``labels`` against the features' batch and spatial size; return class ids ``[B, N]`` (long)."""
        shape = (batch, "D", *spatial)
        ndim = len(spatial) + 2
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"labels must be a tensor, got {type(labels).__name__}.")
        if labels.ndim == ndim and labels.shape[1] == self.num_classes:
            onehot = labels
            if tuple(onehot.shape[2:]) != spatial or onehot.shape[0] != batch:
                raise ValueError(
                    f"one-hot labels shape {tuple(labels.shape)} does not match features shape "
                    f"{shape} in batch or spatial size."
                )
            if not self.check_inputs:
                return onehot.argmax(dim=1).reshape(batch, -1)
            if onehot.is_floating_point() and not torch.isfinite(onehot).all():
                raise ValueError("one-hot labels contain NaN or Inf.")
            if not (((onehot == 0) | (onehot == 1)).all() and (onehot.sum(dim=1) == 1).all()):
                raise ValueError(
                    f"labels with {self.num_classes} channels must be one-hot (values 0/1, exactly one 1 "
                    "per pixel)."
                )
            return onehot.argmax(dim=1).reshape(batch, -1)
        if labels.ndim == ndim and labels.shape[1] == 1:
            ids = labels[:, 0]
        elif labels.ndim == ndim - 1:
            ids = labels
        else:
            raise ValueError(
                f"labels must be [B, 1, *spatial] class ids, [B, {self.num_classes}, *spatial] one-hot or "
                f"[B, *spatial] class ids for features {shape}, got {tuple(labels.shape)}."
            )
        if ids.shape[0] != batch:
            raise ValueError(f"batch size mismatch: features {shape}, labels {tuple(labels.shape)}.")
        if tuple(ids.shape[1:]) != spatial:
            raise ValueError(
                f"spatial shape mismatch: features {shape}, labels {tuple(labels.shape)}."
            )
        if ids.dtype == torch.bool:
            ids = ids.long()
        if ids.is_floating_point() and self.check_inputs:
            if not torch.isfinite(ids).all():
                raise ValueError("labels contain NaN or Inf.")
            if (ids != torch.round(ids)).any():
                raise ValueError("floating-point labels must hold integral class ids.")
        if ids.is_complex():
            raise ValueError(f"labels must be real, got dtype {ids.dtype}.")
        return ids.reshape(batch, -1).long()

    def _check_label_range(self, class_ids: torch.Tensor) -> None:
        """With ``check_inputs``, raise a ValueError when a class id lies outside ``[0, num_classes)``."""
        if self.check_inputs and class_ids.numel() > 0:
            lo, hi = torch.aminmax(class_ids)
            if int(lo) < 0 or int(hi) >= self.num_classes:
                raise ValueError(f"labels must lie in [0, {self.num_classes}), got values in [{int(lo)}, {int(hi)}].")

    def _roles(self, batch: int, pairs: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Anchor roles ``[R, 2]``: (anchor image ``x``, partner image ``x'`` or -1); see :class:`AnchorSample`."""
        if self.matching == "intra":
            if pairs is not None:
                raise ValueError("pairs is only used with matching='inter'; got pairs with matching='intra'.")
            anchor = torch.arange(batch, device=device)
            return torch.stack([anchor, torch.full_like(anchor, -1)], dim=1)
        if pairs is None:
            if batch % 2 != 0:
                raise ValueError(
                    f"matching='inter' pairs image b with b + B/2 and needs an even batch size, got B={batch}; "
                    "pass `pairs` explicitly for other layouts."
                )
            half = batch // 2
            first = torch.arange(half, device=device)
            pairs = torch.stack([first, first + half], dim=1)
        else:
            if not isinstance(pairs, torch.Tensor) or pairs.dtype.is_floating_point or pairs.dtype == torch.bool:
                raise ValueError(f"pairs must be an integer tensor [P, 2], got {pairs!r}.")
            if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] < 1:
                raise ValueError(f"pairs must have shape [P, 2] with P >= 1, got {tuple(pairs.shape)}.")
            if pairs.min() < 0 or pairs.max() >= batch:
                raise ValueError(f"pairs must hold batch indices in [0, {batch}), got {pairs.tolist()}.")
            pairs = pairs.to(device=device, dtype=torch.long)
        return torch.cat([pairs, pairs.flip(1)], dim=0)

    def sample_anchors(
        self, labels: torch.Tensor, pairs: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> AnchorSample:
        """Draw anchor pixels exactly as ``forward`` would with the same generator state.

        Calling this with a generator seeded to ``s`` and then ``forward`` with another generator
        seeded to ``s`` uses the same anchors, which lets tests and users inspect the draws.

        Args:
            labels: ``[B, 1, *spatial]`` class ids or ``[B, C, *spatial]`` one-hot (the channel dimension
                is required here, since there are no features to tell the layouts apart).
            pairs: optional ``[P, 2]`` batch indices (``"inter"`` only).
            generator: random generator; defaults to the constructor's, then torch's global RNG.

        Returns:
            An :class:`AnchorSample`.

        Raises:
            ValueError: when ``num_samples`` is None (nothing is sampled) or the inputs are invalid.
        """
        if self.num_samples is None:
            raise ValueError("num_samples=None uses every pixel as an anchor; there is nothing to sample.")
        if not isinstance(labels, torch.Tensor) or labels.ndim < 3 or labels.shape[1] not in (1, self.num_classes):
            raise ValueError(
                f"sample_anchors needs labels [B, 1, *spatial] or [B, {self.num_classes}, *spatial], "
                f"got {tuple(getattr(labels, 'shape', ()))}."
            )
        class_ids = self._class_ids(labels, labels.shape[0], tuple(labels.shape[2:]))
        self._check_label_range(class_ids)
        labels_pad, block = padded_labels(class_ids, torch.float32)
        classes = self._candidate_ids(class_ids.device).to(torch.float32)
        per_block = class_masks(labels_pad, classes, block)[1]
        roles = self._roles(class_ids.shape[0], pairs, class_ids.device)
        pixels, present = draw_pixels(labels_pad, classes, per_block, class_ids.shape[1], roles[:, 0],
                                      self.num_samples, generator if generator is not None else self.generator)
        return AnchorSample(roles, pixels, present)

    # ------------------------------------------------------------------ loss
    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        pairs: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """
        The steps of Eq. (3)-(4), one method each: draw the anchors ``a`` (:meth:`_draw_anchors`), take the
        class means ``m_k(x)`` and the anchors' embeddings (:meth:`_class_means`), the similarities
        ``s(a, m_k)`` to the means of the anchor image and of its partner (:meth:`_similarities`), then the
        terms (:meth:`_intra_terms` or :meth:`_inter_terms`) and their reduction (:meth:`_reduce`).

        Args:
            features: ``[B, D, *spatial]`` pixel embeddings (raw projection-head output), 2D or 3D.
            labels: ``[B, 1, *spatial]`` integer class ids in ``[0, num_classes)`` (labels or
                pseudo-labels; float tensors holding integers are accepted), or one-hot
                ``[B, num_classes, *spatial]`` (float or int), or ``[B, *spatial]`` class ids.
            pairs: ``"inter"`` only: optional ``[P, 2]`` integer tensor of batch indices; each row is
                one pair and both of its images are anchor images. Defaults to ``(p, p + B/2)``.
            generator: random generator for this call; defaults to the constructor's, then torch's
                global RNG.

        Returns:
            A scalar for ``"mean"``/``"sum"``, a 1D tensor of terms for ``"none"``; float32, or
            float64 for float64 features.

        Raises:
            ValueError: when features are not ``[B, D, *spatial]`` or contain NaN/Inf, when labels do
                not match features in batch or spatial size, hold values outside ``[0, num_classes)``
                or are not one-hot, when ``pairs`` is malformed or given with ``"intra"``, or when the
                batch size is odd with the default ``"inter"`` pairing.
        """
        if not isinstance(features, torch.Tensor) or features.ndim < 3:
            raise ValueError(
                f"features must be a tensor [B, D, *spatial], got shape {tuple(getattr(features, 'shape', ()))}."
            )
        if not features.is_floating_point():
            raise ValueError(f"features must be floating point, got dtype {features.dtype}.")
        batch, dim = features.shape[:2]
        class_ids = self._class_ids(labels, batch, tuple(features.shape[2:]))  # [B, N]
        roles = self._roles(batch, pairs, features.device)  # [R, 2]: anchor image x, partner x' (-1 for intra)
        image, partner = roles[:, 0], roles[:, 1]
        generator = generator if generator is not None else self.generator
        self._check_label_range(class_ids)
        with torch.autocast(device_type=features.device.type, enabled=False):
            dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
            z = features.to(dtype).reshape(batch, dim, -1)  # z(x)_i: [B, D, N]
            labels_pad, block = padded_labels(class_ids, dtype)  # [B, N_pad]
            classes = self._candidate_ids(features.device)  # [K]
            masks, per_block = class_masks(labels_pad, classes.to(dtype), block)  # [B, K, N_pad], [B, K, nb]
            in_class = per_block.sum(dim=-1).to(dtype)  # |S_k(x)|: [B, K]
            present = in_class > 0  # k in K(x): [B, K]

            pixels, anchor_class, valid = self._draw_anchors(class_ids, labels_pad, classes, per_block, image, generator)
            # an anchor without any negative class (none other present in its image, nor in its partner's for
            # "inter") has no contrast: its intra term is exactly 0, its inter terms only balance two means
            # of its own class. It gives no term rather than diluting the mean.
            seen = present[image] if self.matching == "intra" else present[image] | present[partner]  # [R, K]
            valid = valid & (seen.sum(dim=1, keepdim=True) >= 2)  # [R, A]

            means, anchors = self._class_means(z, masks[..., : z.shape[2]], in_class, image, pixels)
            own = self._similarities(anchors, means[image], present[image], valid)  # s(a, m_k(x)): [R, A, K]
            if self.matching == "intra":
                terms, exists = self._intra_terms(own, anchor_class, valid)
            else:
                other = self._similarities(anchors, means[partner], present[partner], valid)  # s(a, m_k(x'))
                terms, exists = self._inter_terms(own, other, anchor_class, valid, present[partner])
            return self._reduce(terms, exists)

    def _draw_anchors(
        self,
        class_ids: torch.Tensor,
        labels_pad: torch.Tensor,
        classes: torch.Tensor,
        per_block: torch.Tensor,
        image: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Step 1: the anchors ``a`` of each role, ``num_samples`` per candidate class present in the anchor image.

        Args:
            class_ids: ``[B, N]`` long class ids.
            labels_pad: ``[B, N_pad]`` float class ids padded to whole blocks.
            classes: ``[K]`` long candidate class ids.
            per_block: ``[B, K, nb]`` pixels of each candidate class per block.
            image: ``[R]`` anchor image of each role.
            generator: random generator or None.

        Returns:
            ``pixels [R, A]`` (flat pixel indices, class-major then sample; None with ``num_samples=None``,
            where every pixel is an anchor, ``A = N``), ``anchor_class [R, A]`` (the anchor's class as a
            position in ``classes``; -1 for a non-candidate pixel) and ``valid [R, A]`` (the anchor exists:
            its class is a candidate present in the anchor image).
        """
        n_roles, n_classes = image.shape[0], classes.shape[0]
        if self.num_samples is None:
            position = torch.full((self.num_classes,), -1, dtype=torch.long, device=classes.device)
            position[classes] = torch.arange(n_classes, device=classes.device)
            anchor_class = position[class_ids[image]]  # [R, N]
            return None, anchor_class, anchor_class >= 0
        drawn, present = draw_pixels(labels_pad, classes.to(labels_pad.dtype), per_block, class_ids.shape[1], image,
                                     self.num_samples, generator)  # [R, K, S], [R, K]
        anchor_class = torch.arange(n_classes, device=classes.device).repeat_interleave(self.num_samples)
        return (drawn.reshape(n_roles, -1), anchor_class.expand(n_roles, -1),
                present.repeat_interleave(self.num_samples, dim=1))

    def _class_means(
        self, z: torch.Tensor, masks: torch.Tensor, in_class: torch.Tensor, image: torch.Tensor,
        pixels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 2: the class means ``m_k(x)`` over all pixels of each class, and the anchors' embeddings.

        Args:
            z: ``[B, D, N]`` raw embeddings.
            masks: ``[B, K, N]`` one-hot masks of the candidate classes.
            in_class: ``[B, K]`` pixels per class, ``|S_k(x)|``.
            image: ``[R]`` anchor image of each role.
            pixels: ``[R, A]`` anchor pixels, or None when every pixel is an anchor.

        Returns:
            ``means [B, K, D]`` and ``anchors [R, A, D]``, both normalised to unit length (the cosine of
            ``s(u, v)``). The mean of a class absent from an image is 0.

        Raises:
            ValueError: with ``check_inputs``, when the features hold NaN/Inf or overflow when summed.
        """
        no_pixels = torch.zeros((image.shape[0], 0), dtype=torch.long, device=z.device)
        sums, anchor_z = class_sums_and_anchor_features(z, masks, image, no_pixels if pixels is None else pixels)
        if self.check_inputs and not torch.isfinite(sums).all():
            # any NaN/Inf pixel makes every class sum of its image non-finite; this check is cheap
            if not torch.isfinite(z).all():
                raise ValueError("features contain NaN or Inf.")
            raise ValueError(f"features overflow {z.dtype} when summed per class.")
        if pixels is None:
            anchor_z = z[image].transpose(1, 2)  # [R, N, D]
        means = sums / in_class.clamp_min(1)[:, None, :]  # [B, D, K]
        return F.normalize(means.transpose(1, 2), dim=-1), F.normalize(anchor_z, dim=-1)

    def _similarities(
        self, anchors: torch.Tensor, means: torch.Tensor, present: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """Step 3: ``s(a, m_k) = cos(a, m_k) / tau`` of every anchor with every class mean of one image per role.

        Args:
            anchors: ``[R, A, D]`` unit-norm anchor embeddings.
            means: ``[R, K, D]`` unit-norm class means of the image each role compares with.
            present: ``[R, K]`` which classes that image holds.
            valid: ``[R, A]`` which anchors give terms.

        Returns:
            ``[R, A, K]``: ``-inf`` for a class absent from the image (no mean, no negative), and 0 in the
            rows of anchors that give no term, so that ``logsumexp`` and its gradient stay finite.
        """
        similarity = cosine_logits(anchors, means) / self.temperature
        similarity = similarity.masked_fill(~present[:, None, :], float("-inf"))
        return torch.where(valid[..., None], similarity, torch.zeros_like(similarity))

    @staticmethod
    def _intra_terms(
        own: torch.Tensor, anchor_class: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4, ``"intra"``: ``-log(e^{s(a, m_c(x))} / sum_{k in K(x)} e^{s(a, m_k(x))})`` per anchor.

        Returns:
            ``terms [R, A]`` and ``exists [R, A]``.
        """
        positive = own.gather(-1, anchor_class.clamp_min(0)[..., None])[..., 0]
        return torch.logsumexp(own, dim=-1) - positive, valid

    @staticmethod
    def _inter_terms(
        own: torch.Tensor, other: torch.Tensor, anchor_class: torch.Tensor, valid: torch.Tensor,
        partner_present: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4, ``"inter"``: ``-log(e^{s(a, m_c(x))} / den(a))`` and ``-log(e^{s(a, m_c(x'))} / den(a))``,
        with ``den(a)`` summed over the class means of both images; the second only when ``c`` is in ``x'``.

        Args:
            own: ``[R, A, K]`` similarities with the anchor image's class means.
            other: ``[R, A, K]`` similarities with the partner's class means.
            anchor_class: ``[R, A]`` the anchor's class as a position in the candidate classes.
            valid: ``[R, A]`` which anchors give terms.
            partner_present: ``[R, K]`` which classes the partner holds.

        Returns:
            ``terms [R, A, 2]`` (own-image term, partner term) and ``exists [R, A, 2]``.
        """
        c = anchor_class.clamp_min(0)
        log_den = torch.logsumexp(torch.cat([own, other], dim=-1), dim=-1)
        partner_term = valid & partner_present.gather(1, c)
        own_positive = own.gather(-1, c[..., None])[..., 0]
        partner_positive = torch.where(partner_term, other.gather(-1, c[..., None])[..., 0], 0.0)
        terms = torch.stack([log_den - own_positive, log_den - partner_positive], dim=-1)
        return terms, torch.stack([valid, partner_term], dim=-1)

    def _reduce(self, terms: torch.Tensor, exists: torch.Tensor) -> torch.Tensor:
        """Step 5: the terms that exist, as the 1D tensor (``"none"``), their sum or their mean (0 when none)."""
        if self.reduction == LossReduction.NONE.value:
            return terms[exists]
        total = torch.where(exists, terms, torch.zeros_like(terms)).sum()
        if self.reduction == LossReduction.SUM.value:
            return total
        return total / exists.sum().clamp_min(1)
