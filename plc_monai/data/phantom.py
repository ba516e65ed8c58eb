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

Everything is deterministic given ``seed`` (subject ``i`` depends only on the dataset, the seed and
``i``), and different seeds give different data.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from plc_monai.atomic_files import atomic_write_bytes
from scipy.ndimage import distance_transform_edt, gaussian_filter
from scipy.spatial.transform import Rotation

from plc_monai.data.specs import get_spec

__all__ = ["MARKER_NAME", "phantom", "phantom_files", "write_phantom_dataset"]

MARKER_NAME = "PHANTOM_README.txt"
"""Name of the marker file written at the root of every phantom dataset."""

_DATASET_KEYS = {"acdc": 1, "prostate": 2, "mmwhs": 3}
_MAX_SUBJECTS = {"acdc": 999, "prostate": 100, "mmwhs": 99}
_MIN_IMAGE_SIZE = 32
_MIN_SLICES = 4
_ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
_GZIP_LEVEL = 1


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def write_phantom_dataset(
    dataset: str,
    out_dir: str | os.PathLike,
    num_subjects: int = 12,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    num_slices: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a SYNTHETIC dataset in exactly the official raw layout of ``dataset``.

    The default volume sizes follow the real data, scaled down for a CPU demo: ACDC about 8-12
    slices of 160-224 pixels per side, prostate 16-22 slices of about 256x256 at about 0.5 mm,
    MM-WHS 52-64 slices of about 128x128 at 1.5-2 mm. ``image_size`` and ``num_slices`` override
    the array size for every subject (for tiny test sets); the field of view in millimetres is kept
    and the voxel spacing changes instead, so the anatomy still fits.

    Writing an existing phantom of the same dataset again replaces it (files of the old phantom that
    the new one does not have are removed). A marker file ``PHANTOM_README.txt`` at the root says
    that the data is synthetic and lists the files.

    Args:
        dataset: ``"acdc"``, ``"prostate"`` or ``"mmwhs"`` (case-insensitive).
        out_dir: folder to write into; created with its parents when missing.
        num_subjects: number of subjects (ACDC: up to 999, prostate: up to 100, MM-WHS: up to 99).
        seed: non-negative seed; the same seed gives identical arrays.
        image_size: in-plane array size ``(X, Y)`` of every subject, each at least 32. ``None``
            draws a size per subject.
        num_slices: number of slices ``Z`` of every subject, at least 4. ``None`` draws a number per
            subject.
        overwrite: allow writing into a non-empty folder that is not a phantom of the same dataset.
            Files already there are left alone unless the phantom writes a file of the same name.

    Returns:
        The output folder (``Path``).

    Raises:
        ValueError: unknown dataset, ``num_subjects``, ``seed``, ``image_size`` or ``num_slices``
            out of range, or ``out_dir`` is an existing file.
        FileExistsError: ``out_dir`` is non-empty and not a phantom of the same dataset, and
            ``overwrite`` is false.
    """
    name = get_spec(dataset).name
    num_subjects = _check_int("num_subjects", num_subjects, 1, _MAX_SUBJECTS[name])
    seed = _check_int("seed", seed, 0, None)
    if image_size is not None:
        if not isinstance(image_size, Sequence) or isinstance(image_size, str) or len(image_size) != 2:
            raise ValueError(f"image_size must be a pair (X, Y) of integers, got {image_size!r}")
        image_size = (
            _check_int("image_size[0]", image_size[0], _MIN_IMAGE_SIZE, None),
            _check_int("image_size[1]", image_size[1], _MIN_IMAGE_SIZE, None),
        )
    if num_slices is not None:
        num_slices = _check_int("num_slices", num_slices, _MIN_SLICES, None)

    out = Path(out_dir)
    old_files = _prepare_out_dir(out, name, overwrite)
    new_files = phantom_files(name, num_subjects, seed)
    settings = {
        "dataset": name,
        "seed": seed,
        "num_subjects": num_subjects,
        "image_size": "default" if image_size is None else f"{image_size[0]}x{image_size[1]}",
        "num_slices": "default" if num_slices is None else str(num_slices),
    }
    # The marker goes first (listing old and new files), so an interrupted run can be repeated
    # without overwrite=True and still cleans up; it is rewritten with the final list at the end.
    _write_marker(out, settings, sorted(set(old_files) | set(new_files)))

    subject = {"acdc": _acdc_subject, "prostate": _prostate_subject, "mmwhs": _mmwhs_subject}[name]
    records = []
    for index in range(num_subjects):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _DATASET_KEYS[name], index]))
        files, record = subject(rng, index, image_size, num_slices, seed)
        for rel_path, content in files.items():
            if isinstance(content, nib.Nifti1Image):
                content = _nifti_bytes(content)
            _atomic_write(out / rel_path, content)
        records.append(record)
    if name == "prostate":
        _atomic_write(out / "dataset.json", _msd_dataset_json(records, settings))

    for rel_path in sorted(set(old_files) - set(new_files)):
        _remove_stale(out, rel_path)
    _write_marker(out, settings, new_files)
    return out


def phantom(
    dataset: str = "acdc",
    out: str = "phantom_acdc",
    num_subjects: int = 12,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    num_slices: int | None = None,
    overwrite: bool = False,
) -> None:
    """Command-line entry: write a SYNTHETIC phantom dataset and print its folder.

    Thin wrapper of :func:`write_phantom_dataset` for ``python -m plc_monai phantom``; it prints the
    output folder instead of returning it, so ``fire`` prints it once.

    Args:
        dataset: ``"acdc"``, ``"prostate"`` or ``"mmwhs"``.
        out: output folder.
        num_subjects: number of subjects.
        seed: random seed.
        image_size: optional in-plane size ``(X, Y)`` for every subject.
        num_slices: optional number of slices for every subject.
        overwrite: allow writing into a non-empty folder that is not a phantom of this dataset.

    Raises:
        ValueError: see :func:`write_phantom_dataset`.
        FileExistsError: see :func:`write_phantom_dataset`.
    """
    folder = write_phantom_dataset(
        dataset,
        out,
        num_subjects=num_subjects,
        seed=seed,
        image_size=None if image_size is None else tuple(image_size),
        num_slices=num_slices,
        overwrite=overwrite,
    )
    print(folder)


def phantom_files(dataset: str, num_subjects: int, seed: int = 0) -> list[str]:
    """Relative paths of the files :func:`write_phantom_dataset` writes for these arguments.

    The marker file ``PHANTOM_README.txt`` is not included. The ACDC end-systole frame number of
    each patient depends on ``seed``; the other layouts do not.

    Args:
        dataset: ``"acdc"``, ``"prostate"`` or ``"mmwhs"``.
        num_subjects: number of subjects.
        seed: the seed passed to :func:`write_phantom_dataset`.

    Returns:
        Sorted relative paths with ``/`` separators.

    Raises:
        ValueError: unknown dataset.
    """
    name = get_spec(dataset).name
    files: list[str] = []
    if name == "acdc":
        for i in range(1, num_subjects + 1):
            folder = f"training/patient{i:03d}"
            es_frame = _acdc_cycle(seed, i - 1)[0]
            files.append(f"{folder}/Info.cfg")
            for frame in (1, es_frame):
                files += [f"{folder}/patient{i:03d}_frame{frame:02d}.nii.gz"]
                files += [f"{folder}/patient{i:03d}_frame{frame:02d}_gt.nii.gz"]
    elif name == "prostate":
        files = ["dataset.json"]
        for i in range(num_subjects):
            files += [f"imagesTr/prostate_{i:02d}.nii.gz", f"labelsTr/prostate_{i:02d}.nii.gz"]
    else:
        for i in range(1, num_subjects + 1):
            files += [f"mr_train_{1000 + i}_image.nii.gz", f"mr_train_{1000 + i}_label.nii.gz"]
    return sorted(files)


# --------------------------------------------------------------------------------------------------
# files, marker, validation
# --------------------------------------------------------------------------------------------------


def _check_int(what: str, value: object, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{what} must be {bound}, got {value}")
    return int(value)


def _read_marker(path: Path) -> dict[str, object]:
    """Parse a marker file into ``{"dataset": ..., "files": [...]}`` (empty dict if not ours)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    if not lines or not lines[0].startswith("SYNTHETIC PHANTOM DATA"):
        return {}
    info: dict[str, object] = {"files": []}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "file":
            info["files"].append(value)  # type: ignore[union-attr]
        elif key == "dataset":
            info["dataset"] = value
    return info


def _prepare_out_dir(out: Path, dataset: str, overwrite: bool) -> list[str]:
    """Check that ``out`` may be written; return the files a previous phantom of it listed."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return []
    marker = _read_marker(out / MARKER_NAME)
    if marker.get("dataset") == dataset:
        return list(marker["files"])  # type: ignore[arg-type]
    if overwrite:
        return []
    what = f"a phantom of {marker['dataset']!r}" if "dataset" in marker else "not a phantom"
    raise FileExistsError(
        f"out_dir {str(out)!r} is not empty and is {what}; expected an empty folder or a "
        f"{dataset!r} phantom (pass overwrite=True to write into it anyway)"
    )


def _write_marker(out: Path, settings: dict[str, object], files: Sequence[str]) -> None:
    lines = [
        "SYNTHETIC PHANTOM DATA - no patient data.",
        "",
        "Generated by plc_monai (plc_monai.data.phantom.write_phantom_dataset) in the raw layout of",
        "the named dataset, so that the real readers can be tested and demonstrated without the",
        "registration-only data. Anatomy, intensities, noise and bias fields are simulated.",
        "",
        *(f"{key}: {value}" for key, value in settings.items()),
        "",
        *(f"file: {rel}" for rel in files),
        "",
    ]
    _atomic_write(out / MARKER_NAME, "\n".join(lines).encode("utf-8"))


def _remove_stale(out: Path, rel_path: str) -> None:
    """Remove a file of a previous phantom (only inside ``out``) and its folder when left empty."""
    root = out.resolve()
    path = (out / rel_path).resolve()
    if root not in path.parents or not path.is_file():
        return
    path.unlink()
    parent = path.parent
    if parent != root and not any(parent.iterdir()):
        parent.rmdir()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    atomic_write_bytes(path, data)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _nifti_bytes(image: nib.Nifti1Image) -> bytes:
    """Gzipped NIfTI-1 bytes with a zero gzip time stamp (same arrays -> same file bytes)."""
    return gzip.compress(image.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)


def _msd_dataset_json(records: list[dict], settings: dict[str, object]) -> bytes:
    content = {
        "name": "Prostate",
        "description": (
            "SYNTHETIC phantom of the Medical Segmentation Decathlon Task05 prostate layout "
            f"(peripheral and transition zone), generated by plc_monai with seed {settings['seed']}; "
            "no patient data"
        ),
        "reference": "synthetic, plc_monai.data.phantom",
        "licence": "synthetic data generated by plc_monai (Apache-2.0)",
        "release": "synthetic phantom",
        "tensorImageSize": "4D",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": len(records),
        "numTest": 0,
        "training": [{"image": r["image"], "label": r["label"]} for r in records],
        "test": [],
    }
    return (json.dumps(content, indent=4) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------------------
# shared image-formation helpers
# --------------------------------------------------------------------------------------------------


def _grid(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Open grid (broadcastable arrays) of voxel-centre coordinates in mm, centred on the volume."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    return list(np.meshgrid(*axes, indexing="ij", sparse=True))


def _local(grid: Sequence[np.ndarray], centre: np.ndarray, rot: np.ndarray) -> list[np.ndarray]:
    """Coordinates of ``grid`` in a frame with origin ``centre`` and axes the columns of ``rot``."""
    d = [g - c for g, c in zip(grid, centre)]
    return [d[0] * rot[0, k] + d[1] * rot[1, k] + d[2] * rot[2, k] for k in range(3)]


def _rho(local: Sequence[np.ndarray], radii: Sequence[float]) -> np.ndarray:
    """Normalised ellipsoid radius (``< 1`` inside the ellipsoid with semi-axes ``radii``)."""
    return np.sqrt((local[0] / radii[0]) ** 2 + (local[1] / radii[1]) ** 2 + (local[2] / radii[2]) ** 2)


def _tube_distance(grid: Sequence[np.ndarray], p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance in mm from every voxel to the segment ``p0 -> p1``."""
    d = p1 - p0
    rel = [g - p for g, p in zip(grid, p0)]
    t = np.clip((rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / float(d @ d), 0.0, 1.0)
    return np.sqrt((rel[0] - t * d[0]) ** 2 + (rel[1] - t * d[1]) ** 2 + (rel[2] - t * d[2]) ** 2)


def _bias_field(rng: np.random.Generator, shape: Sequence[int], strength: float, degree: Sequence[int]) -> np.ndarray:
    """Smooth multiplicative field: ``exp`` of a random Legendre polynomial of low degree.

    Args:
        rng: random generator.
        shape: ``[X, Y, Z]``.
        strength: standard deviation of each polynomial coefficient (log scale).
        degree: polynomial degree along each axis.

    Returns:
        Field of ``shape`` with geometric mean 1.
    """
    bases = [np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, n), d) for n, d in zip(shape, degree)]
    coef = rng.normal(0.0, strength, size=tuple(d + 1 for d in degree))
    coef[0, 0, 0] = 0.0
    log_field = np.einsum("ijk,xi,yj,zk->xyz", coef, *bases, optimize=True)
    return np.exp(log_field - log_field.mean())


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: Sequence[float]) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation (texture)."""
    field = gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect")
    return field / max(float(field.std()), 1e-8)


def _rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of ``image`` plus complex Gaussian noise of standard deviation ``sigma``."""
    real = image + sigma * rng.standard_normal(image.shape)
    imag = sigma * rng.standard_normal(image.shape)
    return np.sqrt(real**2 + imag**2)


