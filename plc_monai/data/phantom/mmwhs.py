"""MM-WHS phantom: whole-heart MRI with the raw label values of its seven structures."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter

from plc_monai.data.phantom import geometry as geo
from plc_monai.data.phantom.imaging import bias_field, nifti_pair, quantise, rician, smooth_noise
from plc_monai.data.specs import get_spec

__all__ = ["mmwhs_subject"]


def mmwhs_subject(
    rng: np.random.Generator, index: int, image_size: tuple[int, int] | None, num_slices: int | None, seed: int
) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """One MM-WHS MR case: image and raw-valued labels of the seven structures."""
    shape, spacing = geo.subject_grid(
        rng, image_size, num_slices, xy=(120, 137), sp=(1.5, 2.0), nz=(52, 65), dz=(1.6, 2.0)
    )
    sp, nz, dz = spacing[0], shape[2], spacing[2]
    spec = get_spec("mmwhs")
    value = dict(zip(spec.class_names, spec.raw_label_values))

    # heart frame: x to the subject's right, y anterior, z superior; k scales the whole heart
    k = rng.uniform(0.95, 1.1) * min(1.0, nz * dz / 105.0)
    h = np.array([rng.uniform(-10.0, 10.0), rng.uniform(-10.0, 10.0), rng.uniform(-6.0, 6.0)])
    rot_h = geo.random_rotation(rng, (12.0, 12.0, 20.0))
    axis = np.array([-0.5, 0.45, -0.75]) + rng.uniform(-0.1, 0.1, 3)
    axis /= np.linalg.norm(axis)
    side = np.cross(axis, [0.0, 0.0, 1.0])
    side /= np.linalg.norm(side)
    frame_lv = rot_h @ np.column_stack([side, np.cross(axis, side), axis])
    a_long, a_tr, thick = rng.uniform(38.0, 46.0) * k, rng.uniform(20.0, 26.0) * k, rng.uniform(8.0, 12.0) * k
    c_lv = h + rot_h @ (np.array([-15.0, 0.0, -10.0]) * k)
    grid = geo.voxel_grid(shape, spacing)
    l_lv = geo.local_coordinates(grid, c_lv, frame_lv)
    above_base = l_lv[2] > -0.55 * a_long
    lv = (geo.ellipsoid_radius(l_lv, (a_tr, a_tr * rng.uniform(0.85, 1.0), a_long)) < 1.0) & above_base
    myo_ell = geo.ellipsoid_radius(l_lv, (a_tr + thick, a_tr + thick, a_long + thick)) < 1.0
    myo = myo_ell & ~lv & above_base

    # RV wraps the LV on the right-anterior side
    toward_rv = rot_h @ np.array([0.8, 0.6, 0.0])
    c_rv = c_lv + toward_rv * (a_tr + thick) * 0.75 - frame_lv[:, 2] * 5.0 * k
    frame_rv = np.column_stack([toward_rv, np.cross(frame_lv[:, 2], toward_rv), frame_lv[:, 2]])
    frame_rv[:, 1] /= np.linalg.norm(frame_rv[:, 1])
    frame_rv[:, 0] = np.cross(frame_rv[:, 1], frame_rv[:, 2])
    rv_radii = np.array([rng.uniform(22.0, 30.0), rng.uniform(30.0, 40.0), 0.85 * a_long / k]) * k
    l_rv = geo.local_coordinates(grid, c_rv, frame_rv)
    rho_rv = geo.ellipsoid_radius(l_rv, rv_radii)
    rv = (rho_rv < 1.0) & ~myo_ell & (l_rv[2] > -0.6 * rv_radii[2])
    rv_wall = (rho_rv < 1.0 + 3.0 / rv_radii.mean()) & ~myo_ell & ~rv & (l_rv[2] > -0.6 * rv_radii[2])

    base = c_lv - frame_lv[:, 2] * 0.55 * a_long
    la_r = np.array([rng.uniform(18.0, 24.0), rng.uniform(15.0, 20.0), rng.uniform(16.0, 22.0)]) * k
    c_la = base - frame_lv[:, 2] * la_r[2] * 0.8 + rot_h @ np.array([0.0, -12.0, 0.0]) * k
    ra_r = np.array([rng.uniform(20.0, 26.0), rng.uniform(18.0, 24.0), rng.uniform(22.0, 28.0)]) * k
    c_ra = c_la + rot_h @ np.array([rng.uniform(30.0, 38.0), 5.0, -8.0]) * k
    la = geo.ellipsoid_radius(geo.local_coordinates(grid, c_la, rot_h), la_r) < 1.0
    ra = geo.ellipsoid_radius(geo.local_coordinates(grid, c_ra, rot_h), ra_r) < 1.0

    aa_p0 = base + rot_h @ np.array([8.0, 5.0, 0.0]) * k
    aa_p1 = aa_p0 + rot_h @ np.array([8.0, 3.0, rng.uniform(45.0, 60.0)]) * k
    aa_p2 = aa_p1 + rot_h @ np.array([-25.0, -30.0, 10.0]) * k
    aa_r = rng.uniform(11.0, 15.0) * k
    aa = (geo.tube_distance(grid, aa_p0, aa_p1) < aa_r) | (geo.tube_distance(grid, aa_p1, aa_p2) < aa_r)
    pa_p0 = aa_p0 + rot_h @ np.array([-18.0, 14.0, 5.0]) * k
    pa_p1 = pa_p0 + rot_h @ np.array([-10.0, -12.0, 35.0]) * k
    pa_r = rng.uniform(11.0, 14.0) * k
    pa = (
        (geo.tube_distance(grid, pa_p0, pa_p1) < pa_r)
        | (geo.tube_distance(grid, pa_p1, pa_p1 + rot_h @ np.array([-30.0, -15.0, 0.0]) * k) < 0.75 * pa_r)
        | (geo.tube_distance(grid, pa_p1, pa_p1 + rot_h @ np.array([30.0, -15.0, -3.0]) * k) < 0.75 * pa_r)
    )
    outflow = geo.tube_distance(grid, c_rv, pa_p0) < 0.8 * pa_r  # RV outflow tract, labelled RV

    structures = {"LV": lv, "Myo": myo, "AA": aa, "PA": pa, "RV": rv | outflow, "LA": la, "RA": ra}
    labels = np.select(list(structures.values()), [value[n] for n in structures], default=0).astype(np.uint16)
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
    lung = (geo.ellipsoid_radius([bx + 0.45 * ax, by + 0.05 * ay, z - h[2]], lung_r) < 1.0) | (
        geo.ellipsoid_radius([bx - 0.45 * ax, by + 0.05 * ay, z - h[2]], lung_r) < 1.0
    )
    liver = geo.ellipsoid_radius([bx - 0.3 * ax, by, z - h[2] + 70.0 * k], (0.5 * ax, 0.6 * ay, 45.0)) < 1.0
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
    intensity = intensity * (1.0 + rng.uniform(0.04, 0.08) * smooth_noise(rng, shape, (2.0 / sp, 2.0 / sp, 2.0 / dz)))
    blur = rng.uniform(0.5, 0.8)
    bias = bias_field(rng, shape, rng.uniform(0.06, 0.12), (2, 2, 2))
    intensity = gaussian_filter(intensity, blur, mode="nearest") * bias
    image = quantise(rician(rng, intensity, rng.uniform(0.02, 0.05)), rng.uniform(400.0, 1600.0))

    return nifti_pair(image, labels, geo.random_pose(rng, shape, spacing, tilt_deg=15.0))
