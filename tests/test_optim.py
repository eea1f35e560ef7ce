import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from timm.optim import RMSpropTF

from mobilenet_train.model import mobilenet_v1
from mobilenet_train.optim import build_optimizer, build_scheduler, classify_params, param_groups, scaled_lr


def _optim_cfg(**kw):
    base = dict(name="rmsprop", lr=0.045, scale_lr=True, decay=0.9, momentum=0.9, eps=1.0, weight_decay=4e-5,
                decay_depthwise=False, decay_norm=False, decay_bias=False, label_smoothing=0.0, lr_batch=256,
                lr_scaling="linear", betas=[0.9, 0.999])
    return OmegaConf.create({**base, **kw})


def test_param_kinds():
    model = mobilenet_v1(alpha=0.25)
    kinds = classify_params(model)
    assert kinds["stem.conv.weight"] == "weight"
    assert kinds["blocks.0.dw.conv.weight"] == "depthwise"
    assert kinds["blocks.0.pw.conv.weight"] == "weight"
    assert kinds["blocks.0.dw.bn.weight"] == "norm" and kinds["blocks.0.dw.bn.bias"] == "norm"
    assert kinds["fc.weight"] == "weight" and kinds["fc.bias"] == "bias"
    assert sum(k == "depthwise" for k in kinds.values()) == 13


def test_no_decay_on_depthwise_bn_bias_by_default():
    model = mobilenet_v1(alpha=0.25)
    decay, no_decay = param_groups(model, _optim_cfg())
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    named = dict(model.named_parameters())
    assert id(named["blocks.3.pw.conv.weight"]) in ids and id(named["fc.weight"]) in ids
    assert id(named["blocks.3.dw.conv.weight"]) not in ids
    assert id(named["blocks.3.dw.bn.weight"]) not in ids and id(named["fc.bias"]) not in ids
    assert len(decay["params"]) == 1 + 13 + 1  # stem, 13 pointwise, fc
    assert len(decay["params"]) + len(no_decay["params"]) == len(named)


def test_decay_switches():
    model = mobilenet_v1(alpha=0.25)
    groups = param_groups(model, _optim_cfg(decay_depthwise=True, decay_norm=True, decay_bias=True))
    assert len(groups) == 1 and len(groups[0]["params"]) == len(list(model.parameters()))


def test_lr_scales_with_global_batch():
    assert scaled_lr(_optim_cfg(), 1024) == pytest.approx(0.18)
    assert scaled_lr(_optim_cfg(scale_lr=False), 1024) == pytest.approx(0.045)
    opt = build_optimizer(mobilenet_v1(alpha=0.25), _optim_cfg(), 512)
    assert isinstance(opt, RMSpropTF) and opt.param_groups[0]["lr"] == pytest.approx(0.09)


def tf_rmsprop_reference(var, grads, lr, rho, momentum, eps, wd):
    """TensorFlow's ApplyRMSProp (tf.compat.v1.train.RMSPropOptimizer), in NumPy.

    The mean-square slot starts at ones; epsilon is added inside the square root; the
    learning rate multiplies the gradient before it enters the momentum accumulator.
    L2 weight decay (TF-slim's regularizer) adds wd * var to the gradient.
    """
    var = var.astype(np.float64).copy()
    ms = np.ones_like(var)
    mom = np.zeros_like(var)
    for g in grads:
        g = g + wd * var
        ms = rho * ms + (1 - rho) * g * g
        mom = momentum * mom + lr * g / np.sqrt(ms + eps)
        var = var - mom
    return var


@pytest.mark.parametrize("wd", [0.0, 4e-5])
def test_rmsprop_tf_matches_tensorflow_update(wd):
    rng = np.random.default_rng(0)
    init = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) * s for s in (1.0, 3.0, 0.1, 2.0, 0.5)]
    p = torch.nn.Parameter(torch.tensor(init, dtype=torch.float64))
    opt = build_optimizer(torch.nn.Linear(1, 1), _optim_cfg(lr=0.1, scale_lr=False, weight_decay=wd), 256)
    opt = type(opt)([p], lr=0.1, alpha=0.9, eps=1.0, momentum=0.9, weight_decay=wd)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    expected = tf_rmsprop_reference(init, grads, lr=0.1, rho=0.9, momentum=0.9, eps=1.0, wd=wd)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    # And it is not plain PyTorch RMSprop (which starts the mean square at zero).
    q = torch.nn.Parameter(torch.tensor(init, dtype=torch.float64))
    torch_opt = torch.optim.RMSprop([q], lr=0.1, alpha=0.9, eps=1.0, momentum=0.9)
    for g in grads:
        q.grad = torch.tensor(g)
        torch_opt.step()
    assert not np.allclose(q.detach().numpy(), expected)


def _lrs(sched_cfg, epochs, steps_per_epoch, lr=0.1):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = build_scheduler(opt, OmegaConf.create(sched_cfg), epochs, steps_per_epoch)
    out = []
    for step in range(epochs * steps_per_epoch + 1):
        sched.step_update(num_updates=step)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_exponential_schedule_is_tf_slim_staircase():
    lrs = _lrs(dict(name="exponential", warmup_epochs=0, warmup_lr_init=0.0, decay_epochs=2, decay_rate=0.94), 8, 10)
    assert lrs[0] == pytest.approx(0.1) and lrs[19] == pytest.approx(0.1)
    assert lrs[20] == pytest.approx(0.094) and lrs[39] == pytest.approx(0.094)
    assert lrs[60] == pytest.approx(0.1 * 0.94 ** 3)


def test_warmup_is_linear_then_decays():
    lrs = _lrs(dict(name="exponential", warmup_epochs=1, warmup_lr_init=0.0, decay_epochs=2, decay_rate=0.94), 5, 10)
    assert lrs[0] == pytest.approx(0.0)
    assert lrs[5] == pytest.approx(0.05)
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[30] == pytest.approx(0.094)  # decay counted from the end of the warmup


def test_cosine_schedule_reaches_min_lr():
    lrs = _lrs(dict(name="cosine", warmup_epochs=1, warmup_lr_init=0.0, min_lr=0.001), 6, 10)
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[35] == pytest.approx(0.001 + 0.5 * (0.1 - 0.001) * (1 + math.cos(math.pi * 25 / 50)))
    assert lrs[60] == pytest.approx(0.001, abs=1e-6)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_lr_scales_linearly_or_with_the_square_root():
    assert scaled_lr(_optim_cfg(lr=0.256, lr_batch=4096), 1024) == pytest.approx(0.064)
    assert scaled_lr(_optim_cfg(lr=0.002, lr_batch=4096, lr_scaling="sqrt"), 1024) == pytest.approx(0.001)


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_adamw_and_lamb_are_timms_with_our_decay_groups(name):
    from timm.optim import create_optimizer_v2

    model = mobilenet_v1(alpha=0.25)
    cfg = _optim_cfg(name=name, lr=0.002, scale_lr=False, weight_decay=0.01, decay_depthwise=True, eps=1e-8,
                     betas=[0.6, 0.999])
    opt = build_optimizer(model, cfg, 256)
    assert type(opt) is type(create_optimizer_v2(model, opt=name, lr=0.002))
    decayed, plain = opt.param_groups
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.01, 0.0)
    assert decayed["betas"] == (0.6, 0.999) and decayed["eps"] == 1e-8 and decayed["lr"] == 0.002
    kinds = classify_params(model)
    named = dict(model.named_parameters())
    assert {id(p) for p in plain["params"]} == {id(named[n]) for n, k in kinds.items() if k in ("norm", "bias")}