def _quantise(image: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(image * scale), 0, np.iinfo(np.int16).max).astype(np.int16)


def _rotation(rng: np.random.Generator, max_deg: Sequence[float]) -> np.ndarray:
    angles = rng.uniform(-1.0, 1.0, 3) * np.asarray(max_deg, dtype=float)
    return Rotation.from_euler("xyz", angles, degrees=True).as_matrix()


def _affine(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], tilt_deg: float) -> np.ndarray:
    """Voxel-to-world affine: a random (half the subjects: tilted) direction matrix and origin."""
    rot = _rotation(rng, (tilt_deg, tilt_deg, tilt_deg))
    if rng.random() < 0.5:
        rot = np.eye(3)
    linear = rot * np.asarray(spacing, dtype=float)[None, :]
    centre = rng.uniform(-40.0, 40.0, 3)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = centre - linear @ ((np.asarray(shape[:3], dtype=float) - 1.0) / 2.0)
    return affine


def _storage_ornt(rng: np.random.Generator) -> np.ndarray:
    """How the arrays are stored: random flips of each axis and sometimes swapped in-plane axes.

    The slice axis stays the third array axis, as in the real data.
    """
    flips = np.where(rng.random(3) < 0.3, -1.0, 1.0)
    axes = np.array([1.0, 0.0, 2.0]) if rng.random() < 0.25 else np.array([0.0, 1.0, 2.0])
    return np.column_stack([axes, flips])


