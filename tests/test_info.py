"""mobilenet-info: Tables 1 and 2, the 4x4 grid and Tables 4-5's variants, measured from the built
modules, against every number the paper prints (at its printed precision)."""

import json
import math
import sys

import pytest

from mobilenet_train.cli.info import main as info_cli
from mobilenet_train.complexity import complexity_of
from mobilenet_train.info import describe, format_info, grid, grid_axes
from mobilenet_train.model import ModelArgs

PAPER_224 = {1.0: (569, 4.2), 0.75: (325, 2.6), 0.5: (149, 1.3), 0.25: (41, 0.5)}  # Table 6
PAPER_ALPHA_1 = {192: 418, 160: 290, 128: 186}  # Table 7


def millions(n, digits=0):
    return round(n / 1e6, digits)


@pytest.fixture(scope="module")
def paper_grid():
    return grid(ModelArgs())


def test_grid_axes_come_from_the_paper_grid_experiment():
    assert grid_axes() == ([1.0, 0.75, 0.5, 0.25], [224, 192, 160, 128])


def test_grid_reproduces_tables_6_and_7(paper_grid):
    cells = {(c["alpha"], c["resolution"]): c for c in paper_grid["cells"]}
    assert len(cells) == 16
    for alpha, (mult_adds_m, params_m) in PAPER_224.items():
        c = cells[alpha, 224]
        assert millions(c["mult_adds"]) == mult_adds_m
        assert millions(c["params"], 1) == params_m and millions(c["params_weights"], 1) == params_m
        for res in (192, 160, 128):  # params do not depend on the resolution
            assert cells[alpha, res]["params"] == c["params"]
    for res, mult_adds_m in PAPER_ALPHA_1.items():
        measured = cells[1.0, res]["mult_adds"] / 1e6
        # 290.7M prints as 290 in the paper: it truncates; the others round and truncate alike.
        assert math.floor(measured) == mult_adds_m
    assert millions(cells[1.0, 160]["mult_adds"], 1) == 290.7
    assert [millions(cells[1.0, r]["mult_adds"]) for r in (192, 128)] == [418, 186]
    # Every grid point the paper prints agrees at its precision; 1.0-160 and 0.5-160 (Table 9) by truncation.
    entries = [e for c in paper_grid["cells"] for e in c["paper"]]
    assert len(entries) == 2 * 8  # Tables 4-7 and 9: eight distinct separable models, mult-adds and params each
    assert all(e["agreement"] in ("rounds", "truncates") for e in entries), entries
    truncated = {(e["model"], e["printed_m"]) for e in entries if e["agreement"] == "truncates"}
    assert truncated == {("1.0 MobileNet-160", 290), ("0.50 MobileNet-160", 76)}


def test_grid_counts_equal_the_complexity_module(paper_grid):
    for c in paper_grid["cells"][::5]:
        assert {"params": c["params"], "mult_adds": c["mult_adds"]} == complexity_of(
            ModelArgs(alpha=c["alpha"], resolution=c["resolution"]))


def test_table1_rows_from_the_module():
    info = describe(ModelArgs())
    rows = info["layers"]
    first, dw, pw = rows[0], rows[1], rows[2]
    assert (first["type"], first["stride"], first["filter_shape"], first["input_size"]) == (
        "Conv", 2, "3x3x3x32", [224, 224, 3])
    assert (dw["type"], dw["stride"], dw["filter_shape"], dw["input_size"]) == (
        "Conv dw", 1, "3x3x32 dw", [112, 112, 32])
    assert (pw["type"], pw["filter_shape"], pw["input_size"]) == ("Conv", "1x1x32x64", [112, 112, 32])
    strides = [r["stride"] for r in rows if r["type"] == "Conv dw"]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    pool, fc, softmax = rows[-3:]
    assert (pool["type"], pool["filter_shape"], pool["input_size"]) == ("Avg Pool", "Pool 7x7", [7, 7, 1024])
    assert (fc["type"], fc["filter_shape"], fc["input_size"], fc["mult_adds"]) == (
        "FC", "1024x1000", [1, 1, 1024], 1_024_000)
    assert (softmax["type"], softmax["input_size"]) == ("Softmax", [1, 1, 1000])
    assert len(rows) == 1 + 2 * 13 + 3
    assert info["mult_adds"] == sum(r["mult_adds"] for r in rows) == 568_740_352
    assert info["params"] == 4_231_976  # with BN and biases, as complexity.py
    assert info["params_weights"] == 4_209_088  # conv and FC weights only, as the paper counts


