"""`mobilenet-info [key=value ...] [--json] [--grid]`: the paper's Table 1 and Table 2 for any
composed model, and the 4x4 width x resolution grid of Tables 6-7 / Figure 4.

Every number is measured from the built module (on the meta device: no memory, no weights):
layer shapes from forward hooks, mult-adds per layer from torch.utils.flop_counter (the count
complexity.py makes), parameters from the layers' tensors. Published numbers are only read
to compare against, and every disagreement is explained from the measured layers.
"""

from __future__ import annotations

import torch
from torch import nn

from . import published
from .complexity import count_params, counted_forward
from .model import MobileNetV1, ModelArgs

# Table 2's layer types, in the paper's order.
TABLE2_TYPES = ("Conv 1x1", "Conv DW 3x3", "Conv 3x3", "Fully Connected")
GRID_EXPERIMENT = "paper_grid"  # its hydra.sweeper.params are the grid's axes (one source of truth)


# ----------------------------------------------------------------------------- measuring


def _dims(shape) -> list[int]:
    """NCHW or NC -> [H, W, C], the way Table 1 writes input sizes."""
    return [shape[2], shape[3], shape[1]] if len(shape) == 4 else [1, 1, shape[1]]


def _conv_row(m: nn.Conv2d, in_shape) -> dict:
    k = m.kernel_size[0]
    depthwise = m.groups > 1 and m.groups == m.in_channels
    return {
        "type": "Conv dw" if depthwise else "Conv",
        "stride": m.stride[0],
        "filter_shape": f"{k}x{k}x{m.in_channels} dw" if depthwise else f"{k}x{k}x{m.in_channels}x{m.out_channels}",
        "input_size": _dims(in_shape),
        "category": f"Conv DW {k}x{k}" if depthwise else f"Conv {k}x{k}",
        "params": m.weight.numel(),  # weights only, as the paper counts
    }


@torch.no_grad()
def table1(model: MobileNetV1, resolution: int) -> list[dict]:
    """One row per layer of `model` (Table 1), with its mult-adds and weights."""
    root = type(model).__name__
    seen: list[tuple[str, nn.Module, tuple, tuple]] = []
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d)):
            hooks.append(m.register_forward_hook(
                lambda mod, inputs, out, name=name: seen.append((name, mod, tuple(inputs[0].shape), tuple(out.shape)))))
    try:
        logits, counter = counted_forward(model, resolution)
    finally:
        for h in hooks:
            h.remove()
    flops = counter.get_flop_counts()  # per module path, children included in parents

    rows = []
    for name, m, in_shape, _out_shape in seen:
        if isinstance(m, nn.Conv2d):
            row = _conv_row(m, in_shape)
        elif isinstance(m, nn.Linear):
            row = {"type": "FC", "stride": 1, "filter_shape": f"{m.in_features}x{m.out_features}",
                   "input_size": _dims(in_shape), "category": "Fully Connected", "params": m.weight.numel()}
        else:
            row = {"type": "Avg Pool", "stride": 1, "filter_shape": f"Pool {in_shape[2]}x{in_shape[3]}",
                   "input_size": _dims(in_shape), "category": None, "params": 0}
        row["mult_adds"] = sum(flops.get(f"{root}.{name}", {}).values()) // 2  # 2 FLOPs per multiply-accumulate
        rows.append({"name": name, **row})
    # Table 1 ends with the softmax; here it lives in the loss, so the row shows the logits it reads.
    rows.append({"name": "softmax (in the loss)", "type": "Softmax", "stride": 1, "filter_shape": "Classifier",
                 "input_size": _dims(logits.shape), "category": None, "params": 0, "mult_adds": 0})
    return rows


def breakdown(layers: list[dict]) -> dict:
    """Table 2: mult-adds and weights per layer type, and their shares in percent."""
    by_type: dict[str, dict] = {}
    for row in layers:
        if row["category"] is None:
            continue
        entry = by_type.setdefault(row["category"], {"mult_adds": 0, "params": 0})
        entry["mult_adds"] += row["mult_adds"]
        entry["params"] += row["params"]
    total_ma = sum(e["mult_adds"] for e in by_type.values())
    total_p = sum(e["params"] for e in by_type.values())
    order = {t: i for i, t in enumerate(TABLE2_TYPES)}
    out = {}
    for name in sorted(by_type, key=lambda t: order.get(t, len(order))):
        e = by_type[name]
        out[name] = {**e, "mult_adds_share": 100 * e["mult_adds"] / total_ma,
                     "params_share": 100 * e["params"] / total_p}
    return out


def _build(args: ModelArgs) -> MobileNetV1:
    with torch.device("meta"):
        return MobileNetV1(args)


def describe(args: ModelArgs) -> dict:
    """Everything `mobilenet-info` prints for one model, as plain data (the --json output)."""
    model = _build(args)
    layers = table1(model, args.resolution)
    info = {
        "model": args.to_dict(),
        "params": count_params(model),  # everything trainable: weights, BN, biases (as complexity.py)
        "params_weights": sum(r["params"] for r in layers),  # conv and FC weights (the paper's convention)
        "mult_adds": sum(r["mult_adds"] for r in layers),
        "layers": layers,
        "breakdown": breakdown(layers),
    }
    info["paper"] = compare_with_paper(info)
    info["table2_paper"] = compare_table2(info)
    return info