def _nifti_pair(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, ornt: np.ndarray
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Image and label NIfTI with the same affine, re-stored with ``ornt`` (world unchanged)."""
    pair = []
    for array in (image, label):
        img = nib.Nifti1Image(array, affine).as_reoriented(ornt)
        stored = img.affine.copy()
        img.set_qform(stored, code=1)  # scanner coordinates in both forms, as scanners write them
        img.set_sform(stored, code=1)
        img.header.set_xyzt_units("mm", "sec")
        pair.append(img)
    return pair[0], pair[1]


# --------------------------------------------------------------------------------------------------
# ACDC: short-axis cine MRI, ED and ES frames
# --------------------------------------------------------------------------------------------------


def _subject_grid(
    rng: np.random.Generator,
    image_size: tuple[int, int] | None,
    num_slices: int | None,
    xy: tuple[int, int],
    sp: tuple[float, float],
    nz: tuple[int, int],
    dz: tuple[float, float],
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """A subject's voxel grid: shape ``(X, Y, Z)`` and spacing in mm.

    Draws a default in-plane size in ``[xy[0], xy[1])``, in-plane spacing in ``sp``, slice count in
    ``nz`` and slice thickness in ``dz``. ``image_size``/``num_slices`` overrides keep the drawn field
    of view (the spacing changes instead), so small test phantoms show the same anatomy.
    """
    default_xy = rng.integers(xy[0], xy[1], size=2)
    default_sp = rng.uniform(*sp)
    default_nz = int(rng.integers(nz[0], nz[1]))
    default_dz = rng.uniform(*dz)
    if image_size is None:
        nxy, spacing_xy = default_xy, default_sp
    else:
        nxy = np.asarray(image_size)
        spacing_xy = default_sp * float(default_xy.mean()) / float(nxy.mean())
    slices = default_nz if num_slices is None else num_slices
    return (int(nxy[0]), int(nxy[1]), slices), (spacing_xy, spacing_xy, default_dz * default_nz / slices)


def _acdc_cycle(seed: int, index: int) -> tuple[int, int]:
    """``(ES frame, number of frames)`` of ACDC patient ``index`` (own stream: file names need it)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _DATASET_KEYS["acdc"], index, 1]))
    return int(rng.integers(8, 15)), int(rng.integers(25, 36))


