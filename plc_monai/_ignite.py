"""Ignite's ``Events`` and ``Engine`` in one place, optional at import time as in MONAI (first use says if missing)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai.utils import optional_import

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["Events", "Engine"]
