import pytest

from mobilenet_train.complexity import complexity_of, count_mult_adds, measure_complexity
from mobilenet_train.model import ModelArgs, mobilenet_v1


def test_alpha_1_224_matches_paper():
    c = complexity_of(ModelArgs(alpha=1.0, resolution=224))
    assert round(c["mult_adds"] / 1e6) == 569
    assert round(c["params"] / 1e6, 1) == 4.2
    assert c["mult_adds"] == 568_740_352  # conv + FC multiply-accumulates, counted from the module


@pytest.mark.parametrize("alpha,resolution,mult_adds_m,params_m", [
    (0.75, 224, 325, 2.6), (0.5, 224, 149, 1.3), (0.25, 224, 41, 0.5),
    (1.0, 192, 418, 4.2), (1.0, 128, 186, 4.2),
])
def test_paper_grid_points(alpha, resolution, mult_adds_m, params_m):
    c = complexity_of(ModelArgs(alpha=alpha, resolution=resolution))
    assert round(c["mult_adds"] / 1e6) == mult_adds_m
    assert round(c["params"] / 1e6, 1) == params_m


def test_counts_match_a_real_module_and_a_hand_formula():
    model = mobilenet_v1(alpha=0.25, resolution=64, num_classes=10)
    measured = measure_complexity(model, 64)
    assert measured == complexity_of(ModelArgs(alpha=0.25, resolution=64, num_classes=10))
    # Hand count of the first two layers: stem 32x32x8x27, depthwise 32x32x8x9, pointwise 32x32x8x16 ...
    hand = 0
    size, in_ch = 32, 8
    hand += size * size * 8 * 27
    for out_base, stride in ([(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5
                             + [(1024, 2), (1024, 1)]):
        size = size // stride
        out_ch = int(0.25 * out_base)
        hand += size * size * in_ch * 9 + size * size * in_ch * out_ch
        in_ch = out_ch
    hand += in_ch * 10
    assert measured["mult_adds"] == hand
    assert model.training  # counting must not leave the model in eval mode
    assert count_mult_adds(model.eval(), 64) == hand