def _acdc_subject(
    rng: np.random.Generator, index: int, image_size: tuple[int, int] | None, num_slices: int | None, seed: int
) -> tuple[dict[str, object], dict]:
    """One ACDC patient folder: ED/ES images and labels and ``Info.cfg``."""
    pid = f"patient{index + 1:03d}"
    shape, spacing = _subject_grid(rng, image_size, num_slices, xy=(160, 225), sp=(1.2, 1.9), nz=(8, 13), dz=(5.0, 10.0))
    sp, nz = spacing[0], shape[2]

    group = _ACDC_GROUPS[int(rng.integers(len(_ACDC_GROUPS)))]
    es_frame, nb_frame = _acdc_cycle(seed, index)
    height = float(np.round(rng.uniform(150.0, 195.0)))
    weight = float(np.round(rng.uniform(50.0, 110.0)))

    # heart (mm, relative to the image centre; x to the subject's right, y anterior)
    p = {
        "r_endo": rng.uniform(23.0, 30.0),
        "thick": rng.uniform(7.0, 10.0),
        "ef": rng.uniform(0.55, 0.70),
        "rv_thick": rng.uniform(15.0, 25.0),
        "rv_ef": rng.uniform(0.45, 0.60),
        "rv_half_width": np.deg2rad(rng.uniform(65.0, 95.0)),
        "rv_angle": np.deg2rad(rng.uniform(10.0, 60.0)),
        "rv_twist": np.deg2rad(rng.uniform(-20.0, 20.0)),
        "rv_end": rng.uniform(0.6, 0.8),
        "apex": rng.uniform(0.98, 1.08),
        "ecc": rng.uniform(1.0, 1.25),
        "ecc_angle": rng.uniform(0.0, np.pi),
        "harm": rng.uniform(0.0, 0.05, size=2),
        "harm_phase": rng.uniform(0.0, 2 * np.pi, size=2),
        "centre": rng.uniform(-15.0, 15.0, size=2),
        "drift": rng.uniform(-8.0, 8.0, size=2),
        "infarct_angle": rng.uniform(0.0, 2 * np.pi),
        "pap_offset": np.deg2rad(rng.uniform(35.0, 60.0, size=2)),
        "pap_radius": rng.uniform(2.5, 4.5),
        "fat": rng.uniform(2.0, 6.0),
        "fat_phase": rng.uniform(0.0, 2 * np.pi),
        "rv_wall": rng.uniform(2.5, 4.0),
        "infarct": 0.0,
    }
    if group == "DCM":
        p.update(r_endo=p["r_endo"] * 1.3, ef=rng.uniform(0.12, 0.35), thick=p["thick"] * 0.85)
    elif group == "HCM":
        p.update(r_endo=p["r_endo"] * 0.85, ef=rng.uniform(0.65, 0.8), thick=p["thick"] * 1.6)
    elif group == "MINF":
        p.update(ef=rng.uniform(0.25, 0.45), infarct=rng.uniform(0.3, 0.6))
    elif group == "RV":
        p.update(rv_thick=p["rv_thick"] * 1.6, rv_ef=rng.uniform(0.2, 0.4), rv_half_width=p["rv_half_width"] * 1.15)
    # body and neighbouring organs
    b = {
        "centre": p["centre"] + np.array([rng.uniform(20.0, 45.0), rng.uniform(-55.0, -30.0)]),
        "axes": np.array([rng.uniform(140.0, 180.0), rng.uniform(95.0, 125.0)]),
        "fat": rng.uniform(8.0, 20.0),
        "muscle": rng.uniform(8.0, 18.0),
        "liver_start": rng.uniform(0.45, 0.8),
    }
    mean = {
        "lv": rng.uniform(0.75, 0.95),
        "myo": rng.uniform(0.28, 0.40),
        "fat_peri": rng.uniform(0.55, 0.80),
        "soft": rng.uniform(0.30, 0.45),
        "muscle": rng.uniform(0.25, 0.42),
        "fat_sub": rng.uniform(0.60, 0.85),
        "lung": rng.uniform(0.02, 0.08),
        "liver": rng.uniform(0.30, 0.45),
        "spine": rng.uniform(0.35, 0.50),
    }
    mean["rv"] = mean["lv"] * rng.uniform(0.85, 1.0)
    mean["aorta"] = mean["lv"] * rng.uniform(0.8, 1.0)
    mean["rv_wall"] = mean["myo"] * rng.uniform(0.9, 1.1)

    t_start, t_end = rng.uniform(-0.06, 0.04), rng.uniform(0.95, 1.06)
    step = (t_end - t_start) / (nz - 1)
    # three sub-slices per slice for through-plane partial volume; labels use the middle one
    t = (np.linspace(t_start, t_end, nz)[:, None] + step * np.array([-1.0, 0.0, 1.0]) / 3.0).reshape(-1)
    x, y, _ = _grid((shape[0], shape[1], 1), (sp, sp, 1.0))

    blur = rng.uniform(0.5, 0.9)
    texture_amp = rng.uniform(0.04, 0.09)
    noise = rng.uniform(0.02, 0.05)
    scale = rng.uniform(250.0, 1200.0)
    bias = _bias_field(rng, shape, rng.uniform(0.08, 0.14), (2, 2, 1))
    affine = _affine(rng, shape, spacing, tilt_deg=15.0)
    ornt = _storage_ornt(rng)

    x, y = x.astype(np.float32), y.astype(np.float32)
    files: dict[str, object] = {}
    for frame, (intensity, labels) in zip((1, es_frame), _acdc_frames(x, y, t, p, b, mean)):
        intensity = intensity.reshape(shape[0], shape[1], nz, 3).mean(axis=-1)
        labels = labels.reshape(shape[0], shape[1], nz, 3)[..., 1]
        intensity = intensity * (1.0 + texture_amp * _smooth_noise(rng, shape, (2.0 / sp, 2.0 / sp, 0.0)))
        intensity = gaussian_filter(intensity, (blur, blur, 0.0), mode="nearest") * bias
        image = _quantise(_rician(rng, intensity, noise), scale)
        img, lab = _nifti_pair(image, labels.astype(np.uint8), affine, ornt)
        files[f"training/{pid}/{pid}_frame{frame:02d}.nii.gz"] = img
        files[f"training/{pid}/{pid}_frame{frame:02d}_gt.nii.gz"] = lab
    info = (
        f"ED: 1\nES: {es_frame}\nGroup: {group}\nHeight: {height:.1f}\nNbFrame: {nb_frame}\nWeight: {weight:.1f}\n"
    )
    files[f"training/{pid}/Info.cfg"] = info.encode("utf-8")
    return files, {"id": pid, "group": group, "es": es_frame}


