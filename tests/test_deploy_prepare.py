"""deploy/prepare.py: the model as deployed."""

from __future__ import annotations

import torch

from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.deploy.prepare import deploy_model, pad_channels_last


def test_batchnorm_is_folded(arch_ckpts):
    model = deploy_model(load_checkpoint(arch_ckpts[(0.25, 64)]))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_channels_last_tf_same_padding_gives_the_same_numbers(arch_ckpts):
    model = deploy_model(load_checkpoint(arch_ckpts[(0.25, 96)]))
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        want = model(x)
        got = pad_channels_last(model)(x)
    assert torch.allclose(got, want, atol=1e-5)
