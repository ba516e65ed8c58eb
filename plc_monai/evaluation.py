"""Segmentation evaluation: per-class Dice for validation (on the device), per-structure Dice/HD95/ASD in mm
for test volumes at native resolution (``docs/evaluation.md``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.data.utils import affine_to_spacing
from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance
from monai.transforms.utils import generate_spatial_bounding_box

from plc_monai._ignite import Engine, Events
from plc_monai.atomic_files import atomic_write_text
from plc_monai.reports import csv_text, format_mean_std, markdown_table, mean_std, write_json

__all__ = [
    "STATUSES", "ROW_FIELDS", "dice_per_class", "evaluate_volume", "summarise", "write_reports", "VolumeMetricsWriter"
]

#: Values of a row's ``status`` (``docs/evaluation.md``).
STATUSES = ("ok", "missing_in_prediction", "missing_in_reference", "absent_in_both")

#: Keys of one row returned by :func:`evaluate_volume`, in the order of ``per_volume.csv``.
ROW_FIELDS = (
    "structure", "class_index", "status", "dice", "hd95_mm", "asd_mm", "voxels_reference", "voxels_prediction"
)


def _label_pair(
    pred: Any, target: Any, target_name: str, num_classes: int, include_background: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both label maps as int64 tensors on ``pred``'s device; same shape, labels in ``[0, num_classes - 1]``."""
    if num_classes < (1 if include_background else 2):
        raise ValueError(
            f"num_classes={num_classes} leaves no class to score (include_background={include_background})."
        )
    pair = []
    for x, name in ((pred, "pred"), (target, target_name)):
        x = x.as_tensor() if isinstance(x, MetaTensor) else x
        x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a numpy array or torch tensor of class indices, got {type(x).__name__}.")
        if x.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); expected a label map.")
        if x.is_complex():
            raise ValueError(f"{name} has complex dtype {x.dtype}; expected integer class indices.")
        if x.is_floating_point() and not bool(torch.equal(x, torch.round(x))):
            raise ValueError(f"{name} holds non-integer values; expected a label map of class indices.")
        pair.append(x.long())
    p, t = pair
    if p.shape != t.shape:
        raise ValueError(f"pred and {target_name} must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}.")
    for x, name in ((p, "pred"), (t, target_name)):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} holds labels in [{lo}, {hi}]; expected class indices in [0, {num_classes - 1}] "
                f"for num_classes={num_classes}."
            )
    return p, t.to(p.device)


