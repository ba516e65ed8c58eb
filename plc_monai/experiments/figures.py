"""Figures of an experiment: t-SNE of pixel features (Fig. 3), Dice per pseudo-labeling round (Fig. 4), example slices.

PNGs written atomically with matplotlib's Agg backend; networks, preprocessing and volumes are read the way the
run's bundle configs read them (the t-SNE colours come from the labels the unlabeled volumes have on disk).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plc_monai.atomic_files import atomic_write
from plc_monai.data.slice_pool import build_slice_pool
from plc_monai.experiments.runs import RunSpec, bundle_parser

__all__ = [
    "load_run_network", "load_run_volumes", "sample_pixels_per_class", "tsne_figure", "round_curve_figure",
    "example_slices_figure",
]

_CLASS_COLOURS = ("#000000", "#e41a1c", "#4daf4a", "#377eb8", "#ff7f00", "#984ea3", "#a65628", "#f781bf")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` as PNG (atomically), then close it."""
    path = atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    _pyplot().close(fig)
    return path


def load_run_network(run: RunSpec, ckpt_file: str | os.PathLike | None = None, device: str = "cpu") -> torch.nn.Module:
    """The run's ``network_def`` with the weights of ``ckpt_file`` (default ``models/model.pt``), in eval mode."""
    ckpt = Path(ckpt_file) if ckpt_file is not None else run.ckpt_dir / "model.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"model file {ckpt} of run {run.name} does not exist; train the run first.")
    network = bundle_parser(run.config_files, run.settings).get_parsed_content("network_def")
    network.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    return network.to(device).eval()


def load_run_volumes(run: RunSpec, subset: str, max_volumes: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Preprocessed volumes of the run's split, with their labels, and the class names.

    Args:
        run: a trained run (its ``split.json`` must exist).
        subset: ``"unlabeled"`` or ``"test"``; unlabeled volumes without a label file on disk are
            skipped, and when none has one the test volumes are used instead.
        max_volumes: at most this many volumes (in split order).

    Returns:
        ``(items, class_names)``: items with ``image`` ``[1, H, W, S]``, ``label`` ``[1, H, W, S]`` and ``id``.

    Raises:
        FileNotFoundError: when the run has no ``split.json``.
        ValueError: for an unknown ``subset``.
    """
    from plc_monai.data.readers import read_datalist
    from plc_monai.data.splits import load_split, select

    if subset not in ("unlabeled", "test"):
        raise ValueError(f"subset must be 'unlabeled' or 'test', got {subset!r}.")
    split_file = run.run_dir / "split.json"
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file} does not exist; the run's training writes it.")
    split = load_split(split_file)
    parser = bundle_parser(run.config_files, run.settings)
    options = parser.get_parsed_content("reader_options") or {}
    datalist = read_datalist(parser["dataset_name"], run.settings["dataset_dir"], validate=False, **options)
    ids = list(split.unlabeled if subset == "unlabeled" else split.test)
    entries = [e for e in select(datalist, ids, run.settings["dataset_dir"]) if "label" in e]
    if not entries and subset == "unlabeled":
        entries = [e for e in select(datalist, list(split.test), run.settings["dataset_dir"]) if "label" in e]
    preprocessing = parser.get_parsed_content("train#preprocessing")
    items = [preprocessing(e) for e in entries[: max(0, int(max_volumes))]]
    return items, list(parser["class_names"])


def sample_pixels_per_class(
    labels: torch.Tensor, classes: Sequence[int], per_class: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flat indices of up to ``per_class`` random pixels of each class in ``classes``.

    Args:
        labels: integer label maps of any shape (flattened in C order).
        classes: the class indices to sample.
        per_class: pixels per class (fewer when a class has fewer pixels).
        generator: random generator for reproducible samples.

    Returns:
        ``[M]`` long indices into ``labels.reshape(-1)``, grouped by class in the order of ``classes``.

    Raises:
        ValueError: when ``per_class < 1``.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}.")
    flat = labels.reshape(-1)
    picked = [torch.empty(0, dtype=torch.long)]
    for k in classes:
        pixels = torch.nonzero(flat == k).flatten()
        picked.append(pixels[torch.randperm(pixels.numel(), generator=generator)[:per_class]])
    return torch.cat(picked)


def _first_run_slices(runs: Mapping[str, RunSpec], subset: str, max_volumes: int, figure: str) -> tuple[Any, ...]:
    """``(first run, class names, images [N, 1, H, W], labels [N, H, W] long, volume index [N])`` of the slices
    of the first run's volumes; ``ValueError`` when ``runs`` is empty or no volume of ``subset`` has a label file."""
    if not runs:
        raise ValueError(f"{figure} needs at least one run.")
    first = next(iter(runs.values()))
    items, class_names = load_run_volumes(first, subset, max_volumes)
    if not items:
        what = "unlabeled or test" if subset == "unlabeled" else "test"
        raise ValueError(f"run {first.name}: no {what} volume with a label file.")
    pool = build_slice_pool(items)
    return first, class_names, pool.images, pool.labels.long(), pool.volume_index


def tsne_figure(
    runs: Mapping[str, RunSpec], out_png: str | os.PathLike, num_volumes: int = 2, per_class: int = 200, seed: int = 0
) -> Path:
    """Fig. 3: t-SNE of backbone pixel features of unlabeled images, one panel per method, coloured by structure.

    The same pixels (from the first run's unlabeled volumes) are embedded for each run's final model.

    Args:
        runs: ``{panel title: run}``, e.g. ``{"self-training": ..., "proposed (inter)": ...}``.
        out_png: the PNG to write.
        num_volumes: unlabeled volumes to sample pixels from.
        per_class: pixels per structure.
        seed: seed of the pixel sample and of t-SNE.

    Raises:
        ValueError: when ``runs`` is empty or the volumes hold no foreground pixel.
    """
    from sklearn.manifold import TSNE

    first, class_names, images, labels, _ = _first_run_slices(runs, "unlabeled", num_volumes, "tsne_figure")
    classes = list(range(1, len(class_names)))
    idx = sample_pixels_per_class(labels, classes, per_class, torch.Generator().manual_seed(seed))
    if idx.numel() < 3:
        raise ValueError(f"run {first.name}: the sampled volumes hold {idx.numel()} foreground pixels; need >= 3.")
    pixel_labels = labels.reshape(-1)[idx].numpy()
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4.6), squeeze=False)
    for ax, (title, run) in zip(axes[0], runs.items()):
        backbone = load_run_network(run).backbone  # the common network c_theta: [N, F, H, W] features
        with torch.no_grad():
            feats = torch.cat([backbone(images[i : i + 16]) for i in range(0, images.shape[0], 16)])
        points = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])[idx].numpy()
        perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3.0)))
        xy = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(points)
        for k in classes:
            sel = pixel_labels == k
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=5, alpha=0.7, color=_CLASS_COLOURS[k % len(_CLASS_COLOURS)],
                           label=class_names[k])
        ax.set(title=f"{title} ({run.combo})", xticks=[], yticks=[])
    axes[0][-1].legend(loc="best", markerscale=3, fontsize=8)
    fig.suptitle("t-SNE of pixel features of the common network (unlabeled images, coloured by ground truth)")
    return _save_png(fig, out_png)


