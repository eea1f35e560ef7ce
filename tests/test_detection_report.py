"""mobilenet-report's detection table beside Table 13."""

from __future__ import annotations

import json

from mobilenet_train.report import write_report

LINE = {"epoch": 3, "step": 30, "alpha": 0.25, "resolution": 128, "variant": "separable", "params": 409838,
        "mult_adds": 14852672, "dataset": "shapes_det", "epochs_total": 3, "val_map_50": 41.0, "val_map_small": -1.0,
        "val_map_medium": 20.0, "val_map_large": 30.0}


def test_detection_runs_get_a_table_beside_table13(tmp_path):
    run = tmp_path / "runs" / "ssd"
    run.mkdir(parents=True)
    lines = [{**LINE, "epoch": 2, "val_map": 25.0}, {**LINE, "val_map": 22.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    table, skipped = write_report([str(tmp_path / "runs")], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert table == [] and not skipped  # no classification runs, and the detection run is not "skipped"
    assert "| ssd (train) | shapes_det | 0.25 | 128 | 0.015 | 0.41 | 25.0 | 41.0 | n/a / 20.0 / 30.0 | 2 |" in text
    assert "| paper: SSD 300 MobileNet | COCO | | 300 | 1.2 | 6.8 | 19.3 |" in text
