"""Tests of the batched augmentations in :mod:`plc_monai.data.augment`."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose

from plc_monai.data.augment import (
    PAPER_AFFINE_OPTIONS,
    IntensityBatchParams,
    RandBrightnessContrastBatchd,
    RandSpatialBatchd,
    SpatialBatchParams,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _blocky_label(batch: int, size: tuple[int, ...], block: int = 12, classes: int = 4, seed: int = 0) -> torch.Tensor:
    """``[B, *size]`` int64 piecewise-constant label with ``block``-pixel blocks of random classes."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes, (batch, 1) + tuple(s // block for s in size), generator=gen)
    return F.interpolate(coarse.float(), size=size, mode="nearest")[:, 0].long()


def _boundary(label: torch.Tensor) -> torch.Tensor:
    """``[B, *spatial]`` bool: pixels whose 3x3(x3) neighbourhood holds more than one class."""
    lab = label.float().unsqueeze(1)
    pool = F.max_pool2d if label.ndim == 3 else F.max_pool3d
    return (pool(lab, 3, 1, 1) != -pool(-lab, 3, 1, 1))[:, 0]


def _no_affine(**kwargs) -> RandSpatialBatchd:
    """A spatial transform whose only randomness is what ``kwargs`` turns on."""
    base = dict(affine_mode="compose", rotate_range=0.0, scale_range=(1.0, 1.0), flip_prob=0.0, rotate45_prob=0.0,
                elastic_prob=0.0)
    base.update(kwargs)
    return RandSpatialBatchd(**base)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int64])
def test_label_alignment_and_dtype(device, label_dtype):
    label = _blocky_label(16, (96, 96), block=24).to(device)
    data = {"image": label.float().unsqueeze(1), "label": label.to(label_dtype)}  # label without channel axis
    aug = RandSpatialBatchd(affine_mode="compose", rotate45_prob=0.5, elastic_prob=1.0).set_random_state(seed=3)
    out = aug(data)
    assert out["label"].dtype == label_dtype and out["label"].shape == label.shape
    assert out["image"].dtype == torch.float32 and out["image"].shape == (16, 1, 96, 96)
    assert out["label"].device.type == device
    assert set(out["label"].unique().tolist()) <= set(label.unique().tolist())
    agree = out["label"].long() == out["image"][:, 0].round().long()
    assert agree.float().mean().item() > 0.97
    # Away from class boundaries (3x3 neighbourhood of one class) the two must agree almost everywhere;
    # the remaining misses are where the bilinear image blends with the zero padding.
    assert agree[~_boundary(out["label"])].float().mean().item() > 0.995
    # The geometry really changed, so agreement is not trivially from an identity map.
    assert (out["label"].long() != label).float().mean().item() > 0.05