# ----------------------------------------------------------------------------- against the paper


def _compare(info: dict, row: published.Published) -> list[dict]:
    """Our counts against one published row, at its printed precision, with the reason when they differ."""
    layers = [r for r in info["layers"] if r["mult_adds"]]
    out = []
    for quantity, ours, printed in (("mult_adds", info["mult_adds"], row.mult_adds_m),
                                    ("params", info["params_weights"], row.params_m)):
        entry = {"table": row.table, "model": row.model, "quantity": quantity, "printed_m": printed,
                 "measured_m": ours / 1e6, "agreement": published.agreement(ours / 1e6, printed), "note": ""}
        if entry["agreement"] is None and quantity == "mult_adds":
            # Which single layer, left out, gives the printed number?
            fits = [r for r in layers if published.agreement((ours - r["mult_adds"]) / 1e6, printed)]
            if fits:
                names = ", ".join(f"{r['name']} ({r['type']}, {r['mult_adds'] / 1e6:.3f}M)" for r in fits)
                smallest = min((r for r in layers if r not in fits), key=lambda r: r["mult_adds"])
                entry["agreement"] = "without_layer"
                entry["left_out"] = [r["name"] for r in fits]
                entry["note"] = (f"{printed} is {100 * (ours / 1e6 - printed) / printed:.2f}% below the measured "
                                 f"count, which without {names} is {(ours - fits[0]['mult_adds']) / 1e6:.1f}M; no "
                                 f"other single layer fits (the next smallest, {smallest['name']}, has "
                                 f"{smallest['mult_adds'] / 1e6:.1f}M), so the paper left it out of this count")
        if entry["agreement"] == "truncates":
            entry["note"] = f"the paper truncates {ours / 1e6:.{published.decimals(printed) + 1}f}"
        out.append(entry)
    return out


def compare_with_paper(info: dict) -> list[dict]:
    args = info["model"]
    if args["num_classes"] != 1000:
        return []  # the paper's numbers are for the 1000-way ImageNet classifier
    rows = published.matching(args["variant"], args["alpha"], args["resolution"], "paper")
    if not rows:
        return []
    # Tables 4, 6 and 7 all print 1.0 MobileNet-224: compare once, naming every table.
    by_numbers: dict[tuple, list] = {}
    for row in rows:
        by_numbers.setdefault((row.mult_adds_m, row.params_m), []).append(row)
    entries = []
    for same in by_numbers.values():
        for entry in _compare(info, same[0]):
            entries.append({**entry, "table": published.tables(same)})
    return entries


def _is_transposition(a: float, b: float) -> bool:
    sa, sb = f"{a:.2f}", f"{b:.2f}"
    return sa != sb and sorted(sa) == sorted(sb)


def compare_table2(info: dict) -> dict | None:
    """The paper's Table 2 beside ours, when this is its model (1.0 MobileNet-224, 1000 classes)."""
    ref = published.data()["table2"]
    args = info["model"]
    m = ref["model"]
    if (args["variant"], args["alpha"], args["resolution"], args["num_classes"]) != (
            m["variant"], m["alpha"], m["resolution"], 1000):
        return None
    notes = []
    for kind, label in (("mult_adds", "mult-adds"), ("params", "params")):
        printed_sum = sum(s[kind] for s in ref["shares"].values())
        for name, shares in ref["shares"].items():
            ours = round(info["breakdown"][name][f"{kind}_share"], 2)
            if _is_transposition(shares[kind], ours):
                notes.append(f"{name} {label}: the paper prints {shares[kind]:.2f}, a transposition of the measured "
                             f"{ours:.2f} (with {shares[kind]:.2f} its four shares sum to {printed_sum:.2f}, with "
                             f"{ours:.2f} to {printed_sum - shares[kind] + ours:.2f})")
            elif shares[kind] != ours:
                notes.append(f"{name} {label}: the paper prints {shares[kind]:.2f}, measured {ours:.2f}")
    return {"shares": ref["shares"], "notes": notes}


# ----------------------------------------------------------------------------- the grid


def grid_axes() -> tuple[list[float], list[int]]:
    """alpha and resolution values of the paper_grid experiment's sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .config import compose

    params = compose([f"+experiment={GRID_EXPERIMENT}"]).hydra.sweeper.params
    parser = OverridesParser.create()
    axes = {}
    for key in ("model.alpha", "model.resolution"):
        (o,) = parser.parse_overrides([f"{key}={params[key]}"])
        axes[key] = list(o.sweep_iterator())
    return [float(a) for a in axes["model.alpha"]], [int(r) for r in axes["model.resolution"]]


def grid(base: ModelArgs) -> dict:
    """mult-adds and params of `base` at every alpha x resolution of the paper's grid."""
    alphas, resolutions = grid_axes()
    cells = []
    for alpha in alphas:
        for res in resolutions:
            args = ModelArgs(**{**base.to_dict(), "alpha": alpha, "resolution": res})
            info = describe(args)
            cells.append({"alpha": alpha, "resolution": res, "mult_adds": info["mult_adds"], "params": info["params"],
                          "params_weights": info["params_weights"], "paper": info["paper"]})
    return {"model": {k: v for k, v in base.to_dict().items() if k not in ("alpha", "resolution")},
            "alphas": alphas, "resolutions": resolutions, "cells": cells}


