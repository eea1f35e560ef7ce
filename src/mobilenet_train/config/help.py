"""`mobilenet-train --help`: the groups, their options, and every key with type, default and doc,
all read from the schema and configs/ (nothing here restates them)."""

from __future__ import annotations

import dataclasses

from .compose import group_options
from .schema import COMMAND_OPTIONS, TrainConfig, allowed, leaf_fields

USAGE = """usage: mobilenet-train [-m] [group=option ...] [+experiment=NAME|[A,B]] [key=value ...]

Train MobileNet v1 (Howard et al., 2017). Hydra composes configs/train.yaml with the overrides;
every value is checked against the schema below before anything starts.
  mobilenet-train +experiment=alpha_0.75 data.root=/datasets/imagenet
  mobilenet-train --cfg job +experiment=paper       # print the composed config, do not train
  mobilenet-train -m +experiment=[paper,paper_grid] data.root=...   # a sweep (Hydra multirun)
Hydra's own flags: mobilenet-train --hydra-help"""


def default_text(f) -> str:
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        value = f.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def keys_table(schema: type, prefix: str = "") -> list[str]:
    rows = [(prefix + name, allowed(f), default_text(f), f.metadata["doc"]) for name, f in leaf_fields(schema)]
    width = max(len(r[0]) for r in rows)
    return [f"  {name:<{width}}  {doc}\n  {'':<{width}}  [{kind}; default {default}]"
            for name, kind, default, doc in rows]


def train_help() -> str:
    groups = [f"  {g:<10} {', '.join(group_options(g))}" for g in ("model", "data", "optim", "sched", "trainer")]
    return "\n".join([USAGE, "", "groups (group=option):", *groups,
                      f"  {'experiment':<10} {', '.join(group_options('experiment'))}  (+experiment=NAME)",
                      "", "keys (key=value):", *keys_table(TrainConfig)])


def options_help(prog: str) -> str:
    """The epilog of a command with its own keys (mobilenet-eval, -import, -report)."""
    return "its keys (key=value):\n" + "\n".join(keys_table(COMMAND_OPTIONS[prog]))