def round_curve_figure(
    curves: Mapping[str, Mapping[str, Mapping[int, float]]], out_png: str | os.PathLike, title: str = ""
) -> Path:
    """Fig. 4: test mean foreground Dice after each pseudo-labeling round, per method.

    Args:
        curves: ``{method label: {combo: {round: Dice}}}``; round 0 is the warm-up model.
        out_png: the PNG to write.
        title: figure title.

    Raises:
        ValueError: when ``curves`` holds no value.
    """
    if not any(any(per_combo for per_combo in c.values()) for c in curves.values()):
        raise ValueError("round_curve_figure: no round results to plot.")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (method, per_combo) in enumerate(curves.items()):
        colour = f"C{i}"
        rounds = sorted({r for values in per_combo.values() for r in values})
        for values in per_combo.values():
            xs = sorted(values)
            ax.plot(xs, [values[r] for r in xs], color=colour, alpha=0.3, linewidth=1)
        means = [float(np.mean([v[r] for v in per_combo.values() if r in v])) for r in rounds]
        ax.plot(rounds, means, color=colour, marker="o", linewidth=2, label=f"{method} (mean of {len(per_combo)})")
    ax.set(xlabel="pseudo-labeling round (0: warm-up model)", ylabel="test mean foreground Dice", title=title)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_png(fig, out_png)


def example_slices_figure(
    runs: Mapping[str, RunSpec], out_png: str | os.PathLike, num_examples: int = 3, max_volumes: int = 3
) -> Path:
    """Example test slices (largest foreground, one per volume first): image, ground truth, each run's prediction.

    Args:
        runs: ``{column title: run}``, e.g. ``{"baseline": ..., "proposed (inter)": ...}``.
        out_png: the PNG to write.
        num_examples: rows of the figure.
        max_volumes: test volumes to choose slices from.

    Raises:
        ValueError: when ``runs`` is empty or there is no labeled test volume.
    """
    from plc_monai.handlers import predict_labels

    _, class_names, images, labels, volumes = _first_run_slices(runs, "test", max_volumes, "example_slices_figure")
    area = (labels > 0).flatten(1).sum(1).tolist()
    ranked = []  # (rank of the slice's foreground area in its volume, -area, slice): each volume's best slice first
    for slices in torch.arange(len(area)).split(torch.bincount(volumes).tolist()):
        ranked += [(r, -area[s], s) for r, s in enumerate(sorted(slices.tolist(), key=lambda s: -area[s]))]
    chosen = torch.tensor([s for *_, s in sorted(ranked)[:num_examples]], dtype=torch.long)
    predictions = {title: predict_labels(load_run_network(run), images[chosen], 16) for title, run in runs.items()}
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap([_CLASS_COLOURS[k % len(_CLASS_COLOURS)] for k in range(len(class_names))])
    cols = 2 + len(runs)
    fig, axes = plt.subplots(len(chosen), cols, figsize=(2.6 * cols, 2.6 * len(chosen)), squeeze=False)
    for row, s in enumerate(chosen.tolist()):
        panels = [("image", None), ("ground truth", labels[s])] + [(t, p[row]) for t, p in predictions.items()]
        for col, (title, mask) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(images[s, 0].numpy().T, cmap="gray", origin="lower")
            if mask is not None:
                m = mask.numpy().T
                ax.imshow(np.ma.masked_where(m == 0, m), cmap=cmap, vmin=0, vmax=len(class_names) - 1,
                          alpha=0.5, origin="lower", interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            if row == 0:
                ax.set_title(title, fontsize=9)
    fig.suptitle("test slices: " + ", ".join(f"{class_names[k]}" for k in range(1, len(class_names))), fontsize=9)
    return _save_png(fig, out_png)
