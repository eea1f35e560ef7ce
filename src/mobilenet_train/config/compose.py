"""Composition, the override grammar and option checking: the one config layer of every command.

`mobilenet-train` composes configs/train.yaml with Hydra; `mobilenet-eval` (and export) apply
the same overrides to a checkpoint's stored config; the other commands parse their own keys
with `parse_options`. All of them read `key=value` with Hydra's override grammar, check each
value against the schema (schema.py) before anything starts, and turn every problem into one
UserError line naming the key, the value, what is allowed and an example.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import sys
from datetime import datetime
from importlib import resources

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from .. import distributed
from ..errors import UserError
from .schema import (
    CROSS_CHECKS,
    GROUPS,
    TrainConfig,
    bad_value,
    check,
    check_value,
    find_field,
    leaf_fields,
    optional,
    type_name,
)

CONFIG_MODULE = "mobilenet_train.configs"
# Hydra flags that are not overrides: with any of them we leave the command line to Hydra.
MULTIRUN_FLAGS = {"-m", "--multirun"}


# ----------------------------------------------------------------------------- registration


def _run_stamp() -> str:
    """The last part of the default run dir: `slurm-<job id>` in a Slurm batch job, so that every
    rank, node and requeued restart of the job names the same dir (and resumes from it), else a
    timestamp. Interactive allocations (salloc) keep timestamps: each command there is a new run."""
    job = distributed.slurm_job_id()
    if job and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive", "sh"):
        return f"slurm-{job}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def _rank_zero_only(value):
    """`value` on the main process, None on the others (Hydra then skips writing .hydra/)."""
    return value if distributed.detect_launch().rank == 0 else None


def _required(name: str):
    """`key: ${mt_required:key}` in an experiment: the key must be given on the command line (a
    YAML `???` cannot do it: merged onto the schema's default, OmegaConf keeps the default)."""
    raise UserError(f"{name} is required and has no value: pass {name}=...")


def register() -> None:
    """The resolvers configs/train.yaml uses and the schemas its options merge into (idempotent)."""
    OmegaConf.register_new_resolver("mt_run_stamp", _run_stamp, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("mt_rank_zero_only", _rank_zero_only, replace=True)
    OmegaConf.register_new_resolver("mt_required", _required, replace=True)
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, schema in GROUPS.items():
        store.store(group=group, name="schema", node=schema)


register()


# ----------------------------------------------------------------------------- overrides


def parse_overrides(items: list[str]) -> list[Override]:
    """Hydra's grammar, one item at a time so that the error names the item."""
    parser = OverridesParser.create()
    parsed = []
    for text in items:
        if "=" not in text and not text.startswith("~"):
            raise UserError(f"'{text}' is not a key=value override (e.g. data.root=/datasets/imagenet)")
        try:
            parsed.extend(parser.parse_overrides([text]))
        except Exception as e:  # noqa: BLE001 - the parser raises several types; all mean "cannot parse"
            raise UserError(f"cannot parse override '{text}': {first_line(e)}") from None
    return parsed


def first_line(e: BaseException) -> str:
    parts = []
    while e is not None and len(parts) < 3:
        text = str(e).strip()
        if text and text not in parts:
            parts.append(text.split("\n    full_key")[0].split("\n")[0])
        e = e.__cause__
    return " ".join(parts) or type(e).__name__


def unknown_key(name: str, schema: type = TrainConfig, where: str = "the config") -> UserError:
    keys = [k for k, _ in leaf_fields(schema)]
    close = difflib.get_close_matches(name, keys, n=1)
    if close:
        hint = f"did you mean {close[0]}?"
    elif schema is TrainConfig:
        hint = "mobilenet-train --help lists every key"
    else:
        hint = "use " + ", ".join(f"{k}=" for k in keys)
    return UserError(f"{name} is not a key of {where}: {hint}")


def check_override_value(name: str, value, f) -> None:
    """The value as typed on the command line fits the field's type (stricter than OmegaConf,
    which reads `trainer.compile=2` as true and `seed=1.5` as 1)."""
    t = type_name(f)
    if isinstance(value, str) and value.startswith("${"):
        return  # an interpolation: checked once resolved
    if value is None:
        if not optional(f):
            raise bad_value(name, value, f, "not optional")
        return
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, int | float) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "list[float]": isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                         for v in value),
          "str": isinstance(value, str | int | float) and not isinstance(value, bool)
          or (isinstance(value, bool) and f.metadata.get("choices") and str(value).lower() in f.metadata["choices"])}
    if not ok.get(t, True):
        raise bad_value(name, value, f, f"not {'a list' if t.startswith('list') else t}")
    check_value(name, value, f)  # the range now, so that the message shows the value as typed


