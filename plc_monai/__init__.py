"""plc_monai: local pixel-contrastive loss with pseudo-label self-training, as a MONAI plug-in.

The reusable components below are imported lazily: ``import plc_monai`` stays cheap, the loss does not pull in Ignite.
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
