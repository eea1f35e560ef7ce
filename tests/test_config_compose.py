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
    required = {"finetune": "model.init=w.pt", "qat": "model.init=w.pt", "ssd_finetune": "model.init=w.pt",
                "embedding": "distill.teacher=t.pt"}
    cfg = compose(f"+experiment={name}", *([required[name]] if name in required else []))
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


@pytest.mark.parametrize("name,variant", [("mobilenet_v1_conv", "conv"), ("mobilenet_v1_shallow", "shallow")])
def test_variant_model_configs_honour_alpha_and_resolution(compose, name, variant):
    base = compose()
    cfg = compose(f"model={name}", "model.alpha=0.5", "model.resolution=160")
    assert set(cfg.model) == set(base.model)  # same keys as mobilenet_v1
    args = ModelArgs.from_config(cfg.model)
    assert (args.variant, args.alpha, args.resolution, args.num_classes) == (variant, 0.5, 160, 1000)


def test_table_experiments(compose):
    expected = {"table4_separable": ("separable", 1.0), "table4_conv": ("conv", 1.0),
                "table5_narrow": ("separable", 0.75), "table5_shallow": ("shallow", 1.0)}
    for name, (variant, alpha) in expected.items():
        cfg = compose(f"+experiment={name}")
        assert (cfg.model.variant, cfg.model.alpha, cfg.model.resolution, cfg.run_name) == (variant, alpha, 224, name)
    # With the paper's recipe in front, as the README shows.
    cfg = compose("+experiment=[paper,table4_conv]")
    assert cfg.model.variant == "conv" and cfg.trainer.epochs == 150 and cfg.optim.lr == 0.045


def test_paper_grid_sweeps_16_runs_into_readable_dirs(compose):
    cfg = compose("+experiment=[quickstart,paper_grid]")
    params = cfg.hydra.sweeper.params
    assert params["model.alpha"] == "1.0,0.75,0.5,0.25" and params["model.resolution"] == "224,192,160,128"
    assert cfg.hydra.sweep.subdir == "alpha=0.25,res=64"  # resolved per run, from its own model values
    assert cfg.data.name == "shapes"  # the sweep only adds the sweep: quickstart's data and recipe stay


def test_preflight_checks_every_swept_value(capsys):
    from mobilenet_train.config import preflight

    with pytest.raises(UserError, match="model.resolution=16"):
        preflight(["-m", "+experiment=[quickstart,paper_grid]", "model.resolution=32,16"])
    with pytest.raises(UserError, match="model.alpha=-1"):
        preflight(["-m", "+experiment=paper_grid", 'hydra.sweeper.params={model.alpha:"0.5,-1"}'])
    preflight(["-m", "+experiment=[quickstart,paper_grid]", "model.alpha=0.25,0.5", "model.resolution=32,40"])
    assert capsys.readouterr().err == ""
    preflight(["+experiment=paper_grid"])  # without -m: one run, and a note saying so
    err = capsys.readouterr().err
    assert "only with -m" in err and "model.alpha=1.0, model.resolution=224" in err


def test_modern_recipes_scale_their_rate_with_the_global_batch(compose):
    from mobilenet_train.optim import scaled_lr

    ra4 = compose("+experiment=ra4", "data.batch_size=1024")
    assert (ra4.optim.name, list(ra4.optim.betas), ra4.optim.weight_decay, ra4.model.dropout) == (
        "adamw", [0.6, 0.999], 0.01, 0.3)
    assert (ra4.data.auto_augment, ra4.optim.label_smoothing, ra4.trainer.ema.decay) == ("rand-m9-mstd0.5", 0.1, 0.9999)
    assert ra4.trainer.epochs == 3600 and scaled_lr(ra4.optim, 1024) == pytest.approx(0.002 / 2)  # sqrt(1/4)
    m500 = compose("+experiment=modern_500", "data.batch_size=1024", "trainer.epochs=300")
    assert (m500.sched.decay_epochs, m500.sched.decay_rate, m500.model.dropout) == (2.5, 0.94, 0.2)
    assert m500.trainer.epochs == 300 and scaled_lr(m500.optim, 1024) == pytest.approx(0.256 / 4)  # linear
