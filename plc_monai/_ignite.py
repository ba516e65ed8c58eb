"""Ignite's ``Events`` and ``Engine`` for the package's engines and handlers, imported in one place.

As in MONAI, Ignite is optional at import time (``monai.utils.optional_import``): importing
``plc_monai`` works without it and the first use of ``Events``/``Engine`` says that it is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai.utils import optional_import

Events, _ = optional_import("ignite.engine", name="Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", name="Engine")

__all__ = ["Events", "Engine"]