def dice_per_class(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    include_background: bool = False,
    spatial_dims: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice per volume and class from two integer label maps, vectorised with one ``bincount``.

    Each batch item is one whole volume. A class absent from both maps has Dice ``NaN`` and presence
    ``False`` (average with :func:`torch.nanmean`); a class in only one map has Dice ``0.0``.

    Args:
        pred: predicted class indices ``[B, *spatial]``, ``[B, 1, *spatial]`` or ``[*spatial]`` (one volume);
            integer, bool, or float holding whole numbers (e.g. ``AsDiscrete`` output).
        target: reference class indices, same shape as ``pred``.
        num_classes: number of classes, background included.
        include_background: keep class 0 in the output. Defaults to ``False``.
        spatial_dims: number of spatial axes; decides whether the leading axis is a batch axis. Defaults to 3.

    Returns:
        ``(dice, present)``: float32 Dice and bool presence, both ``[B, C']`` on the input device, where
        ``C' = num_classes - 1`` without background, else ``num_classes``.

    Raises:
        ValueError: for mismatched or wrong shapes, no class to score, or labels outside ``[0, num_classes - 1]``.
    """
    p, t = _label_pair(pred, target, "target", num_classes, include_background)
    if p.ndim == spatial_dims:
        p, t = p.unsqueeze(0), t.unsqueeze(0)
    elif p.ndim == spatial_dims + 2 and p.shape[1] == 1:
        p, t = p.squeeze(1), t.squeeze(1)
    elif p.ndim != spatial_dims + 1:
        raise ValueError(
            f"pred has shape {tuple(p.shape)}; expected [*spatial], [B, *spatial] or [B, 1, *spatial] "
            f"with {spatial_dims} spatial axes."
        )

    batch = p.shape[0]
    # one bin per (volume, class): index = b * C + k
    offset = torch.arange(batch, device=p.device).unsqueeze(1) * num_classes
    p_idx, t_idx = (x.reshape(batch, -1) + offset for x in (p, t))
    counts_pred, counts_target, counts_inter = (
        torch.bincount(x, minlength=batch * num_classes).view(batch, num_classes)
        for x in (p_idx.reshape(-1), t_idx.reshape(-1), t_idx[p_idx == t_idx])
    )
    denom = counts_pred + counts_target
    dice = (2.0 * counts_inter.double() / denom.double()).float()  # 0/0 -> NaN
    present = denom > 0
    if not include_background:
        dice, present = dice[:, 1:], present[:, 1:]
    return dice, present


def evaluate_volume(
    pred: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    spacing: Sequence[float] | np.ndarray | torch.Tensor | float,
    class_names: Sequence[str],
    include_background: bool = False,
) -> list[dict]:
    """Per-structure Dice, HD95 and symmetric ASD (mm) of one volume at native resolution.

    Distances (MONAI's surface definition, ``docs/evaluation.md``) are computed for status ``ok`` only,
    else ``None``; Dice is then ``0.0`` (``missing_in_prediction``/``missing_in_reference``) or ``NaN``
    (``absent_in_both``).

    Args:
        pred: predicted class indices ``[*spatial]`` or ``[1, *spatial]`` (numpy or torch).
        label: reference class indices, same shape as ``pred``.
        spacing: voxel size in mm per array axis (e.g. ``(1.25, 1.25, 10.0)`` for ``[X, Y, Z]``); its
            length sets the number of spatial axes; a single number means isotropic 3D spacing.
        class_names: one name per class, background first.
        include_background: also score class 0. Defaults to ``False``.

    Returns:
        One row per scored class, in class order, with the keys :data:`ROW_FIELDS` and Python scalars.

    Raises:
        ValueError: for mismatched shapes, bad spacing, no class to score, or labels outside the classes.
    """
    num_classes = len(class_names)
    values = torch.as_tensor(spacing, dtype=torch.float64).detach().cpu()
    # Python floats (MONAI rejects a list mixing int and float); a single number is isotropic 3D spacing
    spacing_mm = values.reshape(-1).repeat(3 if values.ndim == 0 else 1).tolist()
    if not all(np.isfinite(v) and v > 0 for v in spacing_mm):
        raise ValueError(f"spacing {spacing!r} must hold positive finite millimetre values.")
    spatial_dims = len(spacing_mm)
    p, t = (x.cpu() for x in _label_pair(pred, label, "label", num_classes, include_background))
    if p.ndim == spatial_dims + 1 and p.shape[0] == 1:
        p, t = p[0], t[0]
    if p.ndim != spatial_dims:
        raise ValueError(
            f"pred has shape {tuple(p.shape)}; expected a label map [*spatial] or [1, *spatial] with "
            f"{spatial_dims} spatial axes (one per spacing value)."
        )

    counts_pred, counts_ref = (torch.bincount(x.reshape(-1), minlength=num_classes).tolist() for x in (p, t))

    rows = []
    # one class at a time, cropped to the bounding box of its two masks: memory stays at one mask pair
    for k in range(0 if include_background else 1, num_classes):
        n_ref, n_pred = int(counts_ref[k]), int(counts_pred[k])
        defaults = (str(class_names[k]), k, "ok", 0.0, None, None, n_ref, n_pred)
        row: dict[str, Any] = dict(zip(ROW_FIELDS, defaults))
        if n_ref == 0 and n_pred == 0:
            row["status"], row["dice"] = "absent_in_both", float("nan")
        elif n_pred == 0:
            row["status"] = "missing_in_prediction"
        elif n_ref == 0:
            row["status"] = "missing_in_reference"
        else:
            mask_p, mask_t = p == k, t == k
            start, end = generate_spatial_bounding_box((mask_p | mask_t)[None])
            box = tuple(slice(s, e) for s, e in zip(start, end))
            mask_p, mask_t = mask_p[box][None, None], mask_t[box][None, None]
            surface = {"include_background": True, "spacing": spacing_mm}  # one channel per mask
            row["dice"] = float(compute_dice(mask_p, mask_t, include_background=True)[0, 0])
            hd95 = compute_hausdorff_distance(mask_p, mask_t, percentile=95, **surface)
            asd = compute_average_surface_distance(mask_p, mask_t, symmetric=True, **surface)
            row["hd95_mm"], row["asd_mm"] = float(hd95[0, 0]), float(asd[0, 0])
        rows.append(row)
    return rows


def summarise(
    rows_by_volume: Mapping[str, Sequence[Mapping[str, Any]]],
    class_names: Sequence[str],
    ddof: int = 0,
) -> dict:
    """Per-structure mean ± std over volumes and the paper's mean foreground Dice.

    Per structure, Dice is averaged over the volumes where it is not ``absent_in_both`` (a missed structure
    counts as 0), HD95 and ASD over those with status ``ok``. The headline number is, per volume, the mean
    Dice of its foreground structures not ``absent_in_both``, then mean and std over volumes.

    Args:
        rows_by_volume: ``{volume id: rows of evaluate_volume}``.
        class_names: one name per class, background first; sets the order of the structures.
        ddof: delta degrees of freedom of the std: ``0`` (default) population, ``1`` sample std.

    Returns:
        ``{"n_volumes", "std_ddof", "structures", "mean_foreground_dice": {"mean", "std", "n"},
        "per_volume_mean_foreground_dice": {volume id: float | None}}``; each structure entry holds
        ``structure``, ``class_index``, ``n_volumes``, ``n_{status}`` and ``{dice,hd95_mm,asd_mm}_{mean,std,n}``.
        Undefined values are ``None``.

    Raises:
        ValueError: when ``rows_by_volume`` is empty, ``ddof`` is negative, or a row lacks a field, has an
            unknown status or a class index outside ``class_names``.
    """
    if not rows_by_volume:
        raise ValueError("rows_by_volume is empty; expected at least one evaluated volume.")
    num_classes = len(class_names)
    by_class: dict[int, list[Mapping[str, Any]]] = {}
    per_volume: dict[str, float | None] = {}
    for vol, rows in rows_by_volume.items():
        fg = []
        for row in rows:
            missing = [f for f in ROW_FIELDS if f not in row]
            if missing:
                raise ValueError(f"row of volume {vol!r} lacks fields {missing}; expected the keys {list(ROW_FIELDS)}.")
            k = int(row["class_index"])
            if not 0 <= k < num_classes:
                raise ValueError(
                    f"volume {vol!r} has class_index {k}; expected 0..{num_classes - 1} for {list(class_names)}."
                )
            if row["status"] not in STATUSES:
                raise ValueError(
                    f"volume {vol!r}, class {k}: unknown status {row['status']!r}; expected one of {STATUSES}."
                )
            by_class.setdefault(k, []).append(row)
            if k > 0 and row["status"] != "absent_in_both":
                fg.append(float(row["dice"]))
        per_volume[str(vol)] = float(np.mean(fg)) if fg else None

    head = dict(zip(("mean", "std", "n"), mean_std(list(per_volume.values()), ddof)))
    structures = []
    for k in sorted(by_class):
        rows = by_class[k]
        entry: dict[str, Any] = {"structure": str(class_names[k]), "class_index": k, "n_volumes": len(rows)}
        entry.update({f"n_{status}": sum(r["status"] == status for r in rows) for status in STATUSES})
        defined = [r for r in rows if r["status"] != "absent_in_both"]
        ok = [r for r in rows if r["status"] == "ok"]
        for key, source in (("dice", defined), ("hd95_mm", ok), ("asd_mm", ok)):
            entry.update(zip((f"{key}_mean", f"{key}_std", f"{key}_n"), mean_std([r[key] for r in source], ddof)))
        structures.append(entry)
    return {
        "n_volumes": len(rows_by_volume),
        "std_ddof": ddof,
        "structures": structures,
        "mean_foreground_dice": head,
        "per_volume_mean_foreground_dice": per_volume,
    }


def write_reports(
    rows_by_volume: Mapping[str, Sequence[Mapping[str, Any]]],
    summary: Mapping[str, Any],
    out_dir: str | os.PathLike,
    prefix: str = "",
) -> dict[str, Path]:
    """Write ``per_volume.csv``, ``summary.json`` and ``summary.md`` (formats: ``docs/evaluation.md``), atomically.

    Args:
        rows_by_volume: ``{volume id: rows of evaluate_volume}``.
        summary: output of :func:`summarise` on the same rows.
        out_dir: folder to write into; created when missing.
        prefix: prepended to each file name (e.g. ``"test_"``).

    Returns:
        ``{"per_volume_csv": path, "summary_json": path, "summary_md": path}``.

    Raises:
        ValueError: when ``out_dir`` exists and is not a folder, or ``summary`` lacks ``structures``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a folder.")
    if "structures" not in summary:
        raise ValueError("summary lacks 'structures'; expected the output of summarise().")
    out.mkdir(parents=True, exist_ok=True)
    names = (("per_volume", "csv"), ("summary", "json"), ("summary", "md"))
    paths = {f"{stem}_{ext}": out / f"{prefix}{stem}.{ext}" for stem, ext in names}

    csv_rows = [[vol, *(row.get(f) for f in ROW_FIELDS)] for vol, rows in rows_by_volume.items() for row in rows]
    atomic_write_text(paths["per_volume_csv"], csv_text(("volume", *ROW_FIELDS), csv_rows))
    per_volume = {str(v): [dict(r) for r in rows] for v, rows in rows_by_volume.items()}
    write_json(paths["summary_json"], {**summary, "per_volume": per_volume})

    digits = {"dice": 3, "hd95_mm": 2, "asd_mm": 2}
    table = []
    for s in summary["structures"]:
        spreads = [format_mean_std(s[f"{key}_mean"], s[f"{key}_std"], d) for key, d in digits.items()]
        table.append([s["structure"], *spreads, f"{s['n_missing_in_prediction']}/{s['n_volumes']}"])
    head = summary.get("mean_foreground_dice", {})
    lines = [
        f"# Segmentation metrics ({summary.get('n_volumes', len(rows_by_volume))} volumes)",
        "",
        "Dice over volumes where the structure is in the reference or the prediction; HD95 and ASD (mm, native",
        "resolution) over volumes where it is in both; `missing` = in the reference but not predicted.",
        f"Mean ± std over volumes (std ddof={summary.get('std_ddof', 0)}).",
        "",
        *markdown_table(("structure", "Dice mean ± std", "HD95 mm", "ASD mm", "missing"), table),
        "",
        f"Mean foreground Dice per volume, averaged over {head.get('n', 0)} volumes: "
        f"{format_mean_std(head.get('mean'), head.get('std'), 3)}",
        "",
    ]
    atomic_write_text(paths["summary_md"], "\n".join(lines))
    return paths


def _first(value: Any) -> Any:
    """Unwrap a one-element list/tuple/array/tensor (what collation leaves around scalars)."""
    while isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.reshape(-1).shape[0] == 1:
        value = value.reshape(-1)[0].item()
    return value


@dataclass(eq=False)
class VolumeMetricsWriter:
    """Ignite handler: per-structure metrics of every evaluated volume, reports at the end.

    Attach to a :class:`monai.engines.SupervisedEvaluator` whose output items hold the prediction and the
    reference at native resolution (e.g. after ``Invertd`` and ``AsDiscreted``), channel-first ``[C, *spatial]``
    (``C == 1``: label map; ``C == len(class_names)``: arg-maxed). Items are scored with :func:`evaluate_volume`
    at ``ITERATION_COMPLETED`` and :func:`write_reports` runs at ``write_event``; rows are cleared at
    ``EPOCH_STARTED``. Spacing comes from the reference (then prediction) MetaTensor's affine, else
    ``batch[f"{label_key}_meta_dict"]["pixdim"]``, else ``spacing``; the volume id from ``batch[id_key]``, else
    ``filename_or_obj`` of the reference or image, else ``volume_<n>``. Single process only.

    Args:
        output_dir: folder for ``per_volume.csv``, ``summary.json``, ``summary.md``.
        class_names: one name per class, background first.
        include_background: also score class 0. Defaults to ``False``.
        pred_key: key of the prediction in ``engine.state.output``. Defaults to ``"pred"``.
        label_key: key of the reference in ``engine.state.output``. Defaults to ``"label"``.
        image_key: key of the image in ``engine.state.batch``, for the file name. Defaults to ``"image"``.
        id_key: key of the volume id in ``engine.state.batch``. Defaults to ``"id"``.
        spacing: fallback spacing in mm when the data carry none; ``None`` (default) makes that an error.
        prefix: prepended to the report file names.
        write_event: ``"EPOCH_COMPLETED"`` (default) or ``"COMPLETED"``.
        ddof: std degrees of freedom passed to :func:`summarise`.
        name: logger name; the engine's logger when ``None``.

    Raises:
        ValueError: for an unknown ``write_event``.
    """

    output_dir: str | os.PathLike
    class_names: Sequence[str]
    include_background: bool = False
    pred_key: str = "pred"
    label_key: str = "label"
    image_key: str = "image"
    id_key: str = "id"
    spacing: Sequence[float] | None = None
    prefix: str = ""
    write_event: str = "EPOCH_COMPLETED"
    ddof: int = 0
    name: str | None = None

    def __post_init__(self) -> None:
        if self.write_event not in ("EPOCH_COMPLETED", "COMPLETED"):
            raise ValueError(f"write_event must be 'EPOCH_COMPLETED' or 'COMPLETED', got {self.write_event!r}.")
        self.output_dir = Path(self.output_dir)
        self.class_names = tuple(str(c) for c in self.class_names)
        self.logger = logging.getLogger(self.name)
        self.rows_by_volume: dict[str, list[dict]] = {}
        self.summary: dict | None = None
        self.report_paths: dict[str, Path] = {}

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_STARTED`` (reset), ``ITERATION_COMPLETED`` (score) and the write event."""
        if self.name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(getattr(Events, self.write_event), self.write)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the rows collected so far."""
        self.rows_by_volume = {}
        self.summary = None

    def __call__(self, engine: Engine) -> None:
        """Score every volume of ``engine.state.output`` (ids and meta data from ``engine.state.batch``).

        Raises:
            ValueError: when an item lacks the prediction or reference, has no spacing, or repeats a
                volume id already scored in this epoch.
        """
        state = engine.state  # output and batch are dicts when the evaluator was built with decollate=False
        outputs, batch = (decollate_batch(x) if isinstance(x, Mapping) else x for x in (state.output, state.batch))
        if not isinstance(outputs, Sequence):
            raise ValueError(f"engine.state.output is a {type(outputs).__name__}; expected a dict or a list of dicts.")
        batch = batch if isinstance(batch, Sequence) and len(batch) == len(outputs) else [{}] * len(outputs)
        for item, batch_item in zip(outputs, batch):
            for key in (self.pred_key, self.label_key):
                if key not in item:
                    raise ValueError(f"evaluator output lacks key {key!r}; has {sorted(item)}.")
            pred, label = item[self.pred_key], item[self.label_key]
            batch_item = batch_item if isinstance(batch_item, Mapping) else {}
            vol = self._volume_id(batch_item, label)
            if vol in self.rows_by_volume:
                raise ValueError(f"volume id {vol!r} was scored twice in one epoch; ids must be unique.")
            self.rows_by_volume[vol] = evaluate_volume(
                self._label_map(pred, "pred", vol),
                self._label_map(label, "label", vol),
                self._spacing(label, pred, batch_item, vol),
                self.class_names,
                include_background=self.include_background,
            )

    def write(self, engine: Engine | None = None) -> dict[str, Path]:
        """Summarise the collected rows and write the reports; returns the paths, empty when no volume was scored."""
        if not self.rows_by_volume:
            self.logger.warning("VolumeMetricsWriter: no volume was scored, no report written.")
            return {}
        self.summary = summarise(self.rows_by_volume, self.class_names, ddof=self.ddof)
        self.report_paths = write_reports(self.rows_by_volume, self.summary, self.output_dir, prefix=self.prefix)
        head = self.summary["mean_foreground_dice"]
        self.logger.info(
            f"VolumeMetricsWriter: {len(self.rows_by_volume)} volumes, mean foreground Dice "
            f"{format_mean_std(head['mean'], head['std'], 4)}, reports in {self.output_dir}"
        )
        return self.report_paths

    def _label_map(self, x: Any, what: str, vol: str) -> torch.Tensor:
        t = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
        n = len(self.class_names)
        if t.ndim < 2 or t.shape[0] not in (1, n):
            raise ValueError(
                f"volume {vol!r}: {what} has shape {tuple(t.shape)}; expected channel-first [C, *spatial] with "
                f"C = 1 (label map) or {n} (one channel per class)."
            )
        return t[0] if t.shape[0] == 1 else torch.argmax(t, dim=0)

    def _spacing(self, label: Any, pred: Any, batch_item: Mapping, vol: str) -> list[float]:
        for x in (label, pred):
            if isinstance(x, MetaTensor) and any(k in x.meta for k in ("filename_or_obj", "pixdim", "original_affine")):
                return [float(v) for v in affine_to_spacing(x.affine.detach().cpu(), r=x.ndim - 1).reshape(-1)]
        meta = batch_item.get(f"{self.label_key}_meta_dict")
        if isinstance(meta, Mapping) and "pixdim" in meta:
            return [float(v) for v in torch.as_tensor(meta["pixdim"]).reshape(-1)[1 : torch.as_tensor(label).ndim]]
        if self.spacing is not None:
            return list(self.spacing)
        raise ValueError(
            f"volume {vol!r}: no voxel spacing found (no MetaTensor geometry, no "
            f"'{self.label_key}_meta_dict' pixdim); pass spacing= to VolumeMetricsWriter."
        )

    def _volume_id(self, batch_item: Mapping, label: Any) -> str:
        if batch_item.get(self.id_key) is not None:
            return str(_first(batch_item[self.id_key]))
        for x in (label, batch_item.get(self.image_key)):
            if isinstance(x, MetaTensor) and x.meta.get("filename_or_obj"):
                return str(_first(x.meta["filename_or_obj"]))
        return f"volume_{len(self.rows_by_volume) + 1:04d}"