def check_overrides(overrides: list[Override], schema: type = TrainConfig) -> list[str]:
    """Check the values of key=value overrides for `schema`'s keys; returns the override lines, a
    `+key=value` of a key the schema already holds read as `key=value` (it used to be added)."""
    lines = []
    for o in overrides:
        name = o.key_or_group
        f = find_field(schema, name)
        if f is not None and o.type != OverrideType.DEL:
            values = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
            for value in values:
                check_override_value(name, value, f)
            if isinstance(o.value(), bool) and f.metadata.get("choices"):  # trainer.progress=true: the word
                lines.append(f"{name}='{str(o.value()).lower()}'")
                continue
            if o.type == OverrideType.ADD:
                lines.append(o.input_line[1:])
                continue
        lines.append(o.input_line)
    return lines


# ----------------------------------------------------------------------------- mobilenet-train's config


def compose(overrides: list[str], config_name: str = "train", hydra: bool = True) -> DictConfig:
    """Compose the real config with overrides (as Hydra would), checked; errors become UserError."""
    lines = check_overrides(parse_overrides(list(overrides)))
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=lines, return_hydra_config=hydra)
    except Exception as e:  # noqa: BLE001 - hydra raises many types; all mean "bad override"
        raise composition_error(e, lines) from None
    finally:
        GlobalHydra.instance().clear()
    validate(cfg)
    return cfg


def composition_error(e: BaseException, lines: list[str]) -> UserError:
    """One line for an exception of Hydra/OmegaConf: unknown keys get a suggestion."""
    while e is not None:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        if isinstance(e, OmegaConfBaseException) and key and ("not in" in str(e) or "Key '" in str(e)):
            if find_field(TrainConfig, str(key)) is None:
                return unknown_key(str(key))
        if isinstance(e, UserError):
            return e
        missing = re.search(r"Could not (?:find|load) '(\w+)/([^']+)'", str(e))
        if missing:
            group, option = missing.groups()
            return UserError(f"{group}={option} is not an option of {group}: use one of "
                             f"{', '.join(group_options(group))}")
        if e.__cause__ is None:
            break
        e = e.__cause__
    return UserError(first_line(e))


def job_config(cfg: DictConfig) -> DictConfig:
    """The config without Hydra's own node."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg


def resolved(cfg: DictConfig) -> dict:
    """The job's config as plain data, every interpolation resolved and no mandatory value missing."""
    try:
        return OmegaConf.to_container(job_config(cfg), resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        raise UserError(f"{e.full_key} is required and has no value: pass {e.full_key}=...") from None
    except OmegaConfBaseException as e:
        # A resolver's UserError (mt_required) arrives as its message, OmegaConf drops the cause.
        text = first_line(e).partition("UserError raised while resolving interpolation: ")
        raise UserError(text[2] or f"the configuration does not resolve: {text[0]}") from None


def validate(cfg: DictConfig) -> dict:
    """Ranges, choices and the rules between keys; returns the resolved job config."""
    plain = resolved(cfg)
    check(TrainConfig, plain)
    view = OmegaConf.create(plain)
    for rule in CROSS_CHECKS:
        rule(view)
    return plain


def preflight(args: list[str]) -> list[str]:
    """Check mobilenet-train's command line before Hydra creates a run dir; returns the arguments
    to hand to Hydra (overrides normalised). In a `-m` sweep every swept value is checked too, so
    a bad one stops the sweep before its first run."""
    flags = [a for a in args if a.startswith("-")]
    if any(a not in MULTIRUN_FLAGS for a in flags):
        return args  # --help, --cfg, -cn ...: Hydra's business
    overrides = parse_overrides([a for a in args if a not in MULTIRUN_FLAGS])
    lines = check_overrides(overrides)
    parsed = parse_overrides(lines)
    first = [f"{o.key_or_group}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
             else o.input_line for o in parsed]
    cfg = compose(first)
    if flags:
        _check_sweep(cfg, parsed)
    elif cfg.hydra.sweeper.get("params"):
        keys = ", ".join(cfg.hydra.sweeper.params)
        print(f"mobilenet-train: note: the config sweeps {keys} only with -m (mobilenet-train -m ...); this is one "
              f"run with model.alpha={cfg.model.alpha}, model.resolution={cfg.model.resolution}", flush=True,
              file=sys.stderr)
    return flags + lines


def _check_sweep(cfg: DictConfig, parsed: list[Override]) -> None:
    """Every value each key takes in the sweep: the config's hydra.sweeper.params (e.g. from
    +experiment=paper_grid), a key swept on the command line replacing its list (as BasicSweeper)."""
    params = cfg.hydra.sweeper.get("params") or {}
    swept = {o.key_or_group: o for o in parse_overrides([f"{k}={v}" for k, v in params.items()])
             if o.is_sweep_override()}
    for o in parsed:
        swept.pop(o.key_or_group, None)
        if o.is_sweep_override():
            swept[o.key_or_group] = o
    base = [o.input_line for o in parsed if not o.is_sweep_override()]
    for name, o in swept.items():
        for value in o.sweep_string_iterator():
            if find_field(TrainConfig, name) is None:  # a group (optim=sgd,rmsprop): compose it
                compose([*base, f"{o.get_key_element()}={value}"])
                continue
            trial = OmegaConf.create(OmegaConf.to_container(job_config(cfg)))
            (single,) = parse_overrides([f"{name}={value}"])
            check_overrides([single])
            set_value(trial, name, single.value())
            validate(trial)


def set_value(cfg: DictConfig, name: str, value) -> None:
    try:
        OmegaConf.update(cfg, name, value, merge=True)
    except OmegaConfBaseException as e:
        raise UserError(f"{name}={value}: {first_line(e)}") from None


# ----------------------------------------------------------------------------- a stored config


def typed_config(stored: dict) -> DictConfig:
    """A checkpoint's config on the schema: keys added since it was written get their defaults,
    types are enforced, and unknown keys are refused by struct mode."""
    stored = _words_for_bools(stored)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), stored)
    except OmegaConfBaseException as e:
        raise UserError("the checkpoint's config does not fit this mobilenet-train's schema: "
                        f"{first_line(e)}") from None
    OmegaConf.set_struct(cfg, True)
    return cfg


