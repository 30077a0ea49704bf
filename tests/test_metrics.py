"""Metrics against hand-computed values and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.metrics import roc_auc_score

from medimg_cli.data import DataInfo
from medimg_cli.errors import ConfigError
from medimg_cli.metrics import TaskMetrics, accuracy, confusion_matrix, f1_header, f1_score, roc_auc, with_average


def test_confusion_matrix_counts_rows_true_columns_pred():
    pred = torch.tensor([0, 1, 1, 2, 2, 2])
    true = torch.tensor([0, 1, 2, 2, 2, 0])
    expected = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 1, 2]])
    assert torch.equal(confusion_matrix(pred, true, 3), expected)


def test_accuracy_and_f1_by_hand():
    pred = torch.tensor([0, 1, 1, 2, 2, 2])
    true = torch.tensor([0, 1, 2, 2, 2, 0])
    assert accuracy(pred, true) == pytest.approx(4 / 6)
    # class 0: TP1 FP0 FN1 -> 2/3; class 1: TP1 FP1 FN0 -> 2/3; class 2: TP2 FP1 FN1 -> 4/6
    assert f1_score(pred, true, 3) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("average", ["macro", "weighted"])
def test_f1_matches_sklearn(seed, average):
    rng = np.random.default_rng(seed)
    true, pred = rng.integers(0, 4, 50), rng.integers(0, 3, 50)  # class 3 never predicted
    expected = skm.f1_score(true, pred, average=average, zero_division=0)
    assert f1_score(torch.from_numpy(pred), torch.from_numpy(true), 4, average) == pytest.approx(expected)


@pytest.mark.parametrize("positive", [0, 1])
def test_binary_f1_is_the_positive_class_f1_of_sklearn(positive):
    rng = np.random.default_rng(positive)
    true, pred = rng.integers(0, 2, 80), rng.integers(0, 2, 80)
    expected = skm.f1_score(true, pred, average="binary", pos_label=positive)
    found = f1_score(torch.from_numpy(pred), torch.from_numpy(true), 2, "binary", positive)
    assert found == pytest.approx(expected) and found != pytest.approx(skm.f1_score(true, pred, average="macro"))


def test_the_f1_header_says_which_f1_and_metrics_average_overrides_it():
    binary = DataInfo("classification", 2, 1, 2, 0, ("normal", "pneumonia"), positive_class=1, average="binary")
    assert f1_header(binary.average, "pneumonia") == "F1 % (pneumonia)" and with_average(binary, "auto") == binary
    assert with_average(binary, "macro").average == "macro" and f1_header("macro", None) == "macro F1 %"
    three = DataInfo("classification", 2, 1, 3, 0, ("a", "b", "c"))
    assert three.average == "macro" and with_average(three, "weighted").average == "weighted"
    with pytest.raises(ConfigError, match="metrics.average=binary needs a binary"):
        with_average(three, "binary")


def test_binary_auc_by_hand():
    # positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of 4 pairs ranked right
    p1 = torch.tensor([0.1, 0.4, 0.35, 0.8])
    probs = torch.stack([1 - p1, p1], dim=1)
    assert roc_auc(probs, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)


def test_multiclass_auc_matches_sklearn_ovr_macro():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 3))
    true = rng.integers(0, 3, 60)
    probs = torch.from_numpy(logits).softmax(dim=1)
    expected = roc_auc_score(true, probs.numpy(), multi_class="ovr", average="macro")
    assert roc_auc(probs, torch.from_numpy(true)) == pytest.approx(expected)


def test_auc_is_nan_when_a_class_is_missing():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    assert math.isnan(roc_auc(probs, torch.tensor([1, 1])))


def _seg_info(k: int = 2) -> DataInfo:
    return DataInfo("segmentation", 2, 1, 3, k, ("a", "b", "c"))


def _logits_for(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Logits whose argmax is ``mask`` ``(B, H, W)``."""
    return torch.nn.functional.one_hot(mask, k).movedim(-1, 1).float()


def test_dice_and_iou_by_hand():
    true = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    true[0, 0, :2, :2] = 1  # 4 pixels
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, :2, :3] = 1  # 6 pixels, 4 overlapping
    metrics = TaskMetrics(_seg_info())
    metrics.update({"seg_logits": _logits_for(pred, 2)}, {"mask": true})
    result = metrics.compute()
    assert result["dice"] == pytest.approx(2 * 4 / (4 + 6))
    assert result["iou"] == pytest.approx(4 / 6)


def test_empty_ground_truth_scores_one_when_empty_and_zero_with_false_positives():
    true = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    pred[1, 0, 0] = 1  # a false positive on the second lesion-free image
    metrics = TaskMetrics(_seg_info())
    metrics.update({"seg_logits": _logits_for(pred, 2)}, {"mask": true})
    assert metrics.compute()["dice"] == pytest.approx(0.5)  # mean of 1 and 0


def test_multiclass_dice_averages_foreground_classes_over_batches():
    true = torch.tensor([[[1, 1], [2, 2]], [[1, 0], [0, 2]]]).unsqueeze(1)
    pred = torch.tensor([[[1, 1], [2, 0]], [[1, 1], [0, 2]]])
    metrics = TaskMetrics(_seg_info(3))
    for i in range(2):  # accumulate one case per batch
        metrics.update({"seg_logits": _logits_for(pred[i : i + 1], 3)}, {"mask": true[i : i + 1]})
    # case 1: class1 dice 1, class2 2*1/(2+1)=2/3; case 2: class1 2*1/(1+2)=2/3, class2 1
    assert metrics.compute()["dice"] == pytest.approx(((1 + 2 / 3) / 2 + (2 / 3 + 1) / 2) / 2)


def test_task_metrics_classification_keys():
    info = DataInfo("classification", 2, 1, 2, 2, ("a", "b"))
    metrics = TaskMetrics(info)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    metrics.update({"class_logits": logits}, {"label": torch.tensor([0, 1, 1, 1])})
    result = metrics.compute()
    assert set(result) == {"accuracy", "f1", "auc"}
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["auc"] == pytest.approx(1.0)  # positives scored above the negative


def test_multilabel_metrics_match_sklearn():
    from medimg_cli.metrics import multilabel_metrics

    rng = np.random.default_rng(0)
    target, probs = rng.integers(0, 2, (40, 5)), rng.random((40, 5))
    result = multilabel_metrics(torch.tensor(probs), torch.tensor(target))
    assert result["accuracy"] == pytest.approx(((probs > 0.5) == target).mean())
    assert result["f1"] == pytest.approx(skm.f1_score(target, (probs > 0.5).astype(int), average="macro"))
    expected_auc = np.mean([roc_auc_score(target[:, k], probs[:, k]) for k in range(5)])
    assert result["auc"] == pytest.approx(expected_auc)
