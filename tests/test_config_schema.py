"""The schema (config/schema.py) against every key: bad values generated from each field's type and
range are refused with one line naming the key, the value and what is allowed; good ones pass."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import TINY

from mobilenet_train.config import compose, leaf_fields, parse_options
from mobilenet_train.config.help import train_help
from mobilenet_train.config.schema import COMMAND_OPTIONS, TrainConfig, type_name
from mobilenet_train.errors import UserError

# Free-form strings have no type or range to break; these are what their own rules refuse.
EXTRA_BAD = {"trainer.device": ["gpu0", "cuda:x"], "trainer.resume": ["' '"], "data.auto_augment": ["ra", "bogus"]}


def bad_values(f) -> list[str]:
    """Values a field must refuse, from its type, its range and its choices."""
    m, t = f.metadata, type_name(f)
    out = {"int": ["abc", "1.5", "true"], "float": ["abc", "true", "nan"], "bool": ["maybe", "2", "0.5"],
           "list[float]": ["abc", "[abc,1]"]}.get(t, [])
    if m.get("choices"):
        out.append("not_a_choice")
    if m.get("length"):
        out.append("[" + ",".join(["1"] * (m["length"] + 1)) + "]")
    low = m["ge"] if m.get("ge") is not None else m.get("gt")
    high = m["le"] if m.get("le") is not None else m.get("lt")
    step = 1 if t == "int" else 1e-3 * max(1.0, abs(low or 0), abs(high or 0))
    wrap = (lambda v: f"[{v},{v}]") if t.startswith("list") else str
    if low is not None:
        out.append(wrap(low - step if m.get("ge") is not None else low))
    if high is not None:
        out.append(wrap(high + step if m.get("le") is not None else high))
    return out


def cases(schema: type, prefix: str = ""):
    for name, f in leaf_fields(schema):
        for value in bad_values(f) + EXTRA_BAD.get(prefix + name, []):
            yield pytest.param(prefix + name, value, id=f"{prefix}{name}={value}")


ALL_CASES = list(cases(TrainConfig))
OPTION_CASES = [(prog, c) for prog, schema in COMMAND_OPTIONS.items() for c in cases(schema)]


def test_every_key_is_documented_and_has_bad_values():
    keys = list(leaf_fields(TrainConfig))
    assert len(keys) >= 70
    for name, f in keys:
        assert f.metadata.get("doc"), name
        assert bad_values(f) or name in EXTRA_BAD or type_name(f) == "str", name
    help_text = train_help()
    for name, _ in keys:
        assert f"  {name} " in help_text, name
    # What the note reports: keys of the schema and bad values tried.
    print(f"{len(keys)} keys, {len(ALL_CASES)} bad values; command options: "
          f"{sum(len(list(leaf_fields(s))) for s in COMMAND_OPTIONS.values())} keys, {len(OPTION_CASES)} bad values")


@pytest.mark.parametrize("key,value", ALL_CASES)
def test_bad_value_is_one_line_naming_key_value_and_fix(key, value):
    with pytest.raises(UserError) as info:
        compose(["data=shapes", f"{key}={value}"])
    message = str(info.value)
    assert "\n" not in message.strip()
    assert key in message, message
    shown = value.strip("'").strip()
    if not shown.startswith("["):  # lists are shown as parsed: [abc,1] -> ['abc', 1]
        assert shown in message or (_number(shown) and str(float(shown)) in message), message
    assert "e.g." in message or "use" in message, message  # the fix


def _number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@pytest.mark.parametrize("prog,case", OPTION_CASES, ids=[f"{p}:{c.id}" for p, c in OPTION_CASES])
def test_bad_command_option_is_refused(prog, case):
    key, value = case.values
    with pytest.raises(UserError) as info:
        parse_options(COMMAND_OPTIONS[prog], [f"{key}={value}"])
    assert key in str(info.value)


@pytest.mark.parametrize("schema", [TrainConfig, *COMMAND_OPTIONS.values()])
def test_defaults_pass_their_own_checks(schema):
    from mobilenet_train.config.schema import check_value

    for name, f in leaf_fields(schema):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if not (isinstance(default, str) and default.startswith("${")):
            check_value(name, default, f)


def test_good_values_and_the_spellings_users_type():
    cfg = compose(["data=shapes", "trainer.progress=true", "model.alpha=1", "+model.init=w.pt",
                   "data.crop_ratio=[0.5,2]", "trainer.device=cuda:1", "data.root=null"])
    assert cfg.trainer.progress == "true" and cfg.model.alpha == 1.0 and isinstance(cfg.model.alpha, float)
    assert cfg.model.init == "w.pt" and list(cfg.data.crop_ratio) == [0.5, 2.0] and cfg.data.root is None


def test_cross_field_rules():
    with pytest.raises(UserError, match=r"data.crop_ratio=\[2.0,1.0\] is not a range"):
        compose(["data=shapes", "data.crop_ratio=[2,1]"])
    with pytest.raises(UserError, match="data=imagenet_shards reads shards"):
        compose(["data=imagenet_shards", "data.format=folder"])


def test_unknown_keys_and_options_get_a_suggestion():
    with pytest.raises(UserError, match="model.alpah is not a key of the config: did you mean model.alpha"):
        compose(["model.alpah=1"])
    with pytest.raises(UserError, match="optim=adam is not an option of optim: use one of adamw, lamb, rmsprop, sgd"):
        compose(["optim=adam"])


def test_sweep_values_are_each_checked():
    from mobilenet_train.config import preflight

    with pytest.raises(UserError, match="optim.momentum=2"):
        preflight(["-m", "data=shapes", "optim.momentum=0.5,2"])
    with pytest.raises(UserError, match="optim=adam"):
        preflight(["-m", "data=shapes", "optim=sgd,adam"])


def test_checkpoint_from_before_the_schema_evaluates_and_resumes(cli, tmp_path, trained_run):
    """A config without the keys added since (here: data.eval_preset, data.shuffle_buffer, model.init)
    gets their defaults."""
    ckpt = torch.load(trained_run / "checkpoints" / "last.pt", weights_only=True)
    for group, key in (("data", "eval_preset"), ("data", "shuffle_buffer"), ("model", "init")):
        ckpt["config"][group].pop(key, None)
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    cli("mobilenet-eval", str(run / "checkpoints" / "last.pt"), "data.num_workers=0", f"out={tmp_path / 'e.json'}",
        cwd=tmp_path)
    cli("mobilenet-train", *TINY, "trainer.epochs=3", f"hydra.run.dir={run}", cwd=tmp_path)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3
