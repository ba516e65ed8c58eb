"""Tests for PixelContrastiveLoss, checked against the loop transcription in contrastive_reference.py."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contrastive_reference import reference_loss, reference_terms  # noqa: E402

from plc_monai.losses import PixelContrastiveLoss  # noqa: E402

SPATIAL = {"2d": (5, 6), "3d": (3, 4, 5)}


def _inputs(
    batch: int, dim: int, spatial: tuple[int, ...], num_classes: int, seed: int = 0, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn((batch, dim, *spatial), generator=g, dtype=dtype)
    labels = torch.randint(0, num_classes, (batch, 1, *spatial), generator=g)
    return features, labels


def _reference_anchors(loss: PixelContrastiveLoss, labels: torch.Tensor, pairs=None, seed: int = 0) -> dict:
    """Convert ``sample_anchors`` output (documented row layout) into the reference's anchor dict."""
    sample = loss.sample_anchors(labels, pairs=pairs, generator=torch.Generator().manual_seed(seed))
    n_rows = sample.rows.shape[0]
    anchors = {}
    for r in range(n_rows):
        for kpos, k in enumerate(loss.candidate_classes):
            if not bool(sample.valid[r, kpos]):
                continue
            if loss.matching == "intra":
                key = (r, k)
            else:
                key = (r % (n_rows // 2), r // (n_rows // 2), k)
            anchors[key] = sample.pixels[r, kpos].tolist()
    return anchors


def _pairs_list(pairs: torch.Tensor | None) -> list[tuple[int, int]] | None:
    return None if pairs is None else [tuple(p) for p in pairs.tolist()]


# ---------------------------------------------------------------- agreement with the loop transcription
@pytest.mark.parametrize("matching", ["intra", "inter"])
@pytest.mark.parametrize("space", ["2d", "3d"])
@pytest.mark.parametrize("num_classes", [2, 4, 8])
@pytest.mark.parametrize("include_background", [False, True])
def test_all_pixels_matches_reference(matching, space, num_classes, include_background):
    features, labels = _inputs(4, 5, SPATIAL[space], num_classes, seed=num_classes)
    kwargs = dict(matching=matching, temperature=0.1, include_background=include_background)
    loss = PixelContrastiveLoss(num_classes, num_samples=None, reduction="none", **kwargs)

    feats_vec = features.clone().requires_grad_(True)
    terms = loss(feats_vec, labels)
    feats_ref = features.clone().requires_grad_(True)
    ref = reference_terms(feats_ref, labels[:, 0], num_classes, **kwargs)

    assert terms.ndim == 1 and terms.numel() == len(ref)
    if not ref:
        return
    ref_t = torch.stack(ref)
    torch.testing.assert_close(terms.sort().values, ref_t.sort().values, rtol=1e-10, atol=1e-10)
    terms.mean().backward()
    ref_t.mean().backward()
    torch.testing.assert_close(feats_vec.grad, feats_ref.grad, rtol=1e-8, atol=1e-10)

    mean_loss = PixelContrastiveLoss(num_classes, num_samples=None, **kwargs)(features, labels)
    sum_loss = PixelContrastiveLoss(num_classes, num_samples=None, reduction="sum", **kwargs)(features, labels)
    torch.testing.assert_close(mean_loss, ref_t.mean().detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sum_loss, ref_t.sum().detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("matching", ["intra", "inter"])
@pytest.mark.parametrize("space", ["2d", "3d"])
@pytest.mark.parametrize("num_classes", [2, 4, 8])
@pytest.mark.parametrize("include_background", [False, True])
def test_sampled_anchors_match_reference(matching, space, num_classes, include_background):
    features, labels = _inputs(4, 5, SPATIAL[space], num_classes, seed=10 + num_classes)
    kwargs = dict(matching=matching, temperature=0.2, include_background=include_background)
    loss = PixelContrastiveLoss(num_classes, num_samples=3, **kwargs)
    anchors = _reference_anchors(loss, labels, seed=7)

    feats_vec = features.clone().requires_grad_(True)
    value = loss(feats_vec, labels, generator=torch.Generator().manual_seed(7))
    feats_ref = features.clone().requires_grad_(True)
    ref = reference_loss(feats_ref, labels[:, 0], num_classes, anchors=anchors, **kwargs)
    torch.testing.assert_close(value, ref.detach(), rtol=1e-10, atol=1e-12)
    value.backward()
    if ref.requires_grad:
        ref.backward()
        torch.testing.assert_close(feats_vec.grad, feats_ref.grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("matching", ["intra", "inter"])
@pytest.mark.parametrize("num_samples", [3, None])
def test_float32_over_several_pixel_blocks_matches_reference(matching, num_samples):
    """float32 features on an image of several anchor-search blocks plus padding (40 x 37 pixels); with every
    pixel an anchor the similarities take the batched-GEMM branch. Terms and gradients against the loop in float64."""
    features, labels = _inputs(2, 6, (40, 37), 4, seed=11, dtype=torch.float32)
    loss = PixelContrastiveLoss(4, matching=matching, num_samples=num_samples, reduction="none")
    anchors = None if num_samples is None else _reference_anchors(loss, labels, seed=5)
    feats = features.clone().requires_grad_(True)
    terms = loss(feats, labels, generator=torch.Generator().manual_seed(5))
    assert terms.dtype == torch.float32
    terms.mean().backward()
    feats_ref = features.double().requires_grad_(True)
    ref = torch.stack(reference_terms(feats_ref, labels[:, 0], 4, matching=matching, anchors=anchors))
    ref.mean().backward()
    torch.testing.assert_close(terms.sort().values.double(), ref.sort().values.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats.grad.double(), feats_ref.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("num_samples", [None, 4])
def test_explicit_pairs_match_reference(num_samples):
    features, labels = _inputs(5, 4, (6, 6), 4, seed=3)
    pairs = torch.tensor([[0, 3], [1, 4], [3, 2], [2, 2]])  # image 3 in two pairs, image 2 with itself
    loss = PixelContrastiveLoss(4, matching="inter", num_samples=num_samples)
    if num_samples is None:
        anchors = None
        value = loss(features, labels, pairs=pairs)
    else:
        anchors = _reference_anchors(loss, labels, pairs=pairs, seed=5)
        value = loss(features, labels, pairs=pairs, generator=torch.Generator().manual_seed(5))
    ref = reference_loss(features, labels[:, 0], 4, "inter", 0.1, False, pairs=_pairs_list(pairs), anchors=anchors)
    torch.testing.assert_close(value, ref, rtol=1e-10, atol=1e-12)


def test_default_pairing_is_first_half_with_second_half():
    features, labels = _inputs(6, 4, (5, 5), 3, seed=4)
    loss = PixelContrastiveLoss(3, num_samples=None)
    explicit = loss(features, labels, pairs=torch.tensor([[0, 3], [1, 4], [2, 5]]))
    other = loss(features, labels, pairs=torch.tensor([[0, 1], [2, 3], [4, 5]]))
    torch.testing.assert_close(loss(features, labels), explicit)
    assert not torch.allclose(loss(features, labels), other)


# ---------------------------------------------------------------- sampling
def test_sampling_is_uniform_with_replacement_and_in_class():
    labels = torch.zeros((2, 1, 4, 4), dtype=torch.long)
    labels[0, 0, 0, :3] = 1  # 3 pixels of class 1
    labels[0, 0, 2:, :] = 2  # 8 pixels of class 2
    labels[1, 0, 1, 1] = 2  # a single pixel of class 2, class 1 absent
    loss = PixelContrastiveLoss(3, matching="intra", num_samples=8000)
    sample = loss.sample_anchors(labels, generator=torch.Generator().manual_seed(0))
    flat = labels.reshape(2, -1)
    assert sample.valid.tolist() == [[True, True], [False, True]]
    for r in range(2):
        for kpos, k in enumerate(loss.candidate_classes):
            if not sample.valid[r, kpos]:
                continue
            drawn = sample.pixels[r, kpos]
            assert bool((flat[r, drawn] == k).all())
            members = torch.nonzero(flat[r] == k).flatten()
            freq = torch.bincount(drawn, minlength=16)[members].double() / drawn.numel()
            expected = 1.0 / members.numel()
            assert float((freq - expected).abs().max()) < 0.25 * expected
    # with replacement: 3 draws from a 1-pixel class repeat the pixel
    small = PixelContrastiveLoss(3, matching="intra", num_samples=3).sample_anchors(labels)
    assert small.pixels[1, 1].tolist() == [5, 5, 5]


def test_sampling_is_uniform_across_pixel_blocks():
    """Anchors are found block by block (256 pixels): classes that straddle blocks and fill the padded last one."""
    height, width = 23, 29  # 667 pixels: two full blocks and a partial third
    flat = torch.zeros(height * width, dtype=torch.long)
    flat[250:263] = 1  # across the first block boundary
    flat[600:] = 1  # the end of the partial last block
    flat[torch.arange(3, 600, 7)] = 2
    flat[255] = flat[256] = flat[511] = flat[512] = 2  # the pixels on both sides of each boundary
    labels = flat.reshape(1, 1, height, width).repeat(2, 1, 1, 1)
    labels[1, 0] = labels[1, 0].flip(-1)  # a second, different image
    loss = PixelContrastiveLoss(3, matching="intra", num_samples=40000)
    sample = loss.sample_anchors(labels, generator=torch.Generator().manual_seed(1))
    ids = labels.reshape(2, -1)
    for r in range(2):
        for kpos, k in enumerate(loss.candidate_classes):
            drawn = sample.pixels[r, kpos]
            assert bool((ids[r, drawn] == k).all())
            members = torch.nonzero(ids[r] == k).flatten()
            counts = torch.bincount(drawn, minlength=ids.shape[1])[members].double()
            assert bool((counts > 0).all()), f"image {r}, class {k}: some pixels never drawn"
            expected = drawn.numel() / members.numel()
            assert float((counts - expected).abs().max()) < 0.25 * expected


def test_global_rng_and_generators_are_reproducible():
    features, labels = _inputs(4, 4, (8, 8), 4, seed=1)
    loss = PixelContrastiveLoss(4, num_samples=2)
    torch.manual_seed(123)
    first = loss(features, labels)
    torch.manual_seed(123)
    again = loss(features, labels)
    torch.testing.assert_close(first, again)
    values = {float(loss(features, labels)) for _ in range(5)}
    assert len(values) > 1  # draws change from call to call
    seeded = PixelContrastiveLoss(4, num_samples=2, generator=torch.Generator().manual_seed(9))
    reseeded = PixelContrastiveLoss(4, num_samples=2, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(seeded(features, labels), reseeded(features, labels))
    # the forward generator takes precedence over the constructor's
    torch.testing.assert_close(
        seeded(features, labels, generator=torch.Generator().manual_seed(3)),
        loss(features, labels, generator=torch.Generator().manual_seed(3)),
    )


# ---------------------------------------------------------------- gradients and invariances
@pytest.mark.parametrize("matching", ["intra", "inter"])
@pytest.mark.parametrize("num_samples", [None, 2])
def test_gradcheck(matching, num_samples):
    features, labels = _inputs(2, 3, (3, 4), 3, seed=2)
    features.requires_grad_(True)
    loss = PixelContrastiveLoss(3, matching=matching, num_samples=num_samples, temperature=0.5)

    def fn(f):
        return loss(f, labels, generator=torch.Generator().manual_seed(0))

    assert torch.autograd.gradcheck(fn, (features,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("matching", ["intra", "inter"])
@pytest.mark.parametrize("num_samples", [None, 3])
def test_invariant_to_positive_feature_scaling(matching, num_samples):
    features, labels = _inputs(4, 6, (7, 7), 4, seed=5, dtype=torch.float32)
    loss = PixelContrastiveLoss(4, matching=matching, num_samples=num_samples)
    base = loss(features, labels, generator=torch.Generator().manual_seed(1))
    scaled = loss(3.7 * features, labels, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(base, scaled, rtol=1e-5, atol=1e-6)


def test_reductions_are_consistent():
    features, labels = _inputs(4, 4, (6, 6), 4, seed=6)
    terms = PixelContrastiveLoss(4, num_samples=None, reduction="none")(features, labels)
    total = PixelContrastiveLoss(4, num_samples=None, reduction="sum")(features, labels)
    mean = PixelContrastiveLoss(4, num_samples=None, reduction="mean")(features, labels)
    torch.testing.assert_close(total, terms.sum())
    torch.testing.assert_close(mean, terms.mean())
    assert bool((terms > 0).all())


# ---------------------------------------------------------------- absent classes and edge cases
@pytest.mark.parametrize("matching", ["intra", "inter"])
@pytest.mark.parametrize("num_samples", [None, 3])
def test_background_only_batch_gives_zero_with_gradient(matching, num_samples):
    features = torch.randn(4, 5, 6, 6, requires_grad=True)
    labels = torch.zeros(4, 1, 6, 6, dtype=torch.long)
    value = PixelContrastiveLoss(4, matching=matching, num_samples=num_samples)(features, labels)
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert features.grad is not None and bool((features.grad == 0).all())
    terms = PixelContrastiveLoss(4, matching=matching, num_samples=num_samples, reduction="none")(features, labels)
    assert terms.numel() == 0


def test_absent_classes_are_skipped_not_nan():
    features, labels = _inputs(4, 5, (6, 6), 4, seed=8)
    labels[labels == 2] = 0  # class 2 absent everywhere
    labels[1] = 0  # image 1 background only
    for matching in ("intra", "inter"):
        feats = features.clone().requires_grad_(True)
        value = PixelContrastiveLoss(4, matching=matching, num_samples=None)(feats, labels)
        ref = reference_loss(features, labels[:, 0], 4, matching, 0.1, False)
        torch.testing.assert_close(value, ref, rtol=1e-10, atol=1e-12)
        value.backward()
        assert bool(torch.isfinite(feats.grad).all())


def test_anchors_without_negative_class_give_no_term():
    """A slice with a single foreground class has no negative for its anchors: with "intra" they give no
    term (it would be exactly 0 and dilute the mean); with "inter" only a partner holding another class
    gives them negatives."""
    features = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    labels = torch.zeros(2, 1, 5, 5, dtype=torch.long)
    labels[:, :, 1:3, 1:4] = 1  # 6 pixels of class 1 in both images
    intra = PixelContrastiveLoss(3, matching="intra", num_samples=None, reduction="none")
    inter = PixelContrastiveLoss(3, matching="inter", num_samples=None, reduction="none")
    assert intra(features, labels).numel() == 0
    assert inter(features, labels).numel() == 0
    # image 1 gains class 2: its own anchors now have a negative, and so do image 0's through the pair
    labels[1, :, 4, 4] = 2
    assert intra(features, labels).numel() == 6 + 1  # image 1's 6 class-1 anchors and 1 class-2 anchor
    assert inter(features, labels).numel() == 2 * 6 + 2 * 6 + 1  # class 1 in both images: two terms each
    # the mean is over the counted terms only: equal to the loop reference, which skips the same anchors
    for matching in ("intra", "inter"):
        value = PixelContrastiveLoss(3, matching=matching, num_samples=None)(features, labels)
        ref = reference_loss(features, labels[:, 0], 3, matching, 0.1, False)
        torch.testing.assert_close(value, ref)
        assert float(value) > 0


def test_inter_partner_missing_class_analytic():
    """Hand-built embeddings whose similarities are exactly 0 or 1/tau (tau = 0.1).

    Image 0 holds class 1 (embedding e1) and class 2 (e2); its partner, image 1, holds only class 1 (e1).
    - class-2 anchor of image 0: den = e^0 (m_1(x0)) + e^10 (m_2(x0)) + e^0 (m_1(x1)); no partner term.
    - class-1 anchor of image 0: den = e^10 + e^0 + e^10; two terms with numerator e^10.
    - class-1 anchor of image 1: den = e^10 (m_1(x1)) + e^10 + e^0 (m_1(x0), m_2(x0)); two terms.
    """
    features = torch.zeros(2, 2, 1, 4, dtype=torch.float64)
    labels = torch.tensor([[[[1, 2, 0, 0]]], [[[1, 0, 0, 0]]]])
    features[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    features[0, :, 0, 1] = torch.tensor([0.0, 1.0])
    features[1, :, 0, 0] = torch.tensor([2.0, 0.0])  # scale does not matter
    features[:, :, 0, 2:] = torch.tensor([0.3, -0.7], dtype=torch.float64)[:, None]  # background, ignored
    loss = PixelContrastiveLoss(3, matching="inter", num_samples=None, reduction="none")
    terms = loss(features, labels).tolist()
    two_positive = math.log(2.0 + math.exp(-10.0))  # -log(e^10 / (2 e^10 + 1))
    lone = math.log(1.0 + 2.0 * math.exp(-10.0))  # -log(e^10 / (e^10 + 2))
    assert sorted(terms) == pytest.approx(sorted([two_positive, two_positive, lone, two_positive, two_positive]))
    # with background as a class, every pixel is an anchor with two terms, except the class-2 pixel
    with_bg = PixelContrastiveLoss(3, matching="inter", num_samples=None, include_background=True, reduction="none")
    assert with_bg(features, labels).numel() == (2 * 4 - 1) + 2 * 4


@pytest.mark.parametrize("num_samples", [None, 3])
def test_one_hot_and_unbatched_channel_labels_equal_index_labels(num_samples):
    features, labels = _inputs(4, 5, (6, 7), 4, seed=11)
    loss = PixelContrastiveLoss(4, num_samples=num_samples)
    expected = loss(features, labels, generator=torch.Generator().manual_seed(2))
    onehot = torch.nn.functional.one_hot(labels[:, 0], 4).permute(0, 3, 1, 2)
    for lab in (onehot, onehot.float(), labels[:, 0], labels.float()):
        value = loss(features, lab, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(value, expected)


def test_autocast_bf16_gives_float32_close_to_fp32():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 16, kernel_size=3, padding=1)
    images = torch.randn(4, 1, 16, 16)
    labels = torch.randint(0, 4, (4, 1, 16, 16))
    loss = PixelContrastiveLoss(4, num_samples=None)
    reference = loss(net(images), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = net(images)
        assert features.dtype == torch.bfloat16
        value = loss(features, labels)
    assert value.dtype == torch.float32 and bool(torch.isfinite(value))
    torch.testing.assert_close(value, reference, rtol=2e-2, atol=2e-2)
    value.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in net.parameters())
    # the computation inside is float32: bf16 features cast to float32 outside autocast give the same value
    torch.testing.assert_close(value, loss(features.detach().float(), labels), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- learning signal
def test_separated_embedding_beats_random_and_optimisation_decreases_loss():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (4, 1, 12, 12), generator=g)
    separated = 5.0 * torch.nn.functional.one_hot(labels[:, 0], 4).permute(0, 3, 1, 2).float()
    noise = torch.randn((4, 4, 12, 12), generator=g)
    for matching in ("intra", "inter"):
        loss = PixelContrastiveLoss(4, matching=matching, num_samples=None)
        assert loss(separated, labels) < 0.5 * loss(noise, labels)

    features = torch.randn((4, 8, 12, 12), generator=g).requires_grad_(True)
    loss = PixelContrastiveLoss(4, matching="inter", num_samples=3, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam([features], lr=0.05)
    start = PixelContrastiveLoss(4, num_samples=None)(features, labels).item()
    for _ in range(60):
        opt.zero_grad()
        loss(features, labels).backward()
        opt.step()
    end = PixelContrastiveLoss(4, num_samples=None)(features, labels).item()
    assert end < 0.7 * start


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_classes=1), "num_classes"),
        (dict(num_classes=4, temperature=0.0), "temperature"),
        (dict(num_classes=4, temperature=-1.0), "temperature"),
        (dict(num_classes=4, num_samples=0), "num_samples"),
        (dict(num_classes=4, num_samples=1.5), "num_samples"),
        (dict(num_classes=4, num_samples=True), "num_samples"),
        (dict(num_classes=4, matching="cross"), "'cross'"),
        (dict(num_classes=4, reduction="avg"), "'avg'"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PixelContrastiveLoss(**kwargs)


def test_forward_validation():
    features, labels = _inputs(4, 3, (5, 5), 4, dtype=torch.float32)
    loss = PixelContrastiveLoss(4)
    bad = features.clone()
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        loss(bad, labels)
    bad[1, 0, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        loss(bad, labels)
    with pytest.raises(ValueError, match="batch size mismatch"):
        loss(features, labels[:2])
    with pytest.raises(ValueError, match="spatial shape mismatch"):
        loss(features, labels[..., :4])
    with pytest.raises(ValueError, match=r"\[0, 4\).*\[0, 4\]"):
        loss(features, torch.where(labels == 3, 4, labels))
    with pytest.raises(ValueError, match=r"\[-1, "):
        loss(features, torch.where(labels == 3, -1, labels))
    with pytest.raises(ValueError, match="integral"):
        loss(features, labels.float() + 0.5)
    not_onehot = torch.nn.functional.one_hot(labels[:, 0], 4).permute(0, 3, 1, 2).float()
    not_onehot[0, :, 0, 0] = 0.25
    with pytest.raises(ValueError, match="one-hot"):
        loss(features, not_onehot)
    with pytest.raises(ValueError, match="labels must be"):
        loss(features, labels[:, :, None])
    with pytest.raises(ValueError, match="features must be"):
        loss(features[0, 0], labels)
    with pytest.raises(ValueError, match="B=3"):
        loss(features[:3], labels[:3])
    with pytest.raises(ValueError, match="pairs must"):
        loss(features, labels, pairs=torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match="pairs must"):
        loss(features, labels, pairs=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="only used with matching='inter'"):
        PixelContrastiveLoss(4, matching="intra")(features, labels, pairs=torch.tensor([[0, 1]]))
    # odd batches are fine with explicit pairs or intra matching
    assert torch.isfinite(loss(features[:3], labels[:3], pairs=torch.tensor([[0, 1], [2, 0]])))
    assert torch.isfinite(PixelContrastiveLoss(4, matching="intra")(features[:3], labels[:3]))


def test_check_inputs_off_skips_value_checks_but_keeps_the_result() -> None:
    torch.manual_seed(0)
    features = torch.randn(4, 8, 16, 16)
    labels = torch.randint(0, 3, (4, 1, 16, 16))
    checked = PixelContrastiveLoss(3, num_samples=None)
    unchecked = PixelContrastiveLoss(3, num_samples=None, check_inputs=False)
    torch.testing.assert_close(unchecked(features, labels), checked(features, labels))
    bad = features.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        checked(bad, labels)
    assert not torch.isfinite(unchecked(bad, labels))  # no check, no exception: NaN propagates