def test_flip_alone_equals_torch_flip():
    x = torch.rand(4, 2, 40, 56)
    y = _blocky_label(4, (40, 56), block=4).unsqueeze(1)
    aug = RandSpatialBatchd()
    aug.params = replace(SpatialBatchParams.identity(4), flip=torch.ones(4, dtype=torch.bool))
    out = aug({"image": x, "label": y}, randomize=False)
    assert torch.equal(out["label"], torch.flip(y, dims=[-1]))
    # bilinear on exact pixel centres: float32 rounding of the sampling coordinates only.
    torch.testing.assert_close(out["image"], torch.flip(x, dims=[-1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("angle,k", [(90.0, 1), (180.0, 2), (270.0, 3), (-90.0, -1)])
def test_right_angle_rotation_equals_rot90(angle, k):
    x = torch.rand(3, 1, 48, 48)
    y = _blocky_label(3, (48, 48), block=4).unsqueeze(1)
    aug = RandSpatialBatchd()
    aug.params = replace(SpatialBatchParams.identity(3), angle=torch.full((3,), angle, dtype=torch.float64))
    out = aug({"image": x, "label": y}, randomize=False)
    assert torch.equal(out["label"], torch.rot90(y, k, dims=(-2, -1)))
    torch.testing.assert_close(out["image"], torch.rot90(x, k, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_rotate45_option_drawn_per_sample():
    """Paper mode restricted to the k*45 option: multiples of 90 degrees equal ``torch.rot90`` per sample."""
    aug = RandSpatialBatchd(affine_choice_weights=(0, 0, 0, 1, 0), elastic_prob=0.0).set_random_state(seed=11)
    x = torch.rand(32, 1, 32, 32)
    y = _blocky_label(32, (32, 32), block=4).unsqueeze(1)
    out = aug({"image": x, "label": y})
    angles = aug.params.angle
    assert torch.all(torch.remainder(angles, 45.0) == 0) and angles.unique().numel() > 3
    right = [b for b in range(32) if angles[b] % 90 == 0]
    assert len(right) >= 4
    for b in right:  # the loop is in the test, not in the transform
        k = int(angles[b].item() // 90)
        assert torch.equal(out["label"][b], torch.rot90(y[b], k, dims=(-2, -1)))
        torch.testing.assert_close(out["image"][b], torch.rot90(x[b], k, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_prob_zero_is_exact_identity():
    x = torch.rand(8, 1, 32, 32)
    y = _blocky_label(8, (32, 32), block=4)
    out = RandSpatialBatchd(prob=0.0, elastic_prob=1.0).set_random_state(seed=0)({"image": x, "label": y})
    assert torch.equal(out["image"], x) and torch.equal(out["label"], y)
    out = RandBrightnessContrastBatchd(prob=0.0).set_random_state(seed=0)({"image": x})
    assert torch.equal(out["image"], x)


def test_unchanged_samples_pass_through_exactly():
    """Samples with identity geometry (prob miss, 'identity' option without elastic) are bit-exact copies."""
    aug = RandSpatialBatchd(prob=0.5, elastic_prob=0.3).set_random_state(seed=5)
    x = torch.rand(64, 1, 24, 24)
    out = aug({"image": x, "label": x.round().long()})
    unchanged = aug.params.unchanged
    assert 0 < int(unchanged.sum()) < 64
    assert torch.equal(out["image"][unchanged], x[unchanged])
    changed = (out["image"] != x).flatten(1).any(1)
    assert torch.equal(changed, ~unchanged)


def test_per_sample_independence():
    x = torch.rand(1, 1, 48, 48).expand(8, -1, -1, -1).contiguous()
    aug = RandSpatialBatchd(affine_mode="compose", elastic_prob=1.0).set_random_state(seed=1)
    out = aug({"image": x, "label": (x * 3).long()})["image"].flatten(1)
    dist = torch.cdist(out, out)
    assert (dist + torch.eye(8) * 1e9).min() > 1e-3
    params = aug.params
    assert params.angle.unique().numel() == 8 and params.scale.unique().numel() == 8

    inten = RandBrightnessContrastBatchd().set_random_state(seed=1)
    y = inten({"image": x})["image"]
    assert y.mean(dim=(1, 2, 3)).unique().numel() == 8
    shared = RandBrightnessContrastBatchd(per_sample=False).set_random_state(seed=1)
    shared({"image": x})
    assert shared.params.delta.unique().numel() == 1 and shared.params.factor.unique().numel() == 1


def test_reproducibility_and_resume():
    x = torch.rand(6, 1, 40, 40)
    data = {"image": x, "label": (x * 4).long()}

    def run(seed):
        # The segmentation branch with the paper's intensity change (the ranges of the authors' discarded graph).
        intensity = RandBrightnessContrastBatchd(brightness=0.1, contrast=(0.8, 1.2), clip=None)
        return Compose([RandSpatialBatchd(), intensity]).set_random_state(seed=seed)(data)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])

    # Unseeded transforms take their seed from torch's global RNG (torch.manual_seed / set_determinism).
    torch.manual_seed(123)
    first_unseeded = RandSpatialBatchd(elastic_prob=1.0)(data)["image"]
    torch.manual_seed(123)
    assert torch.equal(RandSpatialBatchd(elastic_prob=1.0)(data)["image"], first_unseeded)

    aug = RandSpatialBatchd(elastic_prob=1.0).set_random_state(seed=2)
    state = aug.generator.get_state()  # what the trainer checkpoints
    first = aug(data)["image"]
    aug.generator.set_state(state)
    assert torch.equal(aug(data)["image"], first)
    aug.set_random_state(state=np.random.RandomState(4))
    other = RandSpatialBatchd(elastic_prob=1.0).set_random_state(state=np.random.RandomState(4))
    assert torch.equal(aug(data)["image"], other(data)["image"])


def test_brightness_contrast_math_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 16, 12, generator=gen, dtype=torch.float64) * 1.2 - 0.1
    delta = torch.tensor([0.25, -0.3, 0.0, 0.1], dtype=torch.float64)
    factor = torch.tensor([1.3, 0.7, 1.0, 1.1], dtype=torch.float64)
    apply = torch.tensor([True, True, True, False])
    aug = RandBrightnessContrastBatchd()
    aug.params = IntensityBatchParams(apply=apply, delta=delta, factor=factor)
    out = aug({"image": x}, randomize=False)["image"].numpy()
    arr = x.numpy()
    for b in range(4):
        if not apply[b]:
            np.testing.assert_array_equal(out[b], arr[b])
            continue
        for c in range(2):
            bright = arr[b, c] + delta[b].item()  # tf.image.random_brightness, then random_contrast
            m = bright.mean()
            expected = np.clip((bright - m) * factor[b].item() + m, 0.0, 1.5)
            np.testing.assert_allclose(out[b, c], expected, atol=1e-6)


def test_intensity_draw_ranges_and_clip():
    aug = RandBrightnessContrastBatchd().set_random_state(seed=0)
    x = torch.rand(256, 1, 8, 8) * 2.5 - 0.5
    out = aug({"image": x})["image"]
    assert out.min() >= 0.0 and out.max() <= 1.5
    p = aug.params
    assert p.delta.abs().max() <= 0.3 and p.delta.min() < -0.2 and p.delta.max() > 0.2
    assert p.factor.min() >= 0.7 and p.factor.max() <= 1.3
    assert RandBrightnessContrastBatchd(clip=None)({"image": x})["image"].max() > 1.5


def test_paper_mode_option_frequencies():
    aug = RandSpatialBatchd().set_random_state(seed=0)
    n = 20000
    aug.randomize(n)
    p = aug.params
    is45 = (torch.remainder(p.angle, 45.0) == 0) & (p.angle != 0)
    small_rotation = (p.angle != 0) & ~is45
    assert p.angle[small_rotation].abs().max() <= 15.0
    # rotate (1/5); rotate45 with k != 0 (1/5 * 7/8); scale (1/5); flip option with p=0.5 (1/10); elastic 1/2.
    expected = {"rotate": 0.2, "rotate45": 0.2 * 7 / 8, "scale": 0.2, "flip": 0.1, "elastic": 0.5}
    measured = {
        "rotate": small_rotation.double().mean().item(),
        "rotate45": is45.double().mean().item(),
        "scale": (p.scale != 1).double().mean().item(),
        "flip": p.flip.double().mean().item(),
        "elastic": p.elastic.flatten(1).ne(0).any(1).double().mean().item(),
    }
    for name, value in expected.items():
        assert abs(measured[name] - value) < 0.02, (name, measured[name], value)
    # one option per sample: no sample has two affine parts.
    parts = small_rotation.int() + is45.int() + (p.scale != 1).int() + p.flip.int()
    assert parts.max() <= 1
    assert len(PAPER_AFFINE_OPTIONS) == 5


@pytest.mark.parametrize("shape", [(96, 96), (64, 128)])
def test_elastic_displacement_is_sigma_pixels(shape):
    sigma, g, n = 5.0, 3, 256
    aug = _no_affine(elastic_prob=1.0, elastic_sigma=sigma, elastic_grid=g).set_random_state(seed=0)
    aug.randomize(n)
    grid = aug.sampling_grid(aug.params, shape)
    ident = aug.sampling_grid(SpatialBatchParams.identity(1, 2, g), shape)
    # grid_sample order (x = W, y = H); back to pixels with the align_corners=False scale n / 2.
    disp_w = (grid[..., 0] - ident[..., 0]) * shape[1] / 2
    disp_h = (grid[..., 1] - ident[..., 1]) * shape[0] / 2
    # The field is the bicubic F.interpolate of the coarse pixel offsets (channel 0 = H, 1 = W).
    field = F.interpolate(aug.params.elastic, size=shape, mode="bicubic", align_corners=False)
    torch.testing.assert_close(disp_h, field[:, 0], atol=2e-3, rtol=0)
    torch.testing.assert_close(disp_w, field[:, 1], atol=2e-3, rtol=0)
    # Independent expectation: the upsampling is linear, so the field's variance at a pixel is
    # sigma^2 * sum of squared interpolation weights; get the weights by upsampling unit impulses.
    impulses = torch.eye(g * g).view(g * g, 1, g, g)
    weights = F.interpolate(impulses, size=shape, mode="bicubic", align_corners=False)[:, 0]
    rms_expected = sigma * weights.pow(2).sum(0).mean().sqrt().item()
    for disp in (disp_w, disp_h):
        rms = disp.pow(2).mean().sqrt().item()
        assert abs(rms - rms_expected) / rms_expected < 0.08, (rms, rms_expected)
        mean_abs = disp.abs().mean().item()
        assert 0.6 * sigma * math.sqrt(2 / math.pi) < mean_abs < 1.05 * sigma * math.sqrt(2 / math.pi)


def test_elastic_pixel_exact_on_coarse_constant_field():
    """A constant coarse field of +d pixels along W samples from d pixels to the right (2 d / W normalised)."""
    x = torch.arange(40, dtype=torch.float32).repeat(2, 1, 30, 1)  # value = column index
    aug = RandSpatialBatchd()
    elastic = torch.zeros(2, 2, 3, 3)
    elastic[:, 1] = 3.0
    aug.params = replace(SpatialBatchParams.identity(2), elastic=elastic)
    out = aug({"image": x, "label": x.long()}, randomize=False)
    torch.testing.assert_close(out["image"][..., :30], x[..., 3:33], atol=1e-4, rtol=0)


def test_validation_errors():
    aug = RandSpatialBatchd()
    y8 = torch.zeros(2, 1, 8, 8).long()
    with pytest.raises(ValueError, match="'image'.*\\(4, 32, 32\\)"):
        aug({"image": torch.rand(4, 32, 32), "label": torch.zeros(4, 32, 32, dtype=torch.long)})
    with pytest.raises(ValueError, match="'label'.*\\(4, 1, 16, 16\\)"):
        aug({"image": torch.rand(4, 1, 32, 32), "label": torch.zeros(4, 1, 16, 16, dtype=torch.long)})
    with pytest.raises(ValueError, match="'label'.*nearest"):
        RandSpatialBatchd(mode="bilinear")({"image": torch.rand(2, 1, 8, 8), "label": torch.zeros(2, 1, 8, 8).long()})
    with pytest.raises(ValueError, match="'image'.*complex"):
        RandSpatialBatchd(mode="nearest")({"image": torch.zeros(2, 1, 8, 8, dtype=torch.complex64), "label": y8})
    with pytest.raises(ValueError, match="bicubic"):
        volume = {"image": torch.rand(2, 1, 8, 8, 8), "label": torch.zeros(2, 1, 8, 8, 8)}
        RandSpatialBatchd(mode=("bicubic", "nearest"))(volume)
    with pytest.raises(ValueError, match="prob"):
        RandSpatialBatchd(prob=1.5)
    with pytest.raises(ValueError, match="affine_mode"):
        RandSpatialBatchd(affine_mode="random")
    with pytest.raises(ValueError, match="'image'.*floating"):
        RandBrightnessContrastBatchd()({"image": torch.zeros(2, 1, 8, 8, dtype=torch.long)})
    with pytest.raises(KeyError):
        aug({"image": torch.rand(2, 1, 8, 8)})
    assert "label" not in RandSpatialBatchd(allow_missing_keys=True)({"image": torch.rand(2, 1, 8, 8)})


def test_metatensor_inference_mode_and_config():
    x = MetaTensor(torch.rand(4, 1, 32, 32))
    y = MetaTensor(_blocky_label(4, (32, 32), block=4).unsqueeze(1))
    parser = ConfigParser(
        {
            "aug": {
                "_target_": "Compose",
                "transforms": [
                    {"_target_": "plc_monai.data.augment.RandSpatialBatchd", "keys": ["image", "label"],
                     "mode": ["bilinear", "nearest"], "elastic_prob": 1.0},
                    {"_target_": "plc_monai.data.augment.RandBrightnessContrastBatchd", "keys": "image"},
                ],
            }
        }
    )
    aug = parser.get_parsed_content("aug")
    assert isinstance(aug, Compose)
    aug.set_random_state(seed=0)
    with torch.inference_mode():
        out = aug({"image": x, "label": y, "name": "batch"})
    assert type(out["image"]) is torch.Tensor and type(out["label"]) is torch.Tensor
    assert out["name"] == "batch" and out["label"].dtype == y.dtype
    assert torch.isfinite(out["image"]).all()


def test_3d_affine_flip_and_alignment():
    x = torch.rand(2, 1, 16, 20, 6)
    y = (x * 3).long()
    aug = RandSpatialBatchd()
    aug.params = replace(SpatialBatchParams.identity(2, spatial_dims=3), flip=torch.ones(2, dtype=torch.bool))
    out = aug({"image": x, "label": y}, randomize=False)
    assert torch.equal(out["label"], torch.flip(y, dims=[-2]))  # W is spatial axis 1
    torch.testing.assert_close(out["image"], torch.flip(x, dims=[-2]), atol=1e-5, rtol=0)
    label = _blocky_label(4, (32, 32, 16), block=8)
    aug3 = RandSpatialBatchd(affine_mode="compose", elastic_prob=1.0, elastic_sigma=2.0).set_random_state(seed=0)
    out = aug3({"image": label.float().unsqueeze(1), "label": label})
    assert aug3.params.elastic.shape == (4, 3, 3, 3, 3)
    assert (out["label"] != label).float().mean() > 0.05
    agree = out["label"] == out["image"][:, 0].round().long()
    assert agree[~_boundary(out["label"])].float().mean() > 0.995


@pytest.mark.parametrize("batch", [2, 64])
def test_whole_batch_is_resampled_with_one_grid_sample_per_key(batch, monkeypatch):
    """What makes the augmentation fast: no per-slice work, one ``grid_sample`` per key whatever the batch size."""
    calls: list[tuple[int, ...]] = []
    grid_sample = F.grid_sample

    def counting(input, grid, *args, **kwargs):
        calls.append(tuple(input.shape))
        return grid_sample(input, grid, *args, **kwargs)

    monkeypatch.setattr(F, "grid_sample", counting)
    data = {"image": torch.rand(batch, 1, 48, 48), "label": _blocky_label(batch, (48, 48)).unsqueeze(1)}
    spatial = RandSpatialBatchd(affine_mode="compose", elastic_prob=1.0).set_random_state(seed=0)
    out = RandBrightnessContrastBatchd().set_random_state(seed=0)(spatial(data))
    assert out["image"].shape == (batch, 1, 48, 48)
    assert [shape[0] for shape in calls] == [batch, batch]  # image and label, each as a whole batch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x = torch.rand(8, 1, 64, 64)
    y = _blocky_label(8, (64, 64), block=4).unsqueeze(1)
    cpu = Compose([RandSpatialBatchd(elastic_prob=1.0)]).set_random_state(seed=3)({"image": x, "label": y})
    gpu_aug = Compose([RandSpatialBatchd(elastic_prob=1.0)]).set_random_state(seed=3)
    gpu = gpu_aug({"image": x.cuda(), "label": y.cuda()})
    assert gpu["image"].is_cuda and gpu["label"].dtype == y.dtype
    torch.testing.assert_close(gpu["image"].cpu(), cpu["image"], atol=1e-3, rtol=0)
    assert (gpu["label"].cpu() == cpu["label"]).float().mean() > 0.999
    c = Compose([RandBrightnessContrastBatchd()]).set_random_state(seed=1)({"image": x.cuda()})["image"]
    expected = Compose([RandBrightnessContrastBatchd()]).set_random_state(seed=1)({"image": x})["image"]
    torch.testing.assert_close(c.cpu(), expected)
