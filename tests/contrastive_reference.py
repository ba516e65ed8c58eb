"""A slow, loop-based transcription of the local pixel-contrastive loss (Eq. 3-4 of Chaitanya et al.).

Written from the paper's equations and the semantics documented in ``plc_monai.losses``, not from
the vectorised code: Python loops over pairs, images, classes and anchor pixels, explicit class
means, explicit cosine similarity, ``-log(exp(.) / sum exp(.))`` without log-sum-exp tricks. It is
used by the tests as an independent oracle and by ``benchmarks/loss_speed.py`` as the baseline.

Anchor roles: with ``matching="intra"`` every image ``x`` is one role ``(x, x' = None)``; with
``matching="inter"`` every pair ``p = (i, j)`` gives two roles, ``(i, j)`` (side 0) and ``(j, i)``
(side 1). Explicit anchors are given as a dict keyed ``(x, k)`` (intra) or ``(p, side, k)``
(inter) holding the flat pixel indices of the anchors of class ``k`` for that role.
"""

from __future__ import annotations

import torch


def _cosine(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``u^T v / (||u|| ||v||)`` for two 1D vectors."""
    return torch.dot(u, v) / (torch.sqrt(torch.dot(u, u)) * torch.sqrt(torch.dot(v, v)))


def reference_terms(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    matching: str = "inter",
    temperature: float = 0.1,
    include_background: bool = False,
    pairs: list[tuple[int, int]] | None = None,
    anchors: dict[tuple[int, ...], list[int]] | None = None,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """All loss terms, one 0-d tensor each (differentiable w.r.t. ``features``).

    Args:
        features: ``[B, D, *spatial]`` raw embeddings.
        labels: ``[B, *spatial]`` integer class ids.
        num_classes: ``C``, background included.
        matching: ``"intra"`` or ``"inter"``.
        temperature: ``tau``.
        include_background: whether class 0 is an anchor/negative class.
        pairs: inter only; list of ``(i, j)``; defaults to ``(p, p + B // 2)``.
        anchors: explicit anchor pixels per role and class (see the module docstring). When None,
            anchors are every pixel of the class (``num_samples=None``) or ``num_samples`` pixels
            drawn with replacement, one ``torch.randint`` per (role, class).
        num_samples: see ``anchors``.
        generator: for the draws when ``num_samples`` is set.

    Returns:
        The list of terms.
    """
    batch, dim = features.shape[0], features.shape[1]
    images = features.reshape(batch, dim, -1).unbind(0)  # one [D, N] tensor per image
    label_rows = labels.reshape(batch, -1)
    classes = list(range(0 if include_background else 1, num_classes))

    # explicit class means over all pixels of each class, raw features
    pixels_of: list[dict[int, torch.Tensor]] = []
    means: list[dict[int, torch.Tensor]] = []
    for x in range(batch):
        pixels_of.append({})
        means.append({})
        for k in classes:
            where = torch.nonzero(label_rows[x] == k).flatten()
            if where.numel() == 0:
                continue
            pixels_of[x][k] = where
            means[x][k] = images[x][:, where].sum(dim=1) / where.numel()

    roles: list[tuple[tuple[int, ...], int, int | None]] = []  # (anchor key prefix, x, partner)
    if matching == "intra":
        for x in range(batch):
            roles.append(((x,), x, None))
    elif matching == "inter":
        if pairs is None:
            half = batch // 2
            pairs = [(p, p + half) for p in range(half)]
        for p, (i, j) in enumerate(pairs):
            roles.append(((p, 0), i, j))
            roles.append(((p, 1), j, i))
    else:
        raise ValueError(matching)

    terms: list[torch.Tensor] = []
    for key, x, partner in roles:
        for c in classes:
            if c not in pixels_of[x]:
                continue
            if anchors is not None:
                chosen = anchors[(*key, c)]
            elif num_samples is None:
                chosen = pixels_of[x][c].tolist()
            else:
                picks = torch.randint(pixels_of[x][c].numel(), (num_samples,), generator=generator)
                chosen = pixels_of[x][c][picks].tolist()
            for i in chosen:
                if int(label_rows[x, i]) != c:
                    raise AssertionError(f"anchor pixel {i} of image {x} is not of class {c}")
                z = images[x][:, i]
                own = {k: torch.exp(_cosine(z, m) / temperature) for k, m in means[x].items()}
                if partner is None:
                    if len(own) < 2:  # no negative class: no term
                        continue
                    terms.append(-torch.log(own[c] / sum(own.values())))
                    continue
                other = {k: torch.exp(_cosine(z, m) / temperature) for k, m in means[partner].items()}
                if not (set(own) | set(other)) - {c}:  # no negative class in either image: no term
                    continue
                den = sum(own.values()) + sum(other.values())
                terms.append(-torch.log(own[c] / den))
                if c in other:
                    terms.append(-torch.log(other[c] / den))
    return terms


def reference_loss(*args, reduction: str = "mean", **kwargs) -> torch.Tensor:
    """``reference_terms`` reduced by ``"mean"`` (plain mean over terms, 0 when there are none) or ``"sum"``."""
    terms = reference_terms(*args, **kwargs)
    if not terms:
        features = args[0] if args else kwargs["features"]
        return features.new_zeros(()).detach()
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    if reduction == "sum":
        return total
    return total / len(terms)

