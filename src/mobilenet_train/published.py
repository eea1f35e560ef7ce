"""Published MobileNet v1 results (the paper, the TF-slim release, and modern recipes: timm's ra4
and TensorFlow Model Garden's 500-epoch config), kept once in
``reference/published.json`` with their sources; mobilenet-info and mobilenet-report read them here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources

SOURCE_NAMES = {"paper": "paper", "tf_slim": "TF-slim", "timm": "timm ra4", "tf_model_garden": "TF Model Garden"}


@dataclass(frozen=True)
class Published:
    source: str            # "paper" | "tf_slim" | "timm" | "tf_model_garden"
    model: str             # the name the source prints
    variant: str           # separable | conv | shallow (our model.variant)
    alpha: float
    resolution: int
    top1: float | None
    top5: float | None
    mult_adds_m: float     # millions, as printed
    params_m: float        # millions, as printed
    table: str | None = None

    def key(self) -> tuple:
        return self.variant, float(self.alpha), int(self.resolution)


@cache
def data() -> dict:
    text = resources.files("mobilenet_train").joinpath("reference/published.json").read_text()
    return json.loads(text)


def results(source: str | None = None) -> list[Published]:
    fields = Published.__dataclass_fields__
    rows = [Published(**{k: r.get(k) for k in fields}) for r in data()["results"]]
    return [r for r in rows if source is None or r.source == source]


def matching(variant: str, alpha: float, resolution: int, source: str) -> list[Published]:
    """The published rows of `source` for this model (several paper tables may repeat one)."""
    key = (variant, float(alpha), int(resolution))
    return [r for r in results(source) if r.key() == key]


def unique_points(source: str) -> list[Published]:
    """One row per model: the paper repeats 1.0 MobileNet-224 in Tables 4, 6 and 7."""
    seen: dict[tuple, Published] = {}
    for r in results(source):
        seen.setdefault(r.key(), r)
    return list(seen.values())


def tables(rows: list[Published]) -> str:
    return ", ".join(r.table for r in rows if r.table)


def decimals(printed: float) -> int:
    """Digits after the point the source printed: 569 -> 0, 4.2 -> 1, 1.32 -> 2."""
    if isinstance(printed, int):
        return 0
    text = repr(float(printed))
    return len(text.split(".")[1]) if "." in text else 0


def agreement(value_m: float, printed: float) -> str | None:
    """'rounds' or 'truncates' when `value_m` (millions) prints as `printed`, else None."""
    d = decimals(printed)
    scale = 10 ** d
    if round(value_m, d) == printed:
        return "rounds"
    if math.floor(value_m * scale + 1e-9) / scale == printed:
        return "truncates"
    return None


def table13() -> dict:
    """The paper's Table 13 (COCO detection): its rows and the model of its MobileNet row."""
    return data()["table13"]


def table12() -> dict:
    """The paper's Table 12 (face attributes, distilled): its rows (mean AP, mult-adds, params) and what they are."""
    return data()["table12"]


def table14() -> dict:
    """The paper's Table 14 (face embeddings matching FaceNet's): its rows ("1e-4 accuracy", mult-adds, params)."""
    return data()["table14"]
