"""The configuration: the typed schema of every key (schema.py) and the layer every command uses
to compose, override and check it (compose.py)."""

from .compose import (
                      apply_overrides,
                      compose,
                      parse_options,
                      parse_overrides,
                      preflight,
                      resolved,
                      typed_config,
                      validate,
)
from .schema import GROUPS, TrainConfig, check, leaf_fields

__all__ = ["GROUPS", "TrainConfig", "apply_overrides", "check", "compose", "leaf_fields", "parse_options",
           "parse_overrides", "preflight", "resolved", "typed_config", "validate"]
