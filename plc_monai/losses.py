"""The local pixel-contrastive loss of Chaitanya et al. (Eq. 3-4), as a MONAI loss."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from plc_monai._contrastive_ops import ClassSumsAndAnchorFeatures, class_masks, cosine_logits, draw_pixels

__all__ = ["AnchorSample", "PixelContrastiveLoss"]

_MATCHING = ("intra", "inter")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class AnchorSample(NamedTuple):
    """Anchor pixels drawn by :meth:`PixelContrastiveLoss.sample_anchors`.

    Attributes:
        rows: ``[R, 2]`` long, one anchor role per row: (anchor image, partner image or ``-1`` for
            ``"intra"``). ``"intra"``: ``R = B``, row ``b`` is image ``b``. ``"inter"`` with ``P`` pairs:
            ``R = 2P``, row ``p`` is ``(pairs[p, 0], pairs[p, 1])`` and row ``P + p`` the flipped pair.
        pixels: ``[R, K, S]`` long flat spatial indices (row-major) of the ``S = num_samples`` anchors of
            each of the ``K`` :attr:`PixelContrastiveLoss.candidate_classes`; meaningless where not ``valid``.
        valid: ``[R, K]`` bool, True where the candidate class is present in the anchor image.
    """

    rows: torch.Tensor
    pixels: torch.Tensor
    valid: torch.Tensor


class PixelContrastiveLoss(_Loss):
    """
    Local pixel-wise contrastive loss between raw pixel embeddings ``[B, D, H, W[, Z]]`` and
    (pseudo-)labels ``[B, 1, H, W[, Z]]``: each sampled anchor pixel is pulled towards the mean embedding
    of its own class and pushed away from the means of the other classes, within its image (``"intra"``)
    or within its image and a partner image (``"inter"``).

    Chaitanya, K., Erdil, E., Karani, N. and Konukoglu, E. (2023) Local contrastive loss with
    pseudo-label based self-training for semi-supervised medical image segmentation.
    Medical Image Analysis. Section III, Eq. (3)-(4).

    Anchors: ``num_samples`` pixels per candidate class present in the anchor image, drawn with replacement.
    ``m_k(x)`` is the mean raw embedding over all pixels of class ``k`` in ``x``, ``K(x)`` the candidate
    classes present in ``x`` and ``s(a, m) = cos(a, m) / tau``. ``"inter"`` pairs ``(p, p + B/2)`` by
    default; both images of a pair are anchor images, and a class absent from the partner drops only the
    partner term. Absent classes are skipped (never NaN); an anchor without any negative class gives no term.
    Similarities are float32 (float64 stays) with autocast disabled. ``"none"`` orders the terms by row
    (:class:`AnchorSample`), anchor (class-major), then own-image before partner term. With
    ``check_inputs=False`` and reduction ``"mean"``/``"sum"``, ``forward`` has static shapes and no host
    read, so ``torch.compile(fullgraph=True)`` and CUDA graphs can capture it. The formulas, edge cases and
    the deviations from the authors' code (a plain mean over terms, any slice accepted) are in docs/loss.md.
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
            num_classes: number of classes ``C``, background (class 0) included; at least 2.
            matching: ``"inter"`` (the authors' default): own image and partner image; ``"intra"``: own image.
            temperature: ``tau`` in Eq. (4), > 0 (paper: 0.1).
            num_samples: anchors drawn per (image, class) with replacement (paper: 3); ``None``: every pixel.
            include_background: treat class 0 as an anchor and negative class like the others.
            reduction: ``"mean"`` (over all terms), ``"sum"`` or ``"none"`` (1D tensor of terms).
            generator: random generator for anchor sampling (one passed to ``forward`` wins); default: global RNG.
            check_inputs: check the values of ``features`` (NaN/Inf) and ``labels`` (range, integral floats,
                one-hot) on every call; each check synchronises a CUDA stream. Shape checks always run. Off,
                labels outside ``[0, num_classes)`` give undefined (memory-safe) results.

        Raises:
            ValueError: for an invalid ``num_classes``, ``temperature``, ``num_samples``, ``matching`` or ``reduction``.
            TypeError: when ``generator`` is not a ``torch.Generator`` or None.
        """
        try:
            reduction_value = LossReduction(reduction).value
        except ValueError:
            raise ValueError(f"reduction must be one of {[r.value for r in LossReduction]}, "
                             f"got {reduction!r}.") from None
        super().__init__(reduction=reduction_value)
        if not _is_int(num_classes) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (background included), got {num_classes!r}.")
        if matching not in _MATCHING:
            raise ValueError(f"matching must be one of {_MATCHING}, got {matching!r}.")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}.")
        if num_samples is not None and (not _is_int(num_samples) or num_samples < 1):
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
        return list(range(int(not self.include_background), self.num_classes))

    def _candidate_ids(self, device: torch.device) -> torch.Tensor:
        """:attr:`candidate_classes` made on ``device`` (no blocking host-to-device copy)."""
        return torch.arange(int(not self.include_background), self.num_classes, device=device)

    # ------------------------------------------------------------------ input handling
    def _class_ids(self, labels: torch.Tensor, batch: int, spatial: tuple[int, ...]) -> torch.Tensor:
        """Validate ``labels`` against the features' batch and spatial size (and, with ``check_inputs``, their
        values); return class ids ``[B, N]`` (long)."""
        shape = (batch, "D", *spatial)
        ndim = len(spatial) + 2
        if not isinstance(labels, torch.Tensor):
            raise ValueError(f"labels must be a tensor, got {type(labels).__name__}.")
        onehot = labels.ndim == ndim and labels.shape[1] == self.num_classes
        if onehot or labels.ndim == ndim - 1:
            ids = labels
        elif labels.ndim == ndim and labels.shape[1] == 1:
            ids = labels[:, 0]
        else:
            raise ValueError(
                f"labels must be [B, 1, *spatial] class ids, [B, {self.num_classes}, *spatial] one-hot or "
                f"[B, *spatial] class ids for features {shape}, got {tuple(labels.shape)}."
            )
        if ids.shape[0] != batch:
            raise ValueError(f"batch size mismatch: features {shape}, labels {tuple(labels.shape)}.")
        if tuple(ids.shape[ids.ndim - len(spatial):]) != spatial:
            raise ValueError(f"spatial shape mismatch: features {shape}, labels {tuple(labels.shape)}.")
        if onehot:
            if self.check_inputs:
                if ids.is_floating_point() and not torch.isfinite(ids).all():
                    raise ValueError("one-hot labels contain NaN or Inf.")
                if not (((ids == 0) | (ids == 1)).all() and (ids.sum(dim=1) == 1).all()):
                    raise ValueError(f"labels with {self.num_classes} channels must be one-hot (values 0/1, "
                                     "exactly one 1 per pixel).")
            return ids.argmax(dim=1).reshape(batch, -1)
        if ids.is_floating_point() and self.check_inputs:
            if not torch.isfinite(ids).all():
                raise ValueError("labels contain NaN or Inf.")
            if (ids != torch.round(ids)).any():
                raise ValueError("floating-point labels must hold integral class ids.")
        if ids.is_complex():
            raise ValueError(f"labels must be real, got dtype {ids.dtype}.")
        ids = ids.reshape(batch, -1).long()
        if self.check_inputs and ids.numel() > 0:
            lo, hi = torch.aminmax(ids)
            if int(lo) < 0 or int(hi) >= self.num_classes:
                raise ValueError(f"labels must lie in [0, {self.num_classes}), got values in [{int(lo)}, {int(hi)}].")
        return ids

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
            pairs = torch.arange(batch, device=device).view(2, batch // 2).T  # rows (p, p + B/2)
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
            raise ValueError(f"sample_anchors needs labels [B, 1, *spatial] or [B, {self.num_classes}, *spatial], "
                             f"got {tuple(getattr(labels, 'shape', ()))}.")
        class_ids = self._class_ids(labels, labels.shape[0], tuple(labels.shape[2:]))
        classes = self._candidate_ids(class_ids.device).to(torch.float32)
        labels_pad, _, per_block = class_masks(class_ids, classes)
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
        The steps of Eq. (3)-(4): anchors ``a``, class means ``m_k(x)``, similarities ``s(a, m_k)`` to the
        means of the anchor image and its partner, the terms and their reduction.

        Args:
            features: ``[B, D, *spatial]`` pixel embeddings (raw projection-head output), 2D or 3D.
            labels: ``[B, 1, *spatial]`` integer class ids in ``[0, num_classes)`` (float tensors holding
                integers are accepted), one-hot ``[B, num_classes, *spatial]`` or ``[B, *spatial]`` class ids.
            pairs: ``"inter"`` only: optional ``[P, 2]`` integer batch indices, both images of a row being
                anchor images. Defaults to ``(p, p + B/2)``.
            generator: random generator for this call; defaults to the constructor's, then the global RNG.

        Returns:
            A scalar for ``"mean"``/``"sum"``, a 1D tensor of terms for ``"none"``; float32, or
            float64 for float64 features.

        Raises:
            ValueError: for malformed or non-finite features, labels that do not match the features or are
                out of range or not one-hot, malformed ``pairs`` or ``pairs`` with ``"intra"``, or an odd
                batch with the default ``"inter"`` pairing.
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
        with torch.autocast(device_type=features.device.type, enabled=False):
            dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
            z = features.to(dtype).reshape(batch, dim, -1)  # z(x)_i: [B, D, N]
            classes = self._candidate_ids(features.device)  # [K]
            # labels padded to whole blocks [B, N_pad], one-hot masks [B, K, N_pad], counts per block [B, K, nb]
            labels_pad, masks, per_block = class_masks(class_ids, classes.to(dtype))
            in_class = per_block.sum(dim=-1).to(dtype)  # |S_k(x)|: [B, K]
            present = in_class > 0  # k in K(x): [B, K]

            pixels, anchor_class, valid = self._draw_anchors(class_ids, labels_pad, classes, per_block, image, generator)
            # an anchor without any negative class (none other in its image, nor in its partner's for "inter")
            # has no contrast; it gives no term rather than diluting the mean
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
        self, class_ids: torch.Tensor, labels_pad: torch.Tensor, classes: torch.Tensor, per_block: torch.Tensor,
        image: torch.Tensor, generator: torch.Generator | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Step 1: the anchors ``a`` of each role, ``num_samples`` per candidate class present in the anchor image.

        Returns:
            ``pixels [R, A]`` flat pixel indices (class-major, then sample; None with ``num_samples=None``, where
            every pixel is an anchor), ``anchor_class [R, A]`` (position in ``classes``, -1 for a non-candidate
            pixel) and ``valid [R, A]`` (the anchor's class is a candidate present in the anchor image).
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
        """Step 2: unit-norm class means ``m_k(x)`` ``[B, K, D]`` over all pixels of each class (0 for an absent
        class) and unit-norm anchor embeddings ``[R, A, D]``, from ``z [B, D, N]`` and ``masks [B, K, N]``.

        Raises:
            ValueError: with ``check_inputs``, when the features hold NaN/Inf or overflow when summed.
        """
        no_pixels = torch.zeros((image.shape[0], 0), dtype=torch.long, device=z.device)
        sums, anchor_z = ClassSumsAndAnchorFeatures.apply(z, masks, image, no_pixels if pixels is None else pixels)
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
        """Step 3: ``s(a, m_k)`` ``[R, A, K]`` of anchors ``[R, A, D]`` with the means ``[R, K, D]`` of one image
        per role: ``-inf`` for a class absent from it (``present [R, K]``), 0 in the rows of anchors that give no
        term (``valid [R, A]``), so that ``logsumexp`` and its gradient stay finite."""
        similarity = cosine_logits(anchors, means) / self.temperature
        similarity = similarity.masked_fill(~present[:, None, :], float("-inf"))
        return torch.where(valid[..., None], similarity, torch.zeros_like(similarity))

    @staticmethod
    def _intra_terms(
        own: torch.Tensor, anchor_class: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4, ``"intra"``: ``-log(e^{s(a, m_c(x))} / sum_{k in K(x)} e^{s(a, m_k(x))})``; terms and exists
        ``[R, A]``."""
        positive = own.gather(-1, anchor_class.clamp_min(0)[..., None])[..., 0]
        return torch.logsumexp(own, dim=-1) - positive, valid

    @staticmethod
    def _inter_terms(
        own: torch.Tensor, other: torch.Tensor, anchor_class: torch.Tensor, valid: torch.Tensor,
        partner_present: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 4, ``"inter"``: ``-log(e^{s(a, m_c(x))} / den(a))`` and, when ``c`` is in ``x'``,
        ``-log(e^{s(a, m_c(x'))} / den(a))``, from the similarities ``own``/``other`` ``[R, A, K]`` with the
        anchor image's and the partner's means; terms and exists ``[R, A, 2]``."""
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
