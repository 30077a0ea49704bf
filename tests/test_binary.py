"""Binary classification reports what a clinical paper does: the positive class's F1,
sensitivity, specificity, PPV, NPV and average precision, at a stated decision threshold."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from sklearn import metrics as skm
from test_eval_command import _eval, _train

from medimg_cli.errors import ConfigError
from medimg_cli.results import read_cases_csv

BINARY = ["data.task=classification", "data.binary=true", "data.num_samples=160", "trainer.epochs=2"]


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("binary") / "run"
    return _train(folder, *BINARY), folder


def _expected(labels: np.ndarray, probs: np.ndarray, positive: int, threshold: float | None) -> dict[str, float]:
    """The binary metrics with scikit-learn, for predictions at ``threshold`` (None: the more probable class)."""
    pred = probs.argmax(1) if threshold is None else np.where(probs[:, positive] >= threshold, positive, 1 - positive)
    negative = 1 - positive
    return {
        "accuracy": skm.accuracy_score(labels, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, pred),
        "sensitivity": skm.recall_score(labels, pred, pos_label=positive, zero_division=0),
        "specificity": skm.recall_score(labels, pred, pos_label=negative, zero_division=0),
        "ppv": skm.precision_score(labels, pred, pos_label=positive, zero_division=0),
        "npv": skm.precision_score(labels, pred, pos_label=negative, zero_division=0),
        "f1": skm.f1_score(labels, pred, pos_label=positive, zero_division=0),
        "auc": skm.roc_auc_score(labels == positive, probs[:, positive]),
        "ap": skm.average_precision_score(labels == positive, probs[:, positive]),
    }


@pytest.mark.parametrize("threshold", [None, 0.3, "youden"])
def test_binary_metrics_equal_scikit_learn_on_the_runs_test_predictions(binary_run, threshold, capsys):
    checkpoint, run = binary_run
    summary = json.loads((run / "summary.json").read_text())
    positive = summary["positive_class"]["index"]
    assert summary["f1_average"] == "binary" and summary["positive_class"]["name"] == "malignant"
    cases = read_cases_csv(run / "test_predictions.csv")
    labels, probs = cases["label"], cases["probs"]
    pred = probs.argmax(1)
    assert summary["test"]["f1"] == pytest.approx(skm.f1_score(labels, pred, pos_label=positive), abs=1e-6)

    document = _eval(checkpoint, *([] if threshold is None else [f"eval.threshold={threshold}"]))
    decision = document["decision"]
    assert decision["positive_class"] == "malignant"
    if threshold == "youden":
        assert decision["rule"] == "youden on the val split" and 0 <= decision["threshold"] <= 1
    else:
        assert decision["threshold"] == threshold
    expected = _expected(labels, probs, positive, decision["threshold"])
    found = {name: document["metrics"][name]["value"] for name in expected}
    assert found == pytest.approx(expected, abs=1e-6)
    # the terminal shows percent, as every table does; metrics.csv keeps fractions and says so
    assert re.search(rf"sensitivity %\s*│\s*{100 * expected['sensitivity']:.2f}\s*│", capsys.readouterr().out)
    rows = list(csv.DictReader((run / "eval" / "test" / "metrics.csv").open()))
    assert {r["unit"] for r in rows} == {"fraction", "score"} and len(rows) > len(expected)


def test_a_threshold_needs_a_binary_task(tmp_path):
    checkpoint = _train(tmp_path / "run", "data.task=classification", "trainer.epochs=1")  # 3 classes
    with pytest.raises(ConfigError, match="eval.threshold=0.3 applies to binary classification"):
        _eval(checkpoint, "eval.threshold=0.3")


def test_the_positive_class_is_the_finding_of_medmnist_or_the_one_named(tmp_path):
    """BreastMNIST's classes are (malignant, normal/benign): its finding is class 0, not the last."""
    from test_medmnist import _write_fake, data_cfg

    from medimg_cli.data import build_data

    _write_fake(tmp_path, "breastmnist", (1, 1))
    source = [f"data.root={tmp_path}", "data.download=false", "data.name=breastmnist"]
    assert build_data(data_cfg(*source)).info.positive_class == 0
    info = build_data(data_cfg(*source, "data.positive_class='normal, benign'")).info
    assert info.positive_class == 1 and info.average == "binary"
    assert build_data(data_cfg(*source, "data.positive_class=1")).info.positive_class == 1
    with pytest.raises(ConfigError, match="unknown data.positive_class 'cancer'"):
        build_data(data_cfg(*source, "data.positive_class=cancer"))
