"""The local pixel-contrastive loss of Chaitanya et al. (Eq. 3-4), as a MONAI loss."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss


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


class _ClassSumsAndAnchors(torch.autograd.Function):
    """Per-class feature sums and anchor features from one ``[B, D, N]`` tensor, with a single-buffer backward.

    Forward: ``sums[b, :, k] = sum_{n: class(b, n) = k-th candidate} feats[b, :, n]`` (a batched GEMM
    with the ``[B, K, N]`` candidate-class masks ``onehot``) and
    ``anchors[r, a, :] = feats[src[r], :, pixels[r, a]]``.

    Backward writes both gradients into one ``[B, D, N]`` buffer (the class-sum gradient broadcast
    to the pixels of each class, then an in-place scatter-add of the anchor gradient). Plain
    autograd would allocate two full-size buffers and add them, which costs more than the whole
    loss on a CPU.
    """

    @staticmethod
    def forward(ctx, feats, onehot, src, pixels):  # type: ignore[override]
        # [B, K, N] @ [B, N, D] (a transposed view) is faster on CPU than [B, D, N] @ [B, N, K]
        sums = torch.bmm(onehot, feats.transpose(1, 2)).transpose(1, 2)  # [B, D, K]
        anchors = feats[src[:, None], :, pixels]  # [R, A, D]
        ctx.save_for_backward(onehot, src, pixels)
        return sums, anchors

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_sums, grad_anchors):  # type: ignore[override]
        onehot, src, pixels = ctx.saved_tensors
        grad = torch.bmm(grad_sums.contiguous(), onehot)  # [B, D, N]
        grad.transpose(1, 2).index_put_((src[:, None].expand_as(pixels), pixels), grad_anchors, accumulate=True)
        return grad, None, None, None


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

    #: pixels per block in the two-step anchor search of :meth:`_draw`
    _BLOCK = 256

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
            check_inputs: check the values of ``features`` (NaN/Inf) and ``labels`` (range) on every
                call. Each check reads a device value on the host, i.e. synchronises a CUDA stream;
                a training loop that already feeds valid labels may turn them off on the GPU. Shape
                checks always run (they cost nothing). With the checks off, labels outside
                ``[0, num_classes)`` give undefined (but memory-safe) results.

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
        if ids.is_floating_point():
            if not torch.isfinite(ids).all():
                raise ValueError("labels contain NaN or Inf.")
            if (ids != torch.round(ids)).any():
                raise ValueError("floating-point labels must hold integral class ids.")
        if ids.is_complex():
            raise ValueError(f"labels must be real, got dtype {ids.dtype}.")
        return ids.reshape(batch, -1).long()

    def _padded_labels(self, ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        """Class ids as floats, padded with -1 to a whole number of blocks of pixels.

        Args:
            ids: ``[B, N]`` long class ids.
            dtype: float dtype of the result (that of the features' arithmetic).

        Returns:
            ``labels [B, N_pad]`` in ``dtype`` (``N_pad`` = ``N`` rounded up to a multiple of the block
            size; ``labels[:, :N]`` are the ids, ``-1`` matches no class) and the block size (at most
            :attr:`_BLOCK`).

        Raises:
            ValueError: with ``check_inputs``, when a label lies outside ``[0, num_classes)``.
        """
        if self.check_inputs and ids.numel() > 0:
            lo, hi = torch.aminmax(ids)
            if int(lo) < 0 or int(hi) >= self.num_classes:
                raise ValueError(f"labels must lie in [0, {self.num_classes}), got values in [{int(lo)}, {int(hi)}].")
        batch, n_pixels = ids.shape
        block = max(1, min(self._BLOCK, n_pixels))
        n_pad = -(-n_pixels // block) * block
        if n_pad == n_pixels:
            return ids.to(dtype), block
        labels = torch.full((batch, n_pad), -1, dtype=dtype, device=ids.device)
        labels[:, :n_pixels] = ids
        return labels, block

    def _class_onehot(
        self, labels: torch.Tensor, cand: torch.Tensor, block: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One-hot masks of the candidate classes and their pixel counts per block of pixels (PyTorch path).

        Args:
            labels: ``[B, N_pad]`` float class ids from :meth:`_padded_labels`.
            cand: ``[K]`` candidate class ids in the dtype of ``labels``.
            block: pixels per block (``N_pad`` is a multiple).

        Returns:
            ``onehot [B, K, N_pad]`` in the dtype of ``labels`` (zero in the padding) and
            ``block_counts [B, K, N_pad / block]`` long.
        """
        batch, n_pad = labels.shape
        # compared as floats (class ids are small integers, exact in any float dtype), the comparison writes
        # the float mask directly: comparing int64 ids writes a bool mask and converts it, 4-7x slower on CPU
        onehot = torch.empty((batch, cand.shape[0], n_pad), dtype=labels.dtype, device=labels.device)
        torch.eq(labels[:, None, :], cand[None, :, None], out=onehot)
        # float sums of at most _BLOCK ones are exact
        counts = onehot.view(batch, cand.shape[0], n_pad // block, block).sum(dim=-1).long()
        return onehot, counts

    def _rows(self, batch: int, pairs: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Anchor roles ``[R, 2]``: (anchor image, partner image or -1); see :class:`AnchorSample`."""
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

    # ------------------------------------------------------------------ sampling
    def _draw(
        self, labels: torch.Tensor, cand: torch.Tensor, per_block: torch.Tensor, n_pixels: int,
        rows: torch.Tensor, generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num_samples`` pixels per (row, candidate class), uniformly with replacement.

        Args:
            labels: ``[B, N_pad]`` float class ids from :meth:`_padded_labels`.
            cand: ``[K]`` candidate class ids in the dtype of ``labels``.
            per_block: ``[B, K, nb]`` pixels per class and block of ``N_pad / nb`` pixels.
            n_pixels: ``N``, the number of real (unpadded) pixels.
            rows: ``[R, 2]`` anchor roles.
            generator: random generator or None for the global RNG.

        Returns:
            pixels ``[R, K, S]`` (flat indices) and valid ``[R, K]``.

        The rank of each draw within its class is ``floor(u * count)`` with ``u ~ U[0, 1)`` (one
        ``torch.rand`` call of shape ``[R, K, S]``), and the drawn pixel is the one of that rank in
        row-major order. It is located in two steps that never scan the whole image: the block that
        holds it (``searchsorted`` over cumulative block counts, ``[R, K, nb]``), then the position
        inside that block (a running count over the ``_BLOCK`` pixels of that block only). A single
        running count over all ``B * K * N`` mask values was the most expensive part of the loss on
        a CPU.
        """
        src = rows[:, 0]
        n_rows, n_cand = src.shape[0], per_block.shape[1]
        n_blocks, block = per_block.shape[2], labels.shape[1] // per_block.shape[2]
        src_blocks = per_block[src]  # [R, K, nb]
        cum_blocks = src_blocks.cumsum(dim=-1)  # inclusive
        count = cum_blocks[..., -1]  # [R, K]
        valid = count > 0
        n_draw = int(self.num_samples)  # type: ignore[arg-type]
        gen_device = generator.device if generator is not None else labels.device
        u = torch.rand((n_rows, n_cand, n_draw), generator=generator, device=gen_device, dtype=torch.float64)
        u = u.to(labels.device)
        rank = torch.minimum((u * count[..., None]).long(), (count[..., None] - 1).clamp_min(0))  # [R, K, S]
        # the block holding the (rank+1)-th pixel: the first whose cumulative count exceeds rank
        blk = torch.searchsorted(cum_blocks, rank, right=True).clamp_max(n_blocks - 1)
        within = rank - (cum_blocks.gather(-1, blk) - src_blocks.gather(-1, blk))  # rank inside the block
        start = (src * labels.shape[1])[:, None, None] + blk * block  # [R, K, S]
        window = labels.reshape(-1)[start[..., None] + torch.arange(block, device=labels.device)]  # [R, K, S, L]
        match = window == cand[None, :, None, None]
        # the index of the (within+1)-th match is the number of positions whose running count is still <= within
        offset = (match.cumsum(dim=-1) <= within[..., None]).sum(dim=-1)
        pixels = (blk * block + offset).clamp(0, n_pixels - 1)
        return pixels, valid

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
        ids = self._class_ids(labels, labels.shape[0], tuple(labels.shape[2:]))
        labels_f, block = self._padded_labels(ids, torch.float32)
        cand = self._candidate_ids(ids.device).to(torch.float32)
        counts = self._class_onehot(labels_f, cand, block)[1]
        rows = self._rows(ids.shape[0], pairs, ids.device)
        pixels, valid = self._draw(labels_f, cand, counts, ids.shape[1], rows,
                                   generator if generator is not None else self.generator)
        return AnchorSample(rows, pixels, valid)

    # ------------------------------------------------------------------ loss
    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        pairs: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """
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
        ids = self._class_ids(labels, features.shape[0], tuple(features.shape[2:]))
        rows = self._rows(features.shape[0], pairs, features.device)
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self._loss(features, ids, rows, generator if generator is not None else self.generator)

    def _loss(
        self, features: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        compute_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        batch, dim = features.shape[:2]
        feats = features.to(compute_dtype).reshape(batch, dim, -1)  # [B, D, N]
        n_pixels = feats.shape[2]
        labels_pad, block = self._padded_labels(ids, compute_dtype)  # [B, N_pad]
        cand = self._candidate_ids(features.device)
        cand_f = cand.to(compute_dtype)
        n_cand = cand.shape[0]
        onehot_pad, per_block = self._class_onehot(labels_pad, cand_f, block)
        onehot = onehot_pad[..., :n_pixels]  # [B, K, N]
        counts = per_block.sum(dim=-1).to(compute_dtype)  # [B, K]
        src, partner = rows[:, 0], rows[:, 1]
        if self.num_samples is None:
            pixels = torch.zeros((rows.shape[0], 0), dtype=torch.long, device=features.device)
        else:
            pixels3, present_src = self._draw(labels_pad, cand_f, per_block, n_pixels, rows, generator)
            n_draw = pixels3.shape[-1]
            pixels = pixels3.reshape(rows.shape[0], -1)  # [R, K*S]
        # sums of the candidate classes only: background is never a mean unless it is a candidate
        sums, anchor_feats = _ClassSumsAndAnchors.apply(
            feats, onehot, src, pixels
        )  # [B, D, K], [R, A, D]
        if self.check_inputs and not torch.isfinite(sums).all():
            # any NaN/Inf pixel makes every class sum of its image non-finite; this check is cheap
            if not torch.isfinite(features).all():
                raise ValueError("features contain NaN or Inf.")
            raise ValueError(f"features overflow {compute_dtype} when summed per class.")
        means = sums / counts.clamp_min(1)[:, None, :]
        means_n = F.normalize(means.transpose(1, 2), dim=-1)  # [B, K, D]
        present = counts > 0  # [B, K]

        if self.num_samples is None:
            # every pixel is an anchor: [R, N, D]; class position in the candidate list, -1 if not a candidate
            anchors = F.normalize(feats[src].transpose(1, 2), dim=-1)
            lut = torch.full((self.num_classes,), -1, dtype=torch.long, device=features.device)
            lut[cand] = torch.arange(n_cand, device=features.device)
            cls = lut[ids[src]]  # [R, N]
            valid = cls >= 0
        else:
            anchors = F.normalize(anchor_feats, dim=-1)  # [R, K*S, D]
            cls = torch.arange(n_cand, device=features.device).repeat_interleave(n_draw).expand_as(pixels)
            valid = present_src.repeat_interleave(n_draw, dim=1)
        cls_index = cls.clamp_min(0)[..., None]

        def _logits(image: torch.Tensor) -> torch.Tensor:
            targets = means_n[image]  # [R, K, D]
            if anchors.shape[1] * n_cand <= 4096:
                # a handful of sampled anchors: broadcasting beats a batched GEMM launch on CPU by ~100x
                sim = (anchors[:, :, None, :] * targets[:, None, :, :]).sum(-1)
            else:
                sim = torch.bmm(anchors, targets.transpose(1, 2))
            sim = sim / self.temperature  # [R, A, K]
            sim = sim.masked_fill(~present[image][:, None, :], float("-inf"))
            # rows of invalid anchors may be all -inf; zero them so logsumexp and its gradient stay finite
            return torch.where(valid[..., None], sim, torch.zeros_like(sim))

        self_logits = _logits(src)
        self_pos = self_logits.gather(-1, cls_index)[..., 0]
        # an anchor with no negative class (no other candidate class present in its image, nor in its
        # partner for "inter") has no contrast: its intra term is exactly 0 and its inter terms only
        # balance two means of its own class. Such anchors stay out of the mean instead of diluting it.
        seen = present[src] if self.matching == "intra" else present[src] | present[partner]  # [R, K]
        valid = valid & (seen.sum(dim=1, keepdim=True) >= 2)
        if self.matching == "intra":
            terms = torch.logsumexp(self_logits, dim=-1) - self_pos
            term_valid = valid
        else:
            partner_logits = _logits(partner)
            log_den = torch.logsumexp(torch.cat([self_logits, partner_logits], dim=-1), dim=-1)
            partner_ok = valid & present[partner].gather(1, cls.clamp_min(0))
            partner_pos = torch.where(partner_ok, partner_logits.gather(-1, cls_index)[..., 0], 0.0)
            terms = torch.stack([log_den - self_pos, log_den - partner_pos], dim=-1)  # [R, A, 2]
            term_valid = torch.stack([valid, partner_ok], dim=-1)

        if self.reduction == LossReduction.NONE.value:
            return terms[term_valid]
        total = torch.where(term_valid, terms, torch.zeros_like(terms)).sum()
        if self.reduction == LossReduction.SUM.value:
            return total
        return total / term_valid.sum().clamp_min(1)
