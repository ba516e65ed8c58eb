"""The paper's reported test Dice (Chaitanya et al., Section V), for the results tables.

Every value is the mean foreground Dice on the real test set over the paper's runs. The keys are this
package's method names where a method has a config, and descriptive names for the paper's other rows.
"""

from __future__ import annotations

__all__ = [
    "PAPER_TABLE_I", "PAPER_TABLE_II", "PAPER_BENCHMARK", "PAPER_ABLATIONS_ACDC", "METHOD_TABLE", "METHOD_LABELS",
    "paper_dice",
]

_SETTINGS = ("tr1", "tr2", "tr8")
_DATASETS = ("acdc", "prostate", "mmwhs")


def _rows(table: dict[str, tuple[float, ...]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: 9 values}`` (ACDC, Prostate, MMWHS; |X_L| = 1, 2, 8) -> ``{dataset: {setting: {method: dice}}}``."""
    out: dict[str, dict[str, dict[str, float]]] = {d: {s: {} for s in _SETTINGS} for d in _DATASETS}
    for method, values in table.items():
        for i, value in enumerate(values):
            out[_DATASETS[i // 3]][_SETTINGS[i % 3]][method] = value
    return out


# TABLE I of the paper (random network initialization). Columns: ACDC |X_L|=1,2,8; Prostate 1,2,8; MMWHS 1,2,8.
_TABLE_I_ROWS: dict[str, tuple[float, ...]] = {
    "baseline": (0.614, 0.702, 0.844, 0.489, 0.550, 0.636, 0.451, 0.637, 0.787),
    "self_training": (0.690, 0.749, 0.860, 0.551, 0.598, 0.680, 0.563, 0.691, 0.801),
    "mixup": (0.695, 0.785, 0.863, 0.543, 0.593, 0.661, 0.561, 0.690, 0.796),
    "data_augment": (0.731, 0.786, 0.865, 0.585, 0.597, 0.667, 0.529, 0.661, 0.785),
    "adversarial_training": (0.536, 0.654, 0.791, 0.487, 0.544, 0.586, 0.482, 0.655, 0.779),
    "noisy_student": (0.632, 0.737, 0.836, 0.556, 0.601, 0.668, 0.593, 0.685, 0.780),
    "plc_intra": (0.761, 0.845, 0.881, 0.571, 0.613, 0.693, 0.599, 0.721, 0.803),
    "plc_inter": (0.759, 0.831, 0.883, 0.578, 0.618, 0.696, 0.572, 0.719, 0.811),
}

# TABLE II of the paper (concurrent contrastive works). Same column order. Its last row, the proposed
# joint training (inter), repeats TABLE I's plc_inter row.
_TABLE_II_ROWS: dict[str, tuple[float, ...]] = {
    "two_step_supervised": (0.568, 0.717, 0.841, 0.561, 0.596, 0.686, 0.509, 0.661, 0.795),
    "two_step_semi": (0.622, 0.747, 0.843, 0.568, 0.606, 0.688, 0.559, 0.704, 0.804),
    "joint_pl_in_seg": (0.420, 0.603, 0.749, 0.435, 0.495, 0.545, 0.470, 0.510, 0.638),
    "plc_inter": (0.759, 0.831, 0.883, 0.578, 0.618, 0.696, 0.572, 0.719, 0.811),
}

#: ``{dataset: {setting: {method: mean foreground Dice}}}`` from TABLE I.
PAPER_TABLE_I = _rows(_TABLE_I_ROWS)
#: ``{dataset: {setting: {method: mean foreground Dice}}}`` from TABLE II.
PAPER_TABLE_II = _rows(_TABLE_II_ROWS)

#: TABLE I, "Benchmark": training with a large labeled set, ``{dataset: (|X_L|, Dice)}``.
PAPER_BENCHMARK: dict[str, tuple[int, float]] = {"acdc": (78, 0.912), "prostate": (20, 0.697), "mmwhs": (8, 0.787)}

#: Which table of the paper reports each method (for the results tables' column header).
METHOD_TABLE: dict[str, str] = {
    **{m: "Table I" for m in _TABLE_I_ROWS},
    **{m: "Table II" for m in _TABLE_II_ROWS if m not in _TABLE_I_ROWS},
}

#: Row labels of the results tables, in the paper's words.
METHOD_LABELS: dict[str, str] = {
    "baseline": "Baseline (random init.)",
    "self_training": "Self-training [9]",
    "plc_intra": "Pseudo-labels joint Tr. (intra)",
    "plc_inter": "Pseudo-labels joint Tr. (inter)",
    "joint_pl_in_seg": "Joint Tr. with pseudo-labels in seg. loss",
    "two_step_semi": "Two step Tr. [26] (semi-sup)",
    "two_step_supervised": "Two step Tr. [26] (fully-sup)",
}

# TABLES IV-VII of the paper: ACDC ablations of the proposed method, ``{matching: {value: (|X_L|=1, 2, 8)}}``.
PAPER_ABLATIONS_ACDC: dict[str, dict[str, dict[float, tuple[float, float, float]]]] = {
    # TABLE IV: lambda_cont
    "lambda_cont": {
        "intra": {1.0: (0.763, 0.817, 0.886), 0.1: (0.761, 0.845, 0.881), 0.01: (0.731, 0.801, 0.890)},
        "inter": {1.0: (0.749, 0.849, 0.898), 0.1: (0.759, 0.831, 0.883), 0.01: (0.722, 0.815, 0.888)},
    },
    # TABLE V: number of pseudo-labeling steps (15000 joint iterations in total)
    "num_rounds": {
        "intra": {2: (0.764, 0.836, 0.878), 3: (0.761, 0.845, 0.881), 4: (0.771, 0.813, 0.884)},
        "inter": {2: (0.728, 0.839, 0.895), 3: (0.759, 0.831, 0.883), 4: (0.777, 0.830, 0.888)},
    },
    # TABLE VI: positive pixel representations sampled per class and image |S_c(x)|
    "num_samples": {
        "intra": {3: (0.761, 0.845, 0.881), 5: (0.772, 0.847, 0.882), 10: (0.752, 0.818, 0.885)},
        "inter": {3: (0.759, 0.831, 0.883), 5: (0.750, 0.847, 0.882), 10: (0.732, 0.862, 0.897)},
    },
    # TABLE VII: pseudo-label consistency threshold (0: no filter)
    "quality_threshold": {
        "intra": {0.0: (0.761, 0.845, 0.881), 0.9: (0.748, 0.841, 0.890), 0.8: (0.762, 0.839, 0.888),
                  0.7: (0.769, 0.856, 0.878)},
        "inter": {0.0: (0.759, 0.831, 0.883), 0.9: (0.779, 0.832, 0.891), 0.8: (0.791, 0.860, 0.882),
                  0.7: (0.732, 0.847, 0.889)},
    },
}


def paper_dice(dataset: str, setting: str, method: str) -> float | None:
    """The paper's mean foreground Dice (TABLE I, else TABLE II) for ``method`` on ``dataset`` with ``setting``.

    Args:
        dataset: ``acdc``, ``prostate`` or ``mmwhs`` (case-insensitive).
        setting: ``tr1``, ``tr2`` or ``tr8``.
        method: a method name of this package (e.g. ``plc_inter``) or of the paper's other rows
            (``mixup``, ``data_augment``, ``adversarial_training``, ``noisy_student``).

    Returns:
        The Dice value, or ``None`` when the paper reports no such number.
    """
    for table in (PAPER_TABLE_I, PAPER_TABLE_II):
        value = table.get(str(dataset).lower(), {}).get(str(setting), {}).get(method)
        if value is not None:
            return value
    return None
