"""metrics.csv round trip, row selection and the table renderers."""

from __future__ import annotations

import json
import math

from medimg_cli.fileio import write_json
from medimg_cli.metrics import COLUMNS
from medimg_cli.results import append_metrics_row, read_metrics_csv, write_metrics_csv
from medimg_cli.tables import markdown_table, select_rows


def _rows(n: int) -> list[dict]:
    return [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 2 / e, "val_accuracy": e / 10, "epoch_seconds": 0.5}
        for e in range(1, n + 1)
    ]


def test_metrics_csv_round_trip_with_empty_cells(tmp_path):
    path = tmp_path / "metrics.csv"
    for row in _rows(3):
        append_metrics_row(path, row)
    rows = read_metrics_csv(path)
    assert list(rows[0]) == list(COLUMNS)
    assert rows[2]["val_accuracy"] == 0.3 and rows[2]["val_dice"] is None
    write_metrics_csv(path, _rows(2))  # a resume truncates to the checkpoint's history
    assert [r["epoch"] for r in read_metrics_csv(path)] == [1.0, 2.0]


def test_select_rows_keeps_every_kth_best_and_last():
    assert [r["epoch"] for r in select_rows(_rows(12), 5, best_epoch=7)] == [5, 7, 10, 12]
    assert [r["epoch"] for r in select_rows(_rows(3), 1)] == [1, 2, 3]


def test_markdown_table_in_percent_with_test_row():
    table = markdown_table(_rows(2), 1, test={"loss": 0.4, "accuracy": 0.875}, best_epoch=2)
    lines = table.splitlines()
    assert lines[0] == "| epoch | train loss | val loss | acc % | epoch s |"
    assert lines[3] == "| 2* | 0.5000 | 1.0000 | 20.0 | 0.50 |"
    assert lines[4] == "| test |  | 0.4000 | 87.5 |  |"


def test_json_writes_nan_as_null(tmp_path):
    write_json(tmp_path / "s.json", {"auc": math.nan, "nested": [math.nan, 1.0], "path": "NaN"})
    assert json.loads((tmp_path / "s.json").read_text()) == {"auc": None, "nested": [None, 1.0], "path": "NaN"}


def test_every_table_takes_its_columns_from_the_metric_specification(tmp_path):
    from medimg_cli.metrics import METRICS, of_kind
    from medimg_cli.reporting.tables import EPOCH_METRICS, QUALITY

    row = {m.column: 0.5 for m in METRICS} | {"epoch": 1}
    append_metrics_row(tmp_path / "metrics.csv", row)
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == ",".join(m.column for m in METRICS)
    test = {m.key: 0.25 for m in METRICS if m.evaluated}
    lines = markdown_table([row], 1, test=test, best_epoch=1).splitlines()
    assert lines[0] == "| " + " | ".join(m.header for m in METRICS) + " |"
    assert lines[2] == "| " + " | ".join(["1*", *(m.show(0.5) for m in METRICS[1:])]) + " |"
    assert lines[3] == "| " + " | ".join(["test", *(m.show(0.25) if m.evaluated else "" for m in METRICS[1:])]) + " |"
    assert QUALITY == of_kind("quality") and set(EPOCH_METRICS) == set(of_kind("quality", "timing", "loss"))
    fractions = [m for m in QUALITY if m.unit == "fraction"]
    assert [float(m.show(0.875)) for m in fractions] == [87.5] * len(fractions)  # fractions shown in percent
    others = {m.key: m.show(0.875) for m in QUALITY if m.unit != "fraction"}  # distances and ratios as they are
    assert others == {"hd95": "0.88", "jacobian_std": "0.875", "tre": "0.88"}
