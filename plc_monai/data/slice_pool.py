"""All 2D slices of a set of preprocessed volumes, stacked into device tensors for in-memory training.

The trainer gathers batches from them by index instead of running a DataLoader (docs/architecture.md says why).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

__all__ = ["SlicePool", "build_slice_pool"]


@dataclass
class SlicePool:
    """Slices of ``V`` volumes.

    Attributes:
        images: ``[N, C, H, W]`` float32 slices.
        labels: ``[N, H, W]`` uint8 class ids, or ``None`` for unlabeled volumes.
        volume_index: ``[N]`` long, the volume each slice comes from.
        slice_index: ``[N]`` long, the slice's position along the volume's last axis.
        volume_ids: ``V`` volume ids (datalist ``id``).
        affines: ``V`` 4x4 affines of the preprocessed grids.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    volume_index: torch.Tensor
    slice_index: torch.Tensor
    volume_ids: list[str] = field(default_factory=list)
    affines: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def spatial_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.images.shape[2:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> SlicePool:
        """A copy of the pool on ``device``."""
        labels = None if self.labels is None else self.labels.to(device)
        tensors = {k: getattr(self, k).to(device) for k in ("images", "volume_index", "slice_index")}
        return replace(self, **tensors, labels=labels, volume_ids=list(self.volume_ids), affines=list(self.affines))


def _as_volume(value: Any, key: str, item_id: str) -> torch.Tensor:
    tensor = torch.as_tensor(value.as_tensor() if hasattr(value, "as_tensor") else value)
    if tensor.dim() != 4:
        raise ValueError(
            f"volume {item_id!r}: preprocessed {key!r} must be [C, H, W, S] (slices on the last axis), "
            f"got shape {list(tensor.shape)}."
        )
    return tensor


def build_slice_pool(
    dataset: Iterable[Mapping[str, Any]],
    device: torch.device | str = "cpu",
    image_key: str = "image",
    label_key: str | None = "label",
) -> SlicePool:
    """Stack the slices of every preprocessed volume of ``dataset`` into one :class:`SlicePool`.

    Args:
        dataset: items with ``image`` ``[C, H, W, S]`` (and ``label`` ``[1, H, W, S]``) on a common
            in-plane grid, e.g. a MONAI ``PersistentDataset`` with the bundle's preprocessing.
        device: where the stacked tensors go (the training device).
        image_key: key of the image.
        label_key: key of the label; ``None`` for unlabeled volumes (labels in the items are ignored).

    Returns:
        The pool (empty, with ``labels`` ``[0, 0, 0]``, for an empty dataset).

    Raises:
        ValueError: volumes that differ in channel count or in-plane size, or a missing label.
    """
    images, labels, vol_idx, sl_idx, ids, affines = [], [], [], [], [], []
    for v, item in enumerate(dataset):
        item_id = str(item.get("id", v))
        image = _as_volume(item[image_key], image_key, item_id)
        if images and image.shape[:3] != images[0].shape[1:]:
            raise ValueError(
                f"volume {item_id!r} has channels/in-plane size {list(image.shape[:3])}, the first volume "
                f"{ids[0]!r} has {list(images[0].shape[1:])}; preprocess all volumes to one crop size."
            )
        num_slices = image.shape[-1]
        images.append(image.permute(3, 0, 1, 2).float())  # [S, C, H, W]
        if label_key is not None:
            if label_key not in item:
                raise ValueError(f"volume {item_id!r} has no {label_key!r}; a labeled pool needs labels.")
            label = _as_volume(item[label_key], label_key, item_id)
            if label.shape[1:] != image.shape[1:]:
                shapes = f"label shape {list(label.shape)} does not match image shape {list(image.shape)}"
                raise ValueError(f"volume {item_id!r}: {shapes}.")
            labels.append(label[0].permute(2, 0, 1).round().to(torch.uint8))  # [S, H, W]
        vol_idx.append(torch.full((num_slices,), v, dtype=torch.long))
        sl_idx.append(torch.arange(num_slices))
        ids.append(item_id)
        meta_affine = getattr(item[image_key], "affine", None)
        affines.append(np.asarray(meta_affine if meta_affine is not None else np.eye(4), dtype=np.float64))
    if not images:  # an empty pool
        images, labels = [torch.zeros(0, 1, 0, 0)], [torch.zeros(0, 0, 0, dtype=torch.uint8)]
        vol_idx = sl_idx = [torch.zeros(0, dtype=torch.long)]
    return SlicePool(
        images=torch.cat(images).contiguous().to(device),
        labels=torch.cat(labels).to(device) if label_key is not None else None,
        volume_index=torch.cat(vol_idx).to(device),
        slice_index=torch.cat(sl_idx).to(device),
        volume_ids=ids,
        affines=affines,
    )
