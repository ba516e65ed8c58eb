"""SYNTHETIC "phantom" datasets written in the raw layouts of ACDC, MSD Task05 prostate and MM-WHS.

The real datasets need registration, so the demo, the tests and the bundles' smoke runs use these
phantoms instead. Every file written here is synthetic: no voxel comes from a patient. Each phantom
copies its dataset's *download layout* (folder names, file names, ``Info.cfg``, MSD
``dataset.json``, raw label values, dtypes, 4D multi-channel images), so the real readers and
preprocessing transforms are what the phantoms exercise.

Layouts (``<out>`` is the folder passed to :func:`write_phantom_dataset`):

- ``acdc``: ``<out>/training/patientNNN/patientNNN_frame01.nii.gz`` (end-diastole),
  ``patientNNN_frameMM.nii.gz`` (end-systole), a ``_gt.nii.gz`` label file for both frames and
  ``Info.cfg``. Labels 0 background, 1 RV, 2 myocardium, 3 LV; images ``int16``, labels ``uint8``.
  The ``patientNNN_4d.nii.gz`` cine files of the real download are not written.
- ``prostate``: ``<out>/imagesTr/prostate_NN.nii.gz`` (4D ``[X, Y, Z, 2]``: channel 0 T2,
  channel 1 ADC in 1e-6 mm^2/s), ``<out>/labelsTr/prostate_NN.nii.gz`` (0 background, 1 PZ,
  2 TZ) and ``<out>/dataset.json`` in the Medical Segmentation Decathlon format.
- ``mmwhs``: ``<out>/mr_train_10NN_image.nii.gz`` and ``<out>/mr_train_10NN_label.nii.gz`` with
  the raw label values 205 (Myo), 420 (LA), 500 (LV), 550 (RA), 600 (RV), 820 (AA), 850 (PA).

Anatomy is built from analytic shapes on ``meshgrid``-style coordinate arrays in millimetres
(ellipses in polar form for the ACDC short axis, ellipsoids, shells and tubes in 3D), so it changes
smoothly from slice to slice (ACDC: large basal slices, small apical ones without RV) and from
subject to subject (sizes, positions, eccentricity, pathology group, intensities, spacing and the
stored orientation). The images get texture, through-plane partial volume (thick-slice datasets),
in-plane blur, a smooth multiplicative bias field (something for N4 to remove) and Rician noise.
Myocardium and the surrounding non-cardiac tissue deliberately share intensities, so a model must
use shape and context.

Modules: :mod:`.writer` (:func:`write_phantom_dataset`, :func:`phantom_files`, the marker file),
:mod:`.geometry` and :mod:`.imaging` (shared by the anatomies), :mod:`.acdc`, :mod:`.prostate` and
:mod:`.mmwhs` (one subject of each dataset). ``python -m plc_monai phantom`` is :func:`plc_monai.cli.phantom`.

Everything is deterministic given ``seed`` (subject ``i`` depends only on the dataset, the seed and
``i``), and different seeds give different data.
"""

from plc_monai.data.phantom.writer import MARKER_NAME, phantom_files, write_phantom_dataset

__all__ = ["MARKER_NAME", "phantom_files", "write_phantom_dataset"]
