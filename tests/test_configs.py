from pathlib import Path

import pytest

from mobilenet_train.errors import UserError
from mobilenet_train.model import ModelArgs

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "experiment").glob("*.yaml"))


def test_required_experiments_exist():
    required = {"alpha_1.0", "alpha_0.75", "alpha_0.5", "alpha_0.25", "res_224", "res_192", "res_160", "res_128",
                "quickstart", "paper"}
    assert required <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(compose, name):
    cfg = compose(f"+experiment={name}")
    args = ModelArgs.from_config(cfg.model)  # resolves and validates the model section
    assert args.num_classes == cfg.data.num_classes


def test_defaults_are_the_paper_network_and_optimizer(compose):
    cfg = compose()
    assert (cfg.model.alpha, cfg.model.resolution, cfg.model.variant) == (1.0, 224, "separable")
    assert cfg.optim.name == "rmsprop" and cfg.optim.eps == 1.0 and cfg.optim.decay == 0.9
    assert cfg.optim.weight_decay == 4e-5 and not cfg.optim.decay_depthwise
    assert cfg.optim.label_smoothing == 0.0
    assert cfg.data.name == "imagenet" and cfg.sched.decay_rate == 0.94 and cfg.sched.decay_epochs == 2
    assert "experiment" not in cfg


def test_experiments_compose_together(compose):
    cfg = compose("+experiment=[alpha_0.5,res_160]")
    assert cfg.model.alpha == 0.5 and cfg.model.resolution == 160
    cfg = compose("+experiment=alpha_0.75", "data=imagenet", "data.root=/datasets/imagenet", "optim=sgd")
    assert cfg.model.alpha == 0.75 and cfg.data.root == "/datasets/imagenet" and cfg.optim.name == "sgd"


def test_quickstart_uses_embedded_shapes(compose):
    cfg = compose("+experiment=quickstart")
    assert cfg.data.name == "shapes" and cfg.model.num_classes == 10


def test_unknown_override_is_a_user_error(compose):
    with pytest.raises(UserError, match="model.alpah"):
        compose("model.alpah=0.5")
    with pytest.raises(UserError, match="experiment"):
        compose("+experiment=alpha_9")