def _acdc_frames(
    x: np.ndarray, y: np.ndarray, t: np.ndarray, p: dict, b: dict, mean: dict
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Intensity (before texture, blur, bias, noise) and labels on ``[X, Y, T]`` at ED and ES.

    ``t`` is the normalised long-axis position of each (sub-)slice: 0 at the base, about 1 at the
    apex. The geometry that does not move between the two phases is computed once.
    """
    tt = t[None, None, :].astype(np.float32)
    tc = np.clip(tt, 0.0, None)
    dx = x - (p["centre"][0] + p["drift"][0] * tt)
    dy = y - (p["centre"][1] + p["drift"][1] * tt)
    ca, sa, e = np.cos(p["ecc_angle"]), np.sin(p["ecc_angle"]), np.sqrt(p["ecc"])
    r = np.hypot((dx * ca + dy * sa) / e, (dy * ca - dx * sa) * e)
    theta = np.arctan2(dy, dx)
    harm = 1.0 + p["harm"][0] * np.cos(2 * theta + p["harm_phase"][0])
    harm = harm + p["harm"][1] * np.cos(3 * theta + p["harm_phase"][1])
    r_h = r / harm  # radius measured in the subject's (lobulated, eccentric) LV shape

    # LV cavity radius shrinks towards the apex; the myocardium closes into an apical cap
    r_endo_ed = p["r_endo"] * np.sqrt(np.clip(1.0 - (tc / p["apex"]) ** 2, 0.0, 1.0))
    cap = np.sqrt(np.clip((p["apex"] + 0.1 - tt) / 0.1, 0.0, 1.0))
    infarct = 1.0 - p["infarct"] * np.exp(-((_wrap(theta - p["infarct_angle"]) / 0.6) ** 2))
    r_epi_ed = r_endo_ed + p["thick"] * cap * infarct
    # RV: a crescent on the septal side, thinning to its tips, absent beyond rv_end
    s_rv = np.sqrt(np.clip(1.0 - (tc / p["rv_end"]) ** 2, 0.0, 1.0))
    delta = _wrap(theta - p["rv_angle"] - p["rv_twist"] * tt)
    half = np.maximum(p["rv_half_width"] * np.sqrt(s_rv), 1e-6)
    rv_t_ed = p["rv_thick"] * s_rv * np.sqrt(np.clip(1.0 - (delta / half) ** 2, 0.0, 1.0))
    fat_t = p["fat"] * (1.0 + 0.6 * np.cos(theta - p["fat_phase"]))

    # body: subcutaneous fat, chest-wall muscle, lungs, liver (lower slices), spine, descending aorta
    bx, by = x - b["centre"][0], y - b["centre"][1]
    ax, ay = b["axes"]
    rho = np.hypot(bx / ax, by / ay)
    mean_axis = 0.5 * (ax + ay)
    body = np.broadcast_to(rho < 1.0, r.shape)
    sub_fat = body & (rho > 1.0 - b["fat"] / mean_axis)
    muscle = body & (rho > 1.0 - (b["fat"] + b["muscle"]) / mean_axis)
    lung = (np.hypot((bx + 0.45 * ax) / (0.3 * ax), (by + 0.05 * ay) / (0.55 * ay)) < 1.0) | (
        np.hypot((bx - 0.42 * ax) / (0.3 * ax), (by + 0.1 * ay) / (0.55 * ay)) < 1.0
    )
    grow = np.sqrt(np.clip((tt - b["liver_start"]) / 0.4, 0.0, 1.0))
    liver = np.hypot((bx - 0.35 * ax) / (0.45 * ax * grow + 1e-6), (by + 0.05 * ay) / (0.6 * ay * grow + 1e-6)) < 1.0
    spine = np.broadcast_to(np.hypot(bx, by + 0.78 * ay) < 16.0, r.shape)
    aorta = np.broadcast_to(np.hypot(bx + 20.0, by + 0.6 * ay) < 11.0, r.shape)

    frames = []
    for systole in (False, True):
        r_endo, r_epi, rv_t = r_endo_ed, r_epi_ed, rv_t_ed
        if systole:
            # cavity area shrinks by the ejection fraction; the myocardial area is conserved
            r_endo = r_endo_ed * np.sqrt(1.0 - p["ef"])
            r_epi = np.sqrt(r_endo**2 + r_epi_ed**2 - r_endo_ed**2)
            rv_t = rv_t_ed * (1.0 - p["rv_ef"])
        lv = r_h < r_endo
        epi = r_h < r_epi
        # papillary muscles: dark blobs inside the cavity, labelled LV as in ACDC
        pap_r = p["pap_radius"] * np.sqrt(np.clip(r_endo / p["r_endo"], 0.0, 1.0)) * (1.3 if systole else 1.0)
        angles = p["rv_angle"] + np.pi + np.array([p["pap_offset"][0], -p["pap_offset"][1]])
        pap = (
            (np.hypot(dx - 0.62 * r_endo * np.cos(angles[0]), dy - 0.62 * r_endo * np.sin(angles[0])) < pap_r)
            | (np.hypot(dx - 0.62 * r_endo * np.cos(angles[1]), dy - 0.62 * r_endo * np.sin(angles[1])) < pap_r)
        ) & lv & (r_endo > 8.0)
        rr = (r_h - r_epi) * harm
        has_rv = rv_t > 0.5
        rv = (rr >= 0) & (rr < rv_t) & has_rv
        rv_wall = (rr >= rv_t) & (rr < rv_t + p["rv_wall"]) & has_rv
        peri = rr < np.where(has_rv, rv_t + p["rv_wall"], 0.0) + fat_t
        masks = [pap, lv, epi, rv, rv_wall, peri, aorta, spine, sub_fat, muscle, liver, lung, body]
        keys = ["myo", "lv", "myo", "rv", "rv_wall", "fat_peri", "aorta", "spine", "fat_sub", "muscle", "liver",
                "lung", "soft"]
        intensity = np.select(masks, [np.float32(mean[k]) for k in keys], default=np.float32(0.0))
        labels = np.select([lv, epi, rv], [np.uint8(3), np.uint8(2), np.uint8(1)], default=np.uint8(0))
        frames.append((intensity, labels))
    return frames


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angle wrapped to ``[-pi, pi)``."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


# --------------------------------------------------------------------------------------------------
# MSD Task05 prostate: T2 + ADC
# --------------------------------------------------------------------------------------------------


def _prostate_subject(
    rng: np.random.Generator, index: int, image_size: tuple[int, int] | None, num_slices: int | None, seed: int
) -> tuple[dict[str, object], dict]:
    """One MSD prostate case: 4D T2/ADC image and zone labels."""
    case = f"prostate_{index:02d}"
    shape, spacing = _subject_grid(rng, image_size, num_slices, xy=(240, 273), sp=(0.4, 0.7), nz=(16, 23), dz=(3.0, 4.0))
    sp, nz, dz = spacing[0], shape[2], spacing[2]
    extent = nz * dz

    bph = rng.uniform(0.9, 1.25)
    radii = np.array([rng.uniform(20.0, 27.0), rng.uniform(14.0, 19.0), rng.uniform(15.0, 21.0)]) * bph
    radii[2] = min(radii[2], 0.45 * extent)
    z_g = float(np.clip(rng.uniform(-0.15, 0.05) * extent, -extent / 2 + radii[2] + 2.0, extent / 2 - radii[2] - 2.0))
    gland_c = np.array([rng.uniform(-4.0, 4.0), rng.uniform(-6.0, 6.0), z_g])
    gland_rot = _rotation(rng, (15.0, 5.0, 8.0))
    tz_f = min(rng.uniform(0.55, 0.75) * np.sqrt(bph), 0.85)
    tz_shift = np.array([0.0, rng.uniform(0.1, 0.2), rng.uniform(0.1, 0.25)]) * radii
    tz_radii = tz_f * radii * np.array([1.0, 0.9, 0.85])
    afms_thick = rng.uniform(3.0, 6.0)
    bladder_r = np.array([rng.uniform(30.0, 45.0), rng.uniform(25.0, 35.0), rng.uniform(18.0, 30.0)])
    bladder_gap = radii[2] + bladder_r[2] + rng.uniform(2.0, 12.0)
    bladder_c = gland_c + np.array([rng.uniform(-5.0, 5.0), rng.uniform(5.0, 15.0), bladder_gap])
    rect_r = rng.uniform(11.0, 17.0)
    rect_c = gland_c[:2] + np.array([rng.uniform(-4.0, 4.0), -(radii[1] + rect_r + rng.uniform(4.0, 10.0))])
    rect_tilt = rng.uniform(-0.15, 0.15, size=2)
    muscle_x = radii[0] + rng.uniform(16.0, 26.0)
    pubis_y = gland_c[1] + radii[1] + rng.uniform(18.0, 28.0)
    coil = rng.random() < 0.4
    gas = rng.random() < 0.5

    t2 = {
        "pz": rng.uniform(0.60, 0.85), "tz": rng.uniform(0.35, 0.50), "afms": rng.uniform(0.15, 0.25),
        "capsule": rng.uniform(0.15, 0.25), "peri": rng.uniform(0.60, 0.90), "fat": rng.uniform(0.65, 0.85),
        "muscle": rng.uniform(0.20, 0.32), "urine": rng.uniform(0.90, 1.00), "wall": rng.uniform(0.20, 0.32),
        "lumen": rng.uniform(0.02, 0.08) if gas else rng.uniform(0.30, 0.50), "bone": rng.uniform(0.45, 0.60),
    }
    t2["urethra"] = t2["tz"] * rng.uniform(1.1, 1.5)
    adc = {
        "pz": rng.uniform(1.5, 1.9), "tz": rng.uniform(1.05, 1.4), "afms": rng.uniform(0.9, 1.1),
        "capsule": rng.uniform(0.9, 1.1), "peri": rng.uniform(1.2, 1.8), "fat": rng.uniform(0.1, 0.4),
        "muscle": rng.uniform(1.3, 1.5), "urine": rng.uniform(2.8, 3.2), "wall": rng.uniform(1.1, 1.3),
        "lumen": rng.uniform(0.0, 0.3) if gas else rng.uniform(1.0, 1.8), "bone": rng.uniform(0.3, 0.6),
        "urethra": rng.uniform(1.8, 2.2),
    }

    # three sub-slices per slice for through-plane partial volume; labels use the middle one
    sub_shape = (shape[0], shape[1], 3 * nz)
    x, y, z = _grid(sub_shape, (sp, sp, dz / 3.0))
    grid = (x, y, z)
    local = _local(grid, gland_c, gland_rot)
    rho_g = _rho(local, radii)
    gland = rho_g < 1.0
    tz = (_rho([local[k] - tz_shift[k] for k in range(3)], tz_radii) < 1.0) & gland
    # anterior fibromuscular stroma: a band under the anterior surface (background label);
    # the peripheral zone is the rest, a crescent posterior and lateral to the TZ
    front = (radii[1] - afms_thick) * np.sqrt(np.clip(1.0 - (local[0] / radii[0]) ** 2, 0.0, 1.0))
    afms = gland & ~tz & (local[1] > front)
    pz = gland & ~tz & ~afms
    mean_r = float(radii.mean())
    capsule = rho_g < 1.0 + 1.2 / mean_r
    peri = rho_g < 1.0 + rng.uniform(4.0, 8.0) / mean_r
    urethra = np.hypot(local[0], local[1] - tz_shift[1] * 0.5) < 2.5
    rho_b = _rho([x - bladder_c[0], y - bladder_c[1], z - bladder_c[2]], bladder_r)
    rx = x - rect_c[0] - rect_tilt[0] * z
    ry = y - rect_c[1] - rect_tilt[1] * z
    rect_d = np.hypot(rx, ry)
    muscles = (np.hypot((np.abs(x) - muscle_x) / 10.0, (y - gland_c[1]) / 30.0) < 1.0) | (
        (rect_d > rect_r + 3.5) & (rect_d < rect_r + 9.0) & (ry < 0.3 * rect_r)
    )
    pubis = (np.hypot((np.abs(x) - 12.0) / 10.0, (y - pubis_y) / 8.0) < 1.0) & (z < gland_c[2] + 0.5 * radii[2])

    masks = [
        urethra & gland, pz, tz, afms, capsule, peri, rho_b < 1.0, rho_b < 1.0 + 3.0 / bladder_r.mean(),
        rect_d < rect_r, rect_d < rect_r + 3.5, pubis, muscles,
    ]
    keys = ["urethra", "pz", "tz", "afms", "capsule", "peri", "urine", "wall", "lumen", "wall", "bone", "muscle"]
    t2_map = np.select(masks, [t2[k] for k in keys], default=t2["fat"])
    adc_map = np.select(masks, [adc[k] for k in keys], default=adc["fat"])
    labels = np.select([pz, tz], [1, 2], default=0).astype(np.uint8)
    nodules = _smooth_noise(rng, sub_shape, (3.0 / sp, 3.0 / sp, 1.0))
    t2_map = t2_map * (1.0 + np.where(tz, rng.uniform(0.10, 0.18), 0.05) * nodules)
    adc_map = adc_map * (1.0 + 0.05 * nodules)

    t2_map = t2_map.reshape(shape[0], shape[1], nz, 3).mean(axis=-1)
    adc_map = adc_map.reshape(shape[0], shape[1], nz, 3).mean(axis=-1)
    labels = labels.reshape(shape[0], shape[1], nz, 3)[..., 1]

    bias = _bias_field(rng, shape, rng.uniform(0.06, 0.12), (2, 2, 1))
    if coil:  # endorectal coil: bright signal close to the rectum, falling off with distance
        xs, ys, zs = _grid(shape, spacing)
        d = np.hypot(xs - rect_c[0] - rect_tilt[0] * zs, ys - rect_c[1] - rect_tilt[1] * zs)
        bias = bias * (1.0 + rng.uniform(0.5, 1.5) * np.exp(-np.clip(d - rect_r, 0.0, None) / rng.uniform(20.0, 30.0)))
    blur = rng.uniform(0.5, 0.9)
    t2_img = gaussian_filter(t2_map, (blur, blur, 0.0), mode="nearest") * bias
    t2_img = _quantise(_rician(rng, t2_img, rng.uniform(0.02, 0.05)), rng.uniform(300.0, 900.0))
    # ADC maps are computed from low-resolution diffusion images and interpolated: the noise is
    # spatially correlated and the map blurrier than T2
    adc_blur = rng.uniform(1.5, 2.5) / sp
    adc_img = adc_map + rng.uniform(0.3, 0.5) * adc_blur * rng.standard_normal(shape)
    adc_img = gaussian_filter(adc_img, (adc_blur, adc_blur, 0.0), mode="nearest")
    adc_img = _quantise(np.clip(adc_img, 0.0, None), 1000.0)
    image = np.stack([t2_img, adc_img], axis=-1)

    affine = _affine(rng, shape, spacing, tilt_deg=12.0)
    img, lab = _nifti_pair(image, labels, affine, _storage_ornt(rng))
    files = {f"imagesTr/{case}.nii.gz": img, f"labelsTr/{case}.nii.gz": lab}
    return files, {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}


# --------------------------------------------------------------------------------------------------
# MM-WHS: whole-heart MRI
# --------------------------------------------------------------------------------------------------


def _mmwhs_subject(
    rng: np.random.Generator, index: int, image_size: tuple[int, int] | None, num_slices: int | None, seed: int
) -> tuple[dict[str, object], dict]:
    """One MM-WHS MR case: image and raw-valued labels of the seven structures."""
    stem = f"mr_train_{1001 + index}"
    shape, spacing = _subject_grid(rng, image_size, num_slices, xy=(120, 137), sp=(1.5, 2.0), nz=(52, 65), dz=(1.6, 2.0))
    sp, nz, dz = spacing[0], shape[2], spacing[2]
    spec = get_spec("mmwhs")
    value = dict(zip(spec.class_names, spec.raw_label_values))

    # heart frame: x to the subject's right, y anterior, z superior; k scales the whole heart
    k = rng.uniform(0.95, 1.1) * min(1.0, nz * dz / 105.0)
    h = np.array([rng.uniform(-10.0, 10.0), rng.uniform(-10.0, 10.0), rng.uniform(-6.0, 6.0)])
    rot_h = _rotation(rng, (12.0, 12.0, 20.0))

    def at(offset: Sequence[float]) -> np.ndarray:
        return h + rot_h @ (np.asarray(offset, dtype=float) * k)

    axis = np.array([-0.5, 0.45, -0.75]) + rng.uniform(-0.1, 0.1, 3)
    axis /= np.linalg.norm(axis)
    side = np.cross(axis, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side)
    frame_lv = rot_h @ np.column_stack([side, np.cross(axis, side), axis])
    a_long, a_tr, thick = rng.uniform(38.0, 46.0) * k, rng.uniform(20.0, 26.0) * k, rng.uniform(8.0, 12.0) * k
    c_lv = at([-15.0, 0.0, -10.0])
    grid = _grid(shape, spacing)
    l_lv = _local(grid, c_lv, frame_lv)
    above_base = l_lv[2] > -0.55 * a_long
    lv = (_rho(l_lv, (a_tr, a_tr * rng.uniform(0.85, 1.0), a_long)) < 1.0) & above_base
    myo_ell = _rho(l_lv, (a_tr + thick, a_tr + thick, a_long + thick)) < 1.0
    myo = myo_ell & ~lv & above_base

    # RV wraps the LV on the right-anterior side
    toward_rv = rot_h @ np.array([0.8, 0.6, 0.0])
    c_rv = c_lv + toward_rv * (a_tr + thick) * 0.75 - frame_lv[:, 2] * 5.0 * k
    frame_rv = np.column_stack([toward_rv, np.cross(frame_lv[:, 2], toward_rv), frame_lv[:, 2]])
    frame_rv[:, 1] /= np.linalg.norm(frame_rv[:, 1])
    frame_rv[:, 0] = np.cross(frame_rv[:, 1], frame_rv[:, 2])
    rv_radii = np.array([rng.uniform(22.0, 30.0), rng.uniform(30.0, 40.0), 0.85 * a_long / k]) * k
    l_rv = _local(grid, c_rv, frame_rv)
    rho_rv = _rho(l_rv, rv_radii)
    rv = (rho_rv < 1.0) & ~myo_ell & (l_rv[2] > -0.6 * rv_radii[2])
    rv_wall = (rho_rv < 1.0 + 3.0 / rv_radii.mean()) & ~myo_ell & ~rv & (l_rv[2] > -0.6 * rv_radii[2])

    base = c_lv - frame_lv[:, 2] * 0.55 * a_long
    la_r = np.array([rng.uniform(18.0, 24.0), rng.uniform(15.0, 20.0), rng.uniform(16.0, 22.0)]) * k
    c_la = base - frame_lv[:, 2] * la_r[2] * 0.8 + rot_h @ np.array([0.0, -12.0, 0.0]) * k
    ra_r = np.array([rng.uniform(20.0, 26.0), rng.uniform(18.0, 24.0), rng.uniform(22.0, 28.0)]) * k
    c_ra = c_la + rot_h @ np.array([rng.uniform(30.0, 38.0), 5.0, -8.0]) * k
    la = _rho(_local(grid, c_la, rot_h), la_r) < 1.0
    ra = _rho(_local(grid, c_ra, rot_h), ra_r) < 1.0

    aa_p0 = base + rot_h @ np.array([8.0, 5.0, 0.0]) * k
    aa_p1 = aa_p0 + rot_h @ np.array([8.0, 3.0, rng.uniform(45.0, 60.0)]) * k
    aa_p2 = aa_p1 + rot_h @ np.array([-25.0, -30.0, 10.0]) * k
    aa_r = rng.uniform(11.0, 15.0) * k
    aa = (_tube_distance(grid, aa_p0, aa_p1) < aa_r) | (_tube_distance(grid, aa_p1, aa_p2) < aa_r)
    pa_p0 = aa_p0 + rot_h @ np.array([-18.0, 14.0, 5.0]) * k
    pa_p1 = pa_p0 + rot_h @ np.array([-10.0, -12.0, 35.0]) * k
    pa_r = rng.uniform(11.0, 14.0) * k
    pa = (
        (_tube_distance(grid, pa_p0, pa_p1) < pa_r)
        | (_tube_distance(grid, pa_p1, pa_p1 + rot_h @ np.array([-30.0, -15.0, 0.0]) * k) < 0.75 * pa_r)
        | (_tube_distance(grid, pa_p1, pa_p1 + rot_h @ np.array([30.0, -15.0, -3.0]) * k) < 0.75 * pa_r)
    )
    outflow = _tube_distance(grid, c_rv, pa_p0) < 0.8 * pa_r  # RV outflow tract, labelled RV

    structures = [lv, myo, aa, pa, rv | outflow, la, ra]
    names = ["LV", "Myo", "AA", "PA", "RV", "LA", "RA"]
    labels = np.select(structures, [value[n] for n in names], default=0).astype(np.uint16)
    heart = labels > 0

    # surroundings: pericardial fat, body wall, lungs, liver, spine, descending aorta
    x, y, z = grid
    bc = h[:2] + np.array([rng.uniform(15.0, 30.0), rng.uniform(-50.0, -35.0)])
    ax, ay = rng.uniform(140.0, 170.0), rng.uniform(100.0, 120.0)
    bx, by = x - bc[0], y - bc[1]
    rho_body = np.hypot(bx / ax, by / ay)
    mean_axis = 0.5 * (ax + ay)
    body = np.broadcast_to(rho_body < 1.0, shape)
    sub_fat = body & (rho_body > 1.0 - rng.uniform(8.0, 18.0) / mean_axis)
    muscle = body & (rho_body > 1.0 - rng.uniform(20.0, 32.0) / mean_axis)
    peri = distance_transform_edt(~heart, sampling=spacing) < rng.uniform(2.0, 5.0)
    lung_r = (0.35 * ax, 0.6 * ay, 150.0)
    lung = (_rho([bx + 0.45 * ax, by + 0.05 * ay, z - h[2]], lung_r) < 1.0) | (
        _rho([bx - 0.45 * ax, by + 0.05 * ay, z - h[2]], lung_r) < 1.0
    )
    liver = _rho([bx - 0.3 * ax, by, z - h[2] + 70.0 * k], (0.5 * ax, 0.6 * ay, 45.0)) < 1.0
    desc = np.broadcast_to(np.hypot(bx + 20.0, by + 0.6 * ay) < rng.uniform(10.0, 13.0), shape)
    spine = np.broadcast_to(np.hypot(bx, by + 0.8 * ay) < 16.0, shape)

    blood = rng.uniform(0.75, 0.95)
    chamber = blood * rng.uniform(0.85, 1.05, size=5)
    myo_mean = rng.uniform(0.25, 0.40)
    means = [blood, myo_mean, chamber[0], chamber[1], chamber[2], chamber[3], chamber[4],
             myo_mean * rng.uniform(0.9, 1.1), rng.uniform(0.55, 0.8), blood * rng.uniform(0.8, 1.0),
             rng.uniform(0.35, 0.5), rng.uniform(0.6, 0.85), rng.uniform(0.25, 0.42), rng.uniform(0.3, 0.45),
             rng.uniform(0.02, 0.08), rng.uniform(0.3, 0.45)]
    masks = [lv, myo, aa, pa, rv | outflow, la, ra, rv_wall, peri, desc, spine, sub_fat, muscle, liver, lung, body]
    intensity = np.select(masks, means, default=0.0)
    intensity = intensity * (1.0 + rng.uniform(0.04, 0.08) * _smooth_noise(rng, shape, (2.0 / sp, 2.0 / sp, 2.0 / dz)))
    blur = rng.uniform(0.5, 0.8)
    bias = _bias_field(rng, shape, rng.uniform(0.06, 0.12), (2, 2, 2))
    intensity = gaussian_filter(intensity, blur, mode="nearest") * bias
    image = _quantise(_rician(rng, intensity, rng.uniform(0.02, 0.05)), rng.uniform(400.0, 1600.0))

    affine = _affine(rng, shape, spacing, tilt_deg=15.0)
    img, lab = _nifti_pair(image, labels, affine, _storage_ornt(rng))
    return {f"{stem}_image.nii.gz": img, f"{stem}_label.nii.gz": lab}, {"id": stem}
