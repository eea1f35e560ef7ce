import pytest
import torch
from torch import nn

from mobilenet_train.errors import UserError
from mobilenet_train.model import BLOCKS, DepthwiseSeparable, ModelArgs, TFSamePad, mobilenet_v1


@pytest.mark.parametrize("alpha,resolution", [(1.0, 224), (0.75, 192), (0.5, 160), (0.25, 128), (0.35, 96)])
def test_output_shape_and_feature_map(alpha, resolution):
    model = mobilenet_v1(alpha=alpha, resolution=resolution, num_classes=17).eval()
    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
    assert logits.shape == (2, 17)
    # Five stride-2 stages: 224 -> 7, 128 -> 4; channels int(alpha * 1024).
    assert feats.shape == (2, int(alpha * 1024), -(-resolution // 32), -(-resolution // 32))


def test_table1_structure_alpha_1():
    model = mobilenet_v1(alpha=1.0)
    assert model.stem.conv.out_channels == 32 and model.stem.conv.stride == (2, 2)
    assert len(model.blocks) == 13
    widths, strides = [], []
    in_ch = 32
    for block in model.blocks:
        assert isinstance(block, DepthwiseSeparable)
        dw, pw = block.dw.conv, block.pw.conv
        assert dw.groups == dw.in_channels == dw.out_channels == in_ch and dw.kernel_size == (3, 3)
        assert pw.kernel_size == (1, 1) and pw.groups == 1
        # BN + ReLU after every conv.
        assert isinstance(block.dw.bn, nn.BatchNorm2d) and isinstance(block.pw.act, nn.ReLU)
        widths.append(pw.out_channels)
        strides.append(dw.stride[0])
        in_ch = pw.out_channels
    assert widths == [64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert [(c, s) for c, s in BLOCKS] == list(zip(widths, strides))
    assert model.fc.in_features == 1024 and model.fc.out_features == 1000


def test_width_multiplier_and_rounding():
    assert ModelArgs(alpha=0.75).channels(32) == 24
    assert ModelArgs(alpha=0.75).channels(1024) == 768
    assert ModelArgs(alpha=0.35).channels(64) == 22  # int(22.4): the paper's rule
    assert ModelArgs(alpha=0.35, round_to=8).channels(64) == 24
    assert ModelArgs(alpha=0.35, round_to=8).channels(32) == 16  # never 10% below alpha * C
    model = mobilenet_v1(alpha=0.35, round_to=8)
    assert all(b.pw.conv.out_channels % 8 == 0 for b in model.blocks)


def test_tf_same_padding_pads_bottom_right():
    pad = TFSamePad(3, 2)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = pad(x)
    assert y.shape == (1, 1, 5, 5)
    assert torch.equal(y[0, 0, :4, :4], x[0, 0])  # nothing added top/left
    assert y[0, 0, 4].abs().sum() == 0 and y[0, 0, :, 4].abs().sum() == 0
    # Odd input: symmetric, like TensorFlow.
    assert TFSamePad(3, 2)(torch.zeros(1, 1, 5, 5)).shape == (1, 1, 7, 7)
    assert TFSamePad(3, 1)(torch.zeros(1, 1, 4, 4)).shape == (1, 1, 6, 6)


def test_tf_same_and_symmetric_share_weights_but_differ():
    sym = mobilenet_v1(alpha=0.25, resolution=64, num_classes=5).eval()
    tf = mobilenet_v1(alpha=0.25, resolution=64, num_classes=5, padding="tf_same").eval()
    tf.load_state_dict(sym.state_dict())  # same parameter names and shapes
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = sym.forward_features(x), tf.forward_features(x)
    assert a.shape == b.shape
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()


def test_relu6_and_dropout_options():
    model = mobilenet_v1(alpha=0.25, activation="relu6", dropout=0.2)
    assert isinstance(model.stem.act, nn.ReLU6)
    assert model.dropout.p == 0.2


@pytest.mark.parametrize("bad", [dict(alpha=0), dict(alpha=-1), dict(resolution=16), dict(padding="valid"),
                                 dict(activation="gelu"), dict(variant="resnet")])
def test_bad_model_args_raise_user_error(bad):
    with pytest.raises(UserError):
        mobilenet_v1(**bad)


def test_norm_none_carries_conv_biases_and_leaves_default_keys_alone():
    default = mobilenet_v1(alpha=0.25, resolution=64).state_dict()
    assert not any(k.endswith("conv.bias") for k in default)  # the default network is unchanged
    assert "stem.bn.running_mean" in default and "blocks.12.pw.bn.weight" in default
    folded = mobilenet_v1(alpha=0.25, resolution=64, norm="none")
    keys = folded.state_dict().keys()
    assert {k for k in keys if ".bn." in k} == set()
    assert {k.removesuffix(".weight") for k in keys if k.endswith("conv.weight")} == \
        {k.removesuffix(".bias") for k in keys if k.endswith("conv.bias")}
    assert isinstance(folded.stem.bn, nn.Identity)
    assert folded(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(UserError, match="model.norm"):
        ModelArgs(norm="layer").validate()
