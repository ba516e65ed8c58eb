"""ContrastiveHeadUNet: shapes, train/inference state-dict compatibility, TorchScript round trip, input checks."""

from __future__ import annotations

import io

import pytest
import torch

from plc_monai.networks import ContrastiveHeadUNet

SMALL = (4, 8, 8, 8, 8, 8)  # the paper's depth (6 levels, 5 poolings) at reduced width, for speed


@pytest.mark.parametrize("size,classes", [(192, 4), (160, 8)])
def test_output_shapes_at_paper_sizes(size: int, classes: int) -> None:
    net = ContrastiveHeadUNet(num_classes=classes, channels=SMALL).eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        logits = net(x)
        logits2, emb = net.forward_train(x)
    assert logits.shape == (2, classes, size, size)
    assert emb.shape == (2, 16, size, size)
    torch.testing.assert_close(logits, logits2)


def test_paper_widths_parameter_count_and_heads() -> None:
    net = ContrastiveHeadUNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    # 6 encoder blocks x 2 + 5 decoder blocks x 3 (up-conv + 2) + 3 seg-head + 2 contrastive-head convolutions
    assert len(convs) == 12 + 15 + 3 + 2
    assert [c.out_channels for c in convs[:12:2]] == [16, 32, 64, 128, 128, 128]
    # the last layer of each head has no BN/ReLU after it
    assert isinstance(net.seg_head[-1].conv, torch.nn.Conv2d) and len(list(net.seg_head[-1].children())) == 1
    assert net.contrastive_head[-1].conv.kernel_size == (1, 1)
    assert net.contrastive_head[-1].conv.out_channels == 16


def test_state_dict_shared_between_training_and_inference() -> None:
    torch.manual_seed(0)
    trained = ContrastiveHeadUNet(num_classes=4, channels=SMALL)
    opt = torch.optim.SGD(trained.parameters(), lr=0.1)
    x = torch.randn(4, 1, 64, 64)
    logits, emb = trained.forward_train(x)  # a training step through both heads
    (logits.mean() + emb.mean()).backward()
    opt.step()
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    deployed = ContrastiveHeadUNet(num_classes=4, channels=SMALL)
    missing = deployed.load_state_dict(torch.load(buffer), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    trained.eval(), deployed.eval()
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), trained(x))


def test_torchscript_round_trip(tmp_path) -> None:
    net = ContrastiveHeadUNet(num_classes=3, channels=SMALL).eval()
    x = torch.randn(1, 1, 64, 64)
    scripted = torch.jit.script(net)
    path = tmp_path / "model.ts"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
        l_logits, l_emb = loaded.forward_train(x)
        torch.testing.assert_close(l_emb, net.forward_train(x)[1])


def test_three_dimensional_variant() -> None:
    net = ContrastiveHeadUNet(spatial_dims=3, num_classes=3, channels=(4, 8, 8)).eval()
    with torch.no_grad():
        logits, emb = net.forward_train(torch.randn(1, 1, 16, 16, 8))
    assert logits.shape == (1, 3, 16, 16, 8) and emb.shape == (1, 16, 16, 16, 8)


def test_indivisible_input_size_is_a_clear_error() -> None:
    net = ContrastiveHeadUNet(channels=SMALL)
    with pytest.raises(ValueError, match="not divisible by 32"):
        net(torch.randn(1, 1, 100, 96))
    with pytest.raises(ValueError, match="expected input of shape"):
        net(torch.randn(1, 96, 96))


@pytest.mark.parametrize(
    "kwargs,match",
    [({"spatial_dims": 1}, "spatial_dims"), ({"channels": (8,)}, "at least 2"), ({"num_classes": 1}, "num_classes"),
     ({"embedding_dim": 0}, "embedding_dim")],
)
def test_constructor_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ContrastiveHeadUNet(**kwargs)