def test_table2_breakdown_and_the_papers_transposition():
    info = describe(ModelArgs())
    shares = {k: (round(v["mult_adds_share"], 2), round(v["params_share"], 2)) for k, v in info["breakdown"].items()}
    assert shares == {"Conv 1x1": (94.86, 74.59), "Conv DW 3x3": (3.06, 1.06), "Conv 3x3": (1.91, 0.02),
                      "Fully Connected": (0.18, 24.33)}
    assert sum(v["mult_adds"] for v in info["breakdown"].values()) == info["mult_adds"]
    assert sum(v["params"] for v in info["breakdown"].values()) == info["params_weights"]
    assert sum(v["mult_adds_share"] for v in info["breakdown"].values()) == pytest.approx(100)
    (note,) = info["table2_paper"]["notes"]  # only Conv 3x3 mult-adds disagrees with the print
    assert "Conv 3x3" in note and "1.19" in note and "transposition" in note and "1.91" in note


def test_table4_conv_mobilenet_and_the_missing_fc(cli, tmp_path):
    proc = cli("mobilenet-info", "model=mobilenet_v1_conv", "--json", cwd=tmp_path)
    info = json.loads(proc.stdout)
    assert {"params", "mult_adds", "layers", "breakdown"} <= info.keys()
    for entry in info["breakdown"].values():
        assert {"mult_adds", "params", "mult_adds_share", "params_share"} <= entry.keys()
    assert set(info["breakdown"]) == {"Conv 3x3", "Fully Connected"}
    assert millions(info["mult_adds"], 1) == 4867.3
    assert millions(info["params_weights"], 1) == millions(info["params"], 1) == 29.3
    fc = next(r for r in info["layers"] if r["type"] == "FC")
    # The paper's 4866M is the count without the fully connected layer, and no other layer fits.
    assert millions(info["mult_adds"] - fc["mult_adds"]) == 4866
    mult_adds, params = info["paper"]
    assert mult_adds["printed_m"] == 4866 and mult_adds["agreement"] == "without_layer"
    assert mult_adds["left_out"] == ["fc"]
    assert params["printed_m"] == 29.3 and params["agreement"] == "rounds"
    text = format_info(describe(ModelArgs(variant="conv")))
    assert "4866 is 0.03% below the measured count" in text and "no other single layer fits" in text


def test_table5_shallow_and_narrow():
    shallow = describe(ModelArgs(variant="shallow"))
    assert millions(shallow["mult_adds"]) == 307 and millions(shallow["params_weights"], 1) == 2.9
    assert len([r for r in shallow["layers"] if r["type"] == "Conv dw"]) == 8
    assert all(e["agreement"] == "rounds" for e in shallow["paper"]) and len(shallow["paper"]) == 2
    narrow = describe(ModelArgs(alpha=0.75))
    assert millions(narrow["mult_adds"]) == 325 and millions(narrow["params_weights"], 1) == 2.6
    assert {e["table"] for e in narrow["paper"]} == {"5, 6"}


def test_grid_text_from_python_m(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "mobilenet_train.info", "--grid"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[lines.index(next(line for line in lines if line.startswith("mult-adds (M)"))) + 1].split() == [
        "alpha", "1.0", "568.7", "418.1", "290.7", "186.4"]
    assert next(line for line in lines if line.startswith("alpha 0.25")).split()[2:] == ["41.0", "30.2", "21.1", "13.6"]
    assert "the paper truncates 290.7" in proc.stdout
    params = lines[lines.index(next(line for line in lines if line.startswith("params (M)"))) + 1:][:4]
    assert [line.split()[2] for line in params] == ["4.23", "2.59", "1.33", "0.47"]


def test_other_models_are_described_without_paper_comparison():
    info = describe(ModelArgs(alpha=0.35, resolution=96, num_classes=10))
    assert info["paper"] == [] and info["table2_paper"] is None
    assert info["mult_adds"] == complexity_of(ModelArgs(alpha=0.35, resolution=96, num_classes=10))["mult_adds"]


@pytest.mark.parametrize("args,needle", [
    (["model.alpha=0"], "model.alpha=0 is not allowed (out of range): model.alpha takes a number > 0"),
    (["model.alpha=-0.5", "--grid"], "model.alpha=-0.5"),
    (["model.resolution=16"],
     "model.resolution=16 is not allowed (out of range): model.resolution takes an integer >= 32"),
    (["model.alpah=1"], "model.alpah"),
    (["alpha"], "'alpha' is not a key=value override"),
])
def test_errors_are_one_line_and_exit_2(capsys, args, needle):
    with pytest.raises(SystemExit) as exit_info:
        info_cli(args)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mobilenet-info: error:") and needle in lines[0], err
    assert out == ""


def test_task_detection_describes_the_ssd_detector(capsys):
    info_cli(["task=detection", "model.alpha=0.25", "model.resolution=128", "data.num_classes=3", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["task"] == "detection" and info["model"]["num_classes"] == 3
    assert set(info["parts"]) == {"backbone", "extras", "head"}
    assert info["mult_adds"] == sum(p["mult_adds"] for p in info["parts"].values())
    assert info["paper"] == []  # not Table 13's model
