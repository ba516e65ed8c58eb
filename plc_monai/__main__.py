"""Command line: ``python -m plc_monai <command> --help``.

Commands:
    phantom     write a SYNTHETIC dataset in the raw layout of acdc, prostate or mmwhs
    check_data  read and validate a dataset folder, print what was found
    prepare     preprocess a dataset folder into the on-disk cache (N4, normalisation, resampling)
    demo        phantom ACDC data, a short CPU training through the ACDC bundle, a Dice table
    experiment  the paper's comparisons: every (method, combo) trained, evaluated, tabulated with figures
"""

from __future__ import annotations

import fire

from plc_monai import cli
from plc_monai.data.phantom import phantom
from plc_monai.experiments.harness import experiment


def main() -> None:
    fire.Fire(
        {
            "phantom": phantom,
            "check_data": cli.check_data,
            "prepare": cli.prepare,
            "demo": cli.demo,
            "experiment": experiment,
        },
        name="plc_monai",
    )


if __name__ == "__main__":
    main()
