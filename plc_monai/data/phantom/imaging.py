"""Image formation of the phantoms: random streams, bias field, texture, Rician noise, NIfTI files."""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["DATASET_KEYS", "subject_rng", "bias_field", "smooth_noise", "rician", "quantise", "nifti_pair"]

DATASET_KEYS = {"acdc": 1, "prostate": 2, "mmwhs": 3}
"""Each dataset's key in the seeds of its random streams (part of the files' definition: do not change)."""


def subject_rng(seed: int, dataset: str, index: int, *stream: int) -> np.random.Generator:
    """The random generator of subject ``index`` of ``dataset`` (``stream`` picks a further independent one)."""
    return np.random.default_rng(np.random.SeedSequence([seed, DATASET_KEYS[dataset], index, *stream]))


def bias_field(rng: np.random.Generator, shape: Sequence[int], strength: float, degree: Sequence[int]) -> np.ndarray:
    """Smooth multiplicative field ``[X, Y, Z]`` with geometric mean 1: ``exp`` of a random Legendre polynomial.

    ``strength`` is the standard deviation of each (log-scale) coefficient, ``degree`` the degree along each axis.
    """
    bases = [np.polynomial.legendre.legvander(np.linspace(-1.0, 1.0, n), d) for n, d in zip(shape, degree)]
    coef = rng.normal(0.0, strength, size=tuple(d + 1 for d in degree))
    coef[0, 0, 0] = 0.0
    log_field = np.einsum("ijk,xi,yj,zk->xyz", coef, *bases, optimize=True)
    return np.exp(log_field - log_field.mean())


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: Sequence[float]) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation (texture)."""
    field = gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect")
    return field / max(float(field.std()), 1e-8)


def rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of ``image`` plus complex Gaussian noise of standard deviation ``sigma``."""
    real = image + sigma * rng.standard_normal(image.shape)
    imag = sigma * rng.standard_normal(image.shape)
    return np.sqrt(real**2 + imag**2)


def quantise(image: np.ndarray, scale: float) -> np.ndarray:
    """``image * scale`` rounded and clipped to ``int16``."""
    return np.clip(np.rint(image * scale), 0, np.iinfo(np.int16).max).astype(np.int16)


def nifti_pair(
    image: np.ndarray, label: np.ndarray, pose: tuple[np.ndarray, np.ndarray]
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Image and label NIfTI with the affine of ``pose`` (see ``random_pose``), re-stored with its ``ornt``."""
    pair = [nib.Nifti1Image(array, pose[0]).as_reoriented(pose[1]) for array in (image, label)]
    for img in pair:
        stored = img.affine.copy()
        img.set_qform(stored, code=1)  # scanner coordinates in both forms, as scanners write them
        img.set_sform(stored, code=1)
        img.header.set_xyzt_units("mm", "sec")
    return pair[0], pair[1]