# ----------------------------------------------------------------------------- text


def _m(n: int, digits: int = 1) -> str:
    return f"{n / 1e6:.{digits}f}"


def _title(args: dict) -> str:
    return (f"MobileNet v1 ({args['variant']}) alpha={args['alpha']} resolution={args['resolution']}, "
            f"{args['num_classes']} classes")


def _paper_lines(entries: list[dict]) -> list[str]:
    lines = []
    for e in entries:
        unit = "mult-adds" if e["quantity"] == "mult_adds" else "params (weights only)"
        verdict = {"rounds": "matches", "truncates": "matches", "without_layer": "differs",
                   None: "DIFFERS"}[e["agreement"]]
        d = published.decimals(e["printed_m"]) + 1
        tables = "Tables" if "," in e["table"] else "Table"
        lines.append(f"  {tables} {e['table']} {e['model']}: {e['printed_m']}M {unit}; "
                     f"measured {e['measured_m']:.{d}f}M: "
                     f"{verdict}{': ' + e['note'] if e['note'] else ''}")
    return lines


def format_info(info: dict) -> str:
    args = info["model"]
    out = [f"{_title(args)} -- the paper's Table 1 for this model", ""]
    header = f"{'Type / Stride':<15} {'Filter Shape':<16} {'Input Size':<14} {'Mult-Adds':>12} {'Params':>11}"
    out += [header, "-" * len(header)]
    for r in info["layers"]:
        size = "x".join(str(d) for d in r["input_size"])
        out.append(f"{r['type'] + ' / s' + str(r['stride']):<15} {r['filter_shape']:<16} {size:<14} "
                   f"{r['mult_adds']:>12,} {r['params']:>11,}")
    out += ["-" * len(header),
            f"Total: {_m(info['mult_adds'])}M mult-adds ({info['mult_adds']:,}); {info['params'] / 1e6:.2f}M params "
            f"({info['params']:,} with BN and biases; {info['params_weights']:,} conv/FC weights, the paper's count)",
            "", "Resources per layer type (Table 2; params = conv/FC weights, as the paper counts)", ""]
    t2 = info["table2_paper"]
    header = f"{'Type':<16} {'Mult-Adds':>9} {'Params':>8}" + ("   paper (mult-adds / params)" if t2 else "")
    out += [header, "-" * len(header)]
    for name, b in info["breakdown"].items():
        line = f"{name:<16} {b['mult_adds_share']:>8.2f}% {b['params_share']:>7.2f}%"
        if t2 and name in t2["shares"]:
            line += f"   {t2['shares'][name]['mult_adds']:.2f}% / {t2['shares'][name]['params']:.2f}%"
        out.append(line)
    if t2:
        out += [f"Note: {n}" for n in t2["notes"]]
    if info["paper"]:
        out += ["", "Against the paper, at its printed precision:", *_paper_lines(info["paper"])]
    return "\n".join(out)


def format_grid(g: dict) -> str:
    res = g["resolutions"]
    cells = {(c["alpha"], c["resolution"]): c for c in g["cells"]}
    m = g["model"]
    out = [f"MobileNet v1 ({m['variant']}), {m['num_classes']} classes: the paper's grid "
           f"(+experiment={GRID_EXPERIMENT}), measured from the built modules", ""]
    for title, key, fmt in (("mult-adds (M)", "mult_adds", "{:.1f}"), ("params (M)", "params", "{:.2f}"),
                            ("weights (M)", "params_weights", "{:.2f}")):
        out.append(f"{title:<14}" + "".join(f"{'res ' + str(r):>10}" for r in res))
        for a in g["alphas"]:
            out.append(f"{'alpha ' + str(a):<14}" + "".join(f"{fmt.format(cells[a, r][key] / 1e6):>10}" for r in res))
        out.append("")
    out.append("params: all parameters (weights, BN, biases); weights: conv and FC weights only, the paper's count.")
    paper = [e for c in g["cells"] for e in c["paper"]]
    if paper:
        out += ["", "Against the paper (Tables 4-7, 9), at its printed precision:", *_paper_lines(paper)]
    return "\n".join(out)


def model_args(overrides: list[str]) -> ModelArgs:
    """The model the config composes to with `overrides`, as mobilenet-train would build it."""
    from .config import compose

    return ModelArgs.from_config(compose(overrides).model)


if __name__ == "__main__":  # python -m mobilenet_train.info: the same as mobilenet-info
    from .cli.info import main

    main()
