"""MSD Task05 prostate phantom: 4D T2 + ADC image, peripheral and transition zone labels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

from plc_monai.data.phantom import geometry as geo
from plc_monai.data.phantom.imaging import bias_field, nifti_pair, quantise, rician, smooth_noise

__all__ = ["prostate_subject"]


def prostate_subject(
    rng: np.random.Generator, index: int, image_size: tuple[int, int] | None, num_slices: int | None, seed: int
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """One MSD prostate case: 4D ``[X, Y, Z, 2]`` T2/ADC image (ADC in 1e-6 mm^2/s) and zone labels."""
    shape, spacing = geo.subject_grid(
        rng, image_size, num_slices, xy=(240, 273), sp=(0.4, 0.7), nz=(16, 23), dz=(3.0, 4.0)
    )
    sp, nz, dz = spacing[0], shape[2], spacing[2]
    extent = nz * dz

    bph = rng.uniform(0.9, 1.25)
    radii = np.array([rng.uniform(20.0, 27.0), rng.uniform(14.0, 19.0), rng.uniform(15.0, 21.0)]) * bph
    radii[2] = min(radii[2], 0.45 * extent)
    z_g = float(np.clip(rng.uniform(-0.15, 0.05) * extent, -extent / 2 + radii[2] + 2.0, extent / 2 - radii[2] - 2.0))
    gland_c = np.array([rng.uniform(-4.0, 4.0), rng.uniform(-6.0, 6.0), z_g])
    gland_rot = geo.random_rotation(rng, (15.0, 5.0, 8.0))
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
    x, y, z = geo.voxel_grid(sub_shape, (sp, sp, dz / 3.0))
    local = geo.local_coordinates((x, y, z), gland_c, gland_rot)
    rho_g = geo.ellipsoid_radius(local, radii)
    gland = rho_g < 1.0
    tz = (geo.ellipsoid_radius([local[k] - tz_shift[k] for k in range(3)], tz_radii) < 1.0) & gland
    # anterior fibromuscular stroma: a band under the anterior surface (background label);
    # the peripheral zone is the rest, a crescent posterior and lateral to the TZ
    front = (radii[1] - afms_thick) * np.sqrt(np.clip(1.0 - (local[0] / radii[0]) ** 2, 0.0, 1.0))
    afms = gland & ~tz & (local[1] > front)
    pz = gland & ~tz & ~afms
    mean_r = float(radii.mean())
    capsule = rho_g < 1.0 + 1.2 / mean_r
    peri = rho_g < 1.0 + rng.uniform(4.0, 8.0) / mean_r
    urethra = np.hypot(local[0], local[1] - tz_shift[1] * 0.5) < 2.5
    rho_b = geo.ellipsoid_radius([x - bladder_c[0], y - bladder_c[1], z - bladder_c[2]], bladder_r)
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
    t2_map, adc_map = (np.select(masks, [m[k] for k in keys], default=m["fat"]) for m in (t2, adc))
    labels = np.select([pz, tz], [1, 2], default=0).astype(np.uint8)
    nodules = smooth_noise(rng, sub_shape, (3.0 / sp, 3.0 / sp, 1.0))
    t2_map = t2_map * (1.0 + np.where(tz, rng.uniform(0.10, 0.18), 0.05) * nodules)
    adc_map = adc_map * (1.0 + 0.05 * nodules)

    t2_map, adc_map = (m.reshape(*shape, 3).mean(axis=-1) for m in (t2_map, adc_map))
    labels = labels.reshape(*shape, 3)[..., 1]

    bias = bias_field(rng, shape, rng.uniform(0.06, 0.12), (2, 2, 1))
    if coil:  # endorectal coil: bright signal close to the rectum, falling off with distance
        xs, ys, zs = geo.voxel_grid(shape, spacing)
        d = np.hypot(xs - rect_c[0] - rect_tilt[0] * zs, ys - rect_c[1] - rect_tilt[1] * zs)
        bias = bias * (1.0 + rng.uniform(0.5, 1.5) * np.exp(-np.clip(d - rect_r, 0.0, None) / rng.uniform(20.0, 30.0)))
    blur = rng.uniform(0.5, 0.9)
    t2_img = gaussian_filter(t2_map, (blur, blur, 0.0), mode="nearest") * bias
    t2_img = quantise(rician(rng, t2_img, rng.uniform(0.02, 0.05)), rng.uniform(300.0, 900.0))
    # ADC maps are computed from low-resolution diffusion images and interpolated: the noise is
    # spatially correlated and the map blurrier than T2
    adc_blur = rng.uniform(1.5, 2.5) / sp
    adc_img = adc_map + rng.uniform(0.3, 0.5) * adc_blur * rng.standard_normal(shape)
    adc_img = gaussian_filter(adc_img, (adc_blur, adc_blur, 0.0), mode="nearest")
    adc_img = quantise(np.clip(adc_img, 0.0, None), 1000.0)
    image = np.stack([t2_img, adc_img], axis=-1)

    return nifti_pair(image, labels, geo.random_pose(rng, shape, spacing, tilt_deg=12.0))
