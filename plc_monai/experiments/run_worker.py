"""``python -m plc_monai.experiments.run_worker <run_dir>/run.json``: :func:`plc_monai.experiments.worker.main`.

A module of its own because ``python -m`` must not run :mod:`.worker`, which the package imports.
"""

import sys

from plc_monai.experiments.worker import main

if __name__ == "__main__":
    sys.exit(main())
