"""``python -m plc_monai.experiments.run_worker <run_dir>/run.json [--threads N]``: one run in this process.

The command of a local slot (:func:`plc_monai.experiments.launch.run_local`); see
:func:`plc_monai.experiments.worker.main`. A module of its own because the package imports
:mod:`.worker`, and ``python -m`` must not run a module that is already imported.
"""

import sys

from plc_monai.experiments.worker import main

if __name__ == "__main__":
    sys.exit(main())
