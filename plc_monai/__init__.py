"""plc_monai: local pixel-contrastive loss with pseudo-label self-training, as a MONAI plug-in.

The three components users reuse in their own MONAI pipelines:

- :class:`plc_monai.networks.ContrastiveHeadUNet`: a 2D/3D UNet with a segmentation head and a
  pixel-contrastive projection head.
- :class:`plc_monai.losses.PixelContrastiveLoss`: the pixel-level contrastive loss of
  Chaitanya et al. (Eq. 3-4), intra- and inter-image matching.
- :class:`plc_monai.handlers.PseudoLabelRefresh`: an Ignite handler that re-estimates the
  pseudo-labels of the unlabeled set every ``interval`` iterations.

The names are imported lazily so that ``import plc_monai`` stays cheap and importing the loss
does not pull in Ignite.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ContrastiveHeadUNet": "plc_monai.networks",
    "PixelContrastiveLoss": "plc_monai.losses",
    "PseudoLabelRefresh": "plc_monai.handlers",
    "PseudoLabelStore": "plc_monai.pseudo_labels",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'plc_monai' has no attribute {name!r}")
