"""Optional native CPU kernels of the pixel-contrastive loss (built on first use; see :mod:`.loader`)."""

from plc_monai.native.class_ops import MAX_CLASSES, block_counts, class_fill, class_sums
from plc_monai.native.loader import class_kernels_status, load_class_kernels, reset_class_kernels

__all__ = [
    "MAX_CLASSES",
    "block_counts",
    "class_fill",
    "class_sums",
    "class_kernels_status",
    "load_class_kernels",
    "reset_class_kernels",
]
