"""SYNTHETIC "phantom" datasets in the raw download layouts of ACDC, MSD Task05 prostate and MM-WHS.

No voxel comes from a patient. Each phantom copies its dataset's layout (file names, ``Info.cfg``,
MSD ``dataset.json``, raw label values, dtypes, the prostate's 4D T2 + ADC image; not ACDC's
``_4d.nii.gz`` cine files), so the real readers and transforms are what the demo, the tests and the
bundles' smoke runs exercise. How the anatomy and the images are simulated: docs/data.md.

Subject ``i`` depends only on the dataset, ``seed`` and ``i``; different seeds give different data.
``python -m plc_monai phantom`` is :func:`plc_monai.cli.phantom`.
"""

from plc_monai.data.phantom.writer import MARKER_NAME, phantom_files, write_phantom_dataset

__all__ = ["MARKER_NAME", "phantom_files", "write_phantom_dataset"]