def field_value(value, f):
    """A value for field `f` as OmegaConf should store it: `true` for a word field is the word."""
    return str(value).lower() if isinstance(value, bool) and type_name(f) == "str" else value


def _words_for_bools(stored: dict) -> dict:
    """Older configs stored `trainer.progress=false` as a bool; the schema's field is the word."""
    stored = copy.deepcopy(stored)
    for name, f in leaf_fields(TrainConfig):
        *parents, last = name.split(".")
        node = stored
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(last), bool) and type_name(f) == "str":
            node[last] = str(node[last]).lower()
    return stored


def group_option(group: str, option: str) -> DictConfig:
    """configs/<group>/<option>.yaml composed on its schema, as `group=option` selects it."""
    cfg = compose([f"{group}={option}"], hydra=False) if option else None
    return cfg[group]


def apply_overrides(cfg: DictConfig, items: list[str]) -> DictConfig:
    """Overrides on an existing (typed) config, with mobilenet-train's meaning: `data=imagenet_shards`
    replaces the data group with that option, `key=value` sets a key; then everything is checked."""
    for o in parse_overrides(items):
        name = o.key_or_group
        if o.is_sweep_override() or o.type == OverrideType.DEL:
            raise UserError(f"'{o.input_line}' is not a single key=value override here")
        if name in GROUPS and find_field(TrainConfig, name) is None:
            replacement = group_option_or_error(name, str(o.value()))
            cfg[name] = replacement
            continue
        f = find_field(TrainConfig, name)
        if f is None:
            raise unknown_key(name, where="the checkpoint's config")
        check_override_value(name, o.value(), f)
        set_value(cfg, name, field_value(o.value(), f))
    validate(cfg)
    return cfg


def group_option_or_error(group: str, option: str) -> DictConfig:
    names = group_options(group)
    if option not in names:
        raise UserError(f"{group}={option} is not an option of {group}: use one of {', '.join(names)}")
    return group_option(group, option)


def group_options(group: str) -> list[str]:
    """The YAML options of a config group (configs/<group>/*.yaml)."""
    folder = resources.files(CONFIG_MODULE) / group
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


# ----------------------------------------------------------------------------- a command's own keys


def parse_options(schema: type, items: list[str], others: bool = False) -> tuple[DictConfig, list[str]]:
    """A command's own key=value options, typed and checked against `schema`. Items that are not
    keys of `schema` are returned when `others` is true (e.g. config keys), else refused."""
    opts = OmegaConf.structured(schema)
    rest = []
    for o in parse_overrides(items):
        f = find_field(schema, o.key_or_group)
        if f is None:
            if others:
                rest.append(o.input_line)
                continue
            raise unknown_key(o.key_or_group, schema, "this command's options")
        # A comma list (threads=1,all) is Hydra's sweep syntax; a command's option reads it as text.
        value = o.input_line.partition("=")[2] if o.is_sweep_override() else o.value()
        check_override_value(o.key_or_group, value, f)
        set_value(opts, o.key_or_group, field_value(value, f))
    check(schema, OmegaConf.to_container(opts))
    return opts, rest
