"""ACDC phantom: short-axis cine MRI at end-diastole and end-systole, RV/myocardium/LV labels, ``Info.cfg``."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from plc_monai.data.phantom.geometry import random_pose, subject_grid, voxel_grid
from plc_monai.data.phantom.imaging import bias_field, nifti_pair, quantise, rician, smooth_noise, subject_rng

__all__ = ["acdc_subject", "acdc_cycle"]

_ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")


def acdc_cycle(seed: int, index: int) -> tuple[int, int]:
    """``(ES frame, number of frames)`` of ACDC patient ``index`` (own stream: the file names need it)."""
    rng = subject_rng(seed, "acdc", index, 1)
    return int(rng.integers(8, 15)), int(rng.integers(25, 36))


def acdc_subject(
    rng: np.random.Generator, index: int, image_size: tuple[int, int] | None, num_slices: int | None, seed: int
) -> list[object]:
    """One ACDC patient: ED image and label, ES image and label (NIfTI) and the ``Info.cfg`` bytes."""
    shape, spacing = subject_grid(rng, image_size, num_slices, xy=(160, 225), sp=(1.2, 1.9), nz=(8, 13), dz=(5.0, 10.0))
    sp, nz = spacing[0], shape[2]

    group = _ACDC_GROUPS[int(rng.integers(len(_ACDC_GROUPS)))]
    es_frame, nb_frame = acdc_cycle(seed, index)
    height = float(np.round(rng.uniform(150.0, 195.0)))
    weight = float(np.round(rng.uniform(50.0, 110.0)))

    # heart (mm, relative to the image centre; x to the subject's right, y anterior)
    p = {
        "r_endo": rng.uniform(23.0, 30.0), "thick": rng.uniform(7.0, 10.0), "ef": rng.uniform(0.55, 0.70),
        "rv_thick": rng.uniform(15.0, 25.0), "rv_ef": rng.uniform(0.45, 0.60),
        "rv_half_width": np.deg2rad(rng.uniform(65.0, 95.0)), "rv_angle": np.deg2rad(rng.uniform(10.0, 60.0)),
        "rv_twist": np.deg2rad(rng.uniform(-20.0, 20.0)), "rv_end": rng.uniform(0.6, 0.8),
        "apex": rng.uniform(0.98, 1.08), "ecc": rng.uniform(1.0, 1.25), "ecc_angle": rng.uniform(0.0, np.pi),
        "harm": rng.uniform(0.0, 0.05, size=2), "harm_phase": rng.uniform(0.0, 2 * np.pi, size=2),
        "centre": rng.uniform(-15.0, 15.0, size=2), "drift": rng.uniform(-8.0, 8.0, size=2),
        "infarct_angle": rng.uniform(0.0, 2 * np.pi), "pap_offset": np.deg2rad(rng.uniform(35.0, 60.0, size=2)),
        "pap_radius": rng.uniform(2.5, 4.5), "fat": rng.uniform(2.0, 6.0), "fat_phase": rng.uniform(0.0, 2 * np.pi),
        "rv_wall": rng.uniform(2.5, 4.0), "infarct": 0.0,
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
        "fat": rng.uniform(8.0, 20.0), "muscle": rng.uniform(8.0, 18.0), "liver_start": rng.uniform(0.45, 0.8),
    }
    mean = {
        "lv": rng.uniform(0.75, 0.95), "myo": rng.uniform(0.28, 0.40), "fat_peri": rng.uniform(0.55, 0.80),
        "soft": rng.uniform(0.30, 0.45), "muscle": rng.uniform(0.25, 0.42), "fat_sub": rng.uniform(0.60, 0.85),
        "lung": rng.uniform(0.02, 0.08), "liver": rng.uniform(0.30, 0.45), "spine": rng.uniform(0.35, 0.50),
    }
    mean.update(rv=mean["lv"] * rng.uniform(0.85, 1.0), aorta=mean["lv"] * rng.uniform(0.8, 1.0),
                rv_wall=mean["myo"] * rng.uniform(0.9, 1.1))

    t_start, t_end = rng.uniform(-0.06, 0.04), rng.uniform(0.95, 1.06)
    step = (t_end - t_start) / (nz - 1)
    # three sub-slices per slice for through-plane partial volume; labels use the middle one
    t = (np.linspace(t_start, t_end, nz)[:, None] + step * np.array([-1.0, 0.0, 1.0]) / 3.0).reshape(-1)
    x, y = (g.astype(np.float32) for g in voxel_grid((shape[0], shape[1], 1), (sp, sp, 1.0))[:2])

    blur = rng.uniform(0.5, 0.9)
    texture_amp = rng.uniform(0.04, 0.09)
    noise = rng.uniform(0.02, 0.05)
    scale = rng.uniform(250.0, 1200.0)
    bias = bias_field(rng, shape, rng.uniform(0.08, 0.14), (2, 2, 1))
    pose = random_pose(rng, shape, spacing, tilt_deg=15.0)

    files: list[object] = []
    for intensity, labels in _acdc_frames(x, y, t, p, b, mean):
        intensity = intensity.reshape(*shape, 3).mean(axis=-1)
        labels = labels.reshape(*shape, 3)[..., 1]
        intensity = intensity * (1.0 + texture_amp * smooth_noise(rng, shape, (2.0 / sp, 2.0 / sp, 0.0)))
        intensity = gaussian_filter(intensity, (blur, blur, 0.0), mode="nearest") * bias
        image = quantise(rician(rng, intensity, noise), scale)
        files += nifti_pair(image, labels.astype(np.uint8), pose)
    info = f"ED: 1\nES: {es_frame}\nGroup: {group}\nHeight: {height:.1f}\nNbFrame: {nb_frame}\nWeight: {weight:.1f}\n"
    return files + [info.encode("utf-8")]


def _acdc_frames(
    x: np.ndarray, y: np.ndarray, t: np.ndarray, p: dict, b: dict, mean: dict
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Intensity (before texture, blur, bias, noise) and labels ``[X, Y, T]`` at ED and ES.

    ``t`` is the long-axis position of each (sub-)slice: 0 at the base, about 1 at the apex.
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
        pap = np.logical_or.reduce(
            [np.hypot(dx - 0.62 * r_endo * np.cos(a), dy - 0.62 * r_endo * np.sin(a)) < pap_r for a in angles]
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
