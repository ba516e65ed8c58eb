"""The store of pseudo-labels of the unlabeled set: one tensor, versioned, saved in checkpoints, overwritten
in place by :class:`plc_monai.handlers.PseudoLabelRefresh` and indexed by every consumer when it builds a batch
(in shared memory on the CPU, so DataLoader workers forked earlier read the current labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["PseudoLabelStore", "PseudoLabelDataset"]


class PseudoLabelStore:
    """Pseudo-labels ``[N, *spatial]`` (uint8 class ids) of ``N`` unlabeled slices.

    Args:
        num_items: number of unlabeled slices (or volumes, for 3D use); 0 for a run without unlabeled data.
        spatial_size: spatial shape of one item, e.g. ``(192, 192)``.
        device: where the labels live; keep it where the training images live.
        volume_index: optional ``[N]`` long tensor mapping each slice to its volume, used by the
            volume-level quality filter and to write pseudo-labels per volume.

    Attributes:
        labels: ``[N, *spatial]`` uint8, all zeros (background) until the first refresh.
        keep: ``[N]`` bool, slices admitted for training (the quality filter clears whole volumes).
        version: number of refreshes applied so far (0 = never refreshed).
    """

    def __init__(
        self,
        num_items: int,
        spatial_size: Sequence[int],
        device: torch.device | str = "cpu",
        volume_index: torch.Tensor | None = None,
    ) -> None:
        if num_items < 0:
            raise ValueError(f"num_items must be >= 0, got {num_items}.")
        device = torch.device(device)
        self.labels = torch.zeros((num_items, *spatial_size), dtype=torch.uint8, device=device)
        self.keep = torch.ones(num_items, dtype=torch.bool, device=device)
        if device.type == "cpu":
            # shared memory: DataLoader workers forked earlier see in-place updates
            self.labels.share_memory_()
            self.keep.share_memory_()
        if volume_index is None:
            volume_index = torch.arange(num_items)
        volume_index = torch.as_tensor(volume_index, dtype=torch.long)
        if volume_index.shape != (num_items,):
            raise ValueError(f"volume_index must have shape [{num_items}], got {list(volume_index.shape)}.")
        self.volume_index = volume_index.to(device)
        self.version = 0

    def __len__(self) -> int:
        return self.labels.shape[0]

    def update(self, new_labels: torch.Tensor, keep: torch.Tensor | None = None) -> float:
        """Overwrite the labels in place and return the fraction of pixels whose label changed.

        Args:
            new_labels: ``[N, *spatial]`` integer class ids.
            keep: optional ``[N]`` bool admission mask (quality filter); all True when omitted.

        Returns:
            Fraction of pixels that changed (1.0 for the first refresh).
        """
        if new_labels.shape != self.labels.shape:
            raise ValueError(
                f"pseudo-label update has shape {list(new_labels.shape)}, the store holds {list(self.labels.shape)}."
            )
        new_labels = new_labels.to(device=self.labels.device, dtype=torch.uint8)
        changed = 1.0 if self.version == 0 else float((new_labels != self.labels).float().mean())
        self.labels.copy_(new_labels)
        self.keep.copy_(torch.ones_like(self.keep) if keep is None else keep.to(self.labels.device, torch.bool))
        self.version += 1
        return changed

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.labels.cpu(), "keep": self.keep.cpu(), "version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        labels = torch.as_tensor(state["labels"])
        if labels.shape != self.labels.shape:
            raise ValueError(
                f"checkpoint pseudo-labels have shape {list(labels.shape)}, this run expects {list(self.labels.shape)}; "
                "was the checkpoint written for another dataset, split or crop size?"
            )
        self.labels.copy_(labels)
        self.keep.copy_(torch.as_tensor(state["keep"]))
        self.version = int(state["version"])


class PseudoLabelDataset(Dataset):
    """A map-style dataset of ``{"image", "label"}`` whose label is read from a :class:`PseudoLabelStore` when
    the item is fetched, so a refresh is visible to the next batch even in DataLoader workers.

    Args:
        images: ``[N, C, *spatial]`` unlabeled images (CPU).
        store: the store holding ``[N, *spatial]`` labels (CPU, shared memory).
    """

    def __init__(self, images: torch.Tensor, store: PseudoLabelStore) -> None:
        if images.shape[0] != len(store):
            raise ValueError(f"{images.shape[0]} images but the store holds {len(store)} pseudo-labels.")
        self.images = images
        self.store = store

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "label": self.store.labels[index].long().unsqueeze(0)}
