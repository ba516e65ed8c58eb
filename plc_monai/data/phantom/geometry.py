"""Geometry of the phantoms: coordinate grids in mm, local frames, ellipsoids, tubes, orientations, affines."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nibabel.affines import from_matvec
from scipy.spatial.transform import Rotation

__all__ = ["voxel_grid", "local_coordinates", "ellipsoid_radius", "tube_distance", "random_rotation", "random_pose",
           "subject_grid"]


def voxel_grid(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Open grid (broadcastable arrays) of voxel-centre coordinates in mm, centred on the volume."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing)]
    return list(np.meshgrid(*axes, indexing="ij", sparse=True))


def local_coordinates(grid: Sequence[np.ndarray], centre: np.ndarray, rot: np.ndarray) -> list[np.ndarray]:
    """Coordinates of ``grid`` in a frame with origin ``centre`` and axes the columns of ``rot``."""
    d = [g - c for g, c in zip(grid, centre)]
    return [d[0] * rot[0, k] + d[1] * rot[1, k] + d[2] * rot[2, k] for k in range(3)]


def ellipsoid_radius(local: Sequence[np.ndarray], radii: Sequence[float]) -> np.ndarray:
    """Normalised ellipsoid radius (``< 1`` inside the ellipsoid with semi-axes ``radii``)."""
    return np.sqrt((local[0] / radii[0]) ** 2 + (local[1] / radii[1]) ** 2 + (local[2] / radii[2]) ** 2)


def tube_distance(grid: Sequence[np.ndarray], p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance in mm from every voxel to the segment ``p0 -> p1``."""
    d = p1 - p0
    rel = [g - p for g, p in zip(grid, p0)]
    t = np.clip((rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / float(d @ d), 0.0, 1.0)
    return np.sqrt((rel[0] - t * d[0]) ** 2 + (rel[1] - t * d[1]) ** 2 + (rel[2] - t * d[2]) ** 2)


def random_rotation(rng: np.random.Generator, max_deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix of random ``xyz`` Euler angles within ``+-max_deg`` degrees."""
    angles = rng.uniform(-1.0, 1.0, 3) * np.asarray(max_deg, dtype=float)
    return Rotation.from_euler("xyz", angles, degrees=True).as_matrix()


def random_pose(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], tilt_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """A random voxel-to-world affine and the storage orientation (``nibabel`` ``ornt``) of a subject.

    Half the subjects get a tilted direction matrix; the arrays are stored with random axis flips and
    sometimes swapped in-plane axes (the slice axis stays the third, as in the real data).
    """
    rot = random_rotation(rng, (tilt_deg, tilt_deg, tilt_deg))
    if rng.random() < 0.5:
        rot = np.eye(3)
    linear = rot * np.asarray(spacing, dtype=float)[None, :]
    affine = from_matvec(linear, rng.uniform(-40.0, 40.0, 3) - linear @ ((np.asarray(shape[:3]) - 1.0) / 2.0))
    flips = np.where(rng.random(3) < 0.3, -1.0, 1.0)
    axes = np.array([1.0, 0.0, 2.0]) if rng.random() < 0.25 else np.array([0.0, 1.0, 2.0])
    return affine, np.column_stack([axes, flips])


def subject_grid(
    rng: np.random.Generator,
    image_size: tuple[int, int] | None,
    num_slices: int | None,
    xy: tuple[int, int],
    sp: tuple[float, float],
    nz: tuple[int, int],
    dz: tuple[float, float],
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """A subject's grid: shape ``(X, Y, Z)`` and spacing in mm, drawn from the ranges ``xy``, ``sp``, ``nz``, ``dz``.

    ``image_size``/``num_slices`` override the size but keep the drawn field of view (the spacing changes).
    """
    default_xy = rng.integers(xy[0], xy[1], size=2)
    default_sp = rng.uniform(*sp)
    default_nz = int(rng.integers(nz[0], nz[1]))
    default_dz = rng.uniform(*dz)
    nxy = default_xy if image_size is None else np.asarray(image_size)
    spacing_xy = default_sp * float(default_xy.mean()) / float(nxy.mean())
    slices = default_nz if num_slices is None else num_slices
    return (int(nxy[0]), int(nxy[1]), slices), (spacing_xy, spacing_xy, default_dz * default_nz / slices)
