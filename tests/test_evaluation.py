"""``medimg_cli.evaluation``: metrics against scikit-learn and hand computation, surface
distances on shapes with known distances, calibration on constructed cases, uncertainty and maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist
from sklearn import metrics as skm
from torch import nn

from medimg_cli.errors import ConfigError
from medimg_cli.evaluation import calibration
from medimg_cli.evaluation.classification import classification_metrics, roc_curve
from medimg_cli.evaluation.explain import explain, rank_correlations, target_layer
from medimg_cli.evaluation.segmentation import case_metrics
from medimg_cli.evaluation.uncertainty import _flips, risk_coverage, sample_statistics
from medimg_cli.models import create_model
from medimg_cli.reporting.stats import percentile_interval, resample_indices


def _cases(n: int, k: int, seed: int, drop_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(n,)`` and probabilities ``(n, k)`` that agree with the labels more often than not."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    if drop_class is not None:  # never predicted
        logits[:, drop_class] = -10
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


@pytest.mark.parametrize("k, drop", [(2, None), (3, None), (4, 3)])
def test_classification_metrics_equal_scikit_learn(k, drop):
    labels, probs = _cases(300, k, seed=k, drop_class=drop)
    preds = probs.argmax(1)
    found = {key: value[0] for key, value in classification_metrics(labels[None], probs[None]).items()}
    assert found["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert found["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
    for name, function in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        assert found[name] == pytest.approx(function(labels, preds, average="macro", zero_division=0)), name
        per_class = function(labels, preds, average=None, labels=range(k), zero_division=0)
        np.testing.assert_allclose(found[f"class_{name}"], per_class, err_msg=name)
    cm = skm.confusion_matrix(labels, preds, labels=range(k))
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    np.testing.assert_allclose(found["class_specificity"], tn / (tn + cm.sum(0) - np.diag(cm)))
    if k == 2:
        assert found["auc"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]))
    else:
        assert found["auc"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    for c in range(k):
        assert found["class_auc"][c] == pytest.approx(skm.roc_auc_score(labels == c, probs[:, c]))


def test_auc_counts_tied_scores_as_one_half():
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.8, 0.2], [0.2, 0.8]])
    found = classification_metrics(labels[None], probs[None])["auc"][0]
    assert found == pytest.approx(skm.roc_auc_score(labels, probs[:, 1])) == pytest.approx(0.875)


def test_auc_of_a_resample_without_a_class_is_nan():
    probs = np.array([[0.9, 0.1], [0.4, 0.6]])
    assert math.isnan(classification_metrics(np.array([[0, 0]]), probs[None])["auc"][0])


def test_vectorised_bootstrap_equals_scikit_learn_resample_by_resample():
    labels, probs = _cases(80, 3, seed=7)
    indices = resample_indices(80, 40, seed=1)
    boot = classification_metrics(labels[indices], probs[indices])
    for r, index in enumerate(indices):
        preds = probs[index].argmax(1)
        assert boot["f1"][r] == pytest.approx(skm.f1_score(labels[index], preds, average="macro", zero_division=0))
        assert boot["balanced_accuracy"][r] == pytest.approx(skm.balanced_accuracy_score(labels[index], preds))
    low, high, used = percentile_interval(boot["accuracy"])
    assert used == 40 and low <= boot["accuracy"].mean() <= high


def test_roc_curve_equals_scikit_learn():
    labels, probs = _cases(200, 2, seed=3)
    scores = np.round(probs[:, 1], 2)  # with ties
    fpr, tpr, thresholds = roc_curve(scores, labels == 1)
    ref_fpr, ref_tpr, ref_thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thresholds[1:], ref_thresholds[1:])


def _points(shape, *coordinates):
    mask = torch.zeros(shape, dtype=torch.long)
    for point in coordinates:
        mask[point] = 1
    return mask[None]


def test_surface_distances_of_single_voxels_use_the_spacing():
    truth, pred = _points((16, 16), (5, 5)), _points((16, 16), (5, 9))
    found = case_metrics(pred, truth, 2, [[2.0, 0.5]])
    assert found["hd95"][0, 0] == pytest.approx(2.0) and found["asd"][0, 0] == pytest.approx(2.0)
    found = case_metrics(_points((16, 16), (9, 5)), truth, 2, [[2.0, 0.5]])
    assert found["hd95"][0, 0] == pytest.approx(8.0)
    volume = case_metrics(_points((8, 8, 8), (1, 1, 1)), _points((8, 8, 8), (4, 5, 1)), 2, [[1.0, 1.0, 3.0]])
    assert volume["hd95"][0, 0] == pytest.approx(5.0) and volume["dice"][0, 0] == 0


def _surface_reference(pred: np.ndarray, truth: np.ndarray, spacing) -> tuple[float, float]:
    """HD95 and symmetric ASD by brute force over the surface voxels (mask minus its erosion)."""
    surfaces = [np.argwhere(m & ~ndimage.binary_erosion(m)) * np.array(spacing) for m in (pred, truth)]
    distances = cdist(*surfaces)
    forward, backward = distances.min(1), distances.min(0)
    hd95 = max(np.percentile(forward, 95), np.percentile(backward, 95))
    return hd95, (forward.sum() + backward.sum()) / (len(forward) + len(backward))


def test_surface_distances_equal_a_brute_force_reference_on_random_shapes():
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(32), np.arange(32), indexing="ij"), -1)
    for _ in range(5):
        centres, radii = rng.uniform(8, 24, (2, 2)), rng.uniform(3, 8, 2)
        masks = [np.linalg.norm(grid - c, axis=-1) < r for c, r in zip(centres, radii, strict=True)]
        spacing = rng.uniform(0.5, 2.0, 2).tolist()
        found = case_metrics(torch.as_tensor(masks[0][None]), torch.as_tensor(masks[1][None]), 2, [spacing])
        hd95, asd = _surface_reference(masks[0], masks[1], spacing)
        assert found["hd95"][0, 0] == pytest.approx(hd95, rel=1e-5)
        assert found["asd"][0, 0] == pytest.approx(asd, rel=1e-5)
        overlap = (masks[0] & masks[1]).sum()
        assert found["dice"][0, 0] == pytest.approx(2 * overlap / (masks[0].sum() + masks[1].sum()))
        assert found["iou"][0, 0] == pytest.approx(overlap / (masks[0] | masks[1]).sum())


def _nsd_reference(pred: np.ndarray, truth: np.ndarray, spacing, tolerance: float) -> float:
    """NSD by brute force: boundary voxels of each mask within ``tolerance`` mm of the other's boundary."""
    surfaces = [np.argwhere(m & ~ndimage.binary_erosion(m)) * np.array(spacing) for m in (pred, truth)]
    distances = cdist(*surfaces)
    near = (distances.min(1) <= tolerance).sum() + (distances.min(0) <= tolerance).sum()
    return near / (len(surfaces[0]) + len(surfaces[1]))


def test_normalised_surface_distance_equals_a_brute_force_reference():
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(np.arange(32), np.arange(32), indexing="ij"), -1)
    for tolerance in (0.5, 1.0, 2.5):
        centres, radii = rng.uniform(10, 22, (2, 2)), rng.uniform(4, 8, 2)
        masks = [np.linalg.norm(grid - c, axis=-1) < r for c, r in zip(centres, radii, strict=True)]
        spacing = rng.uniform(0.5, 1.5, 2).tolist()
        found = case_metrics(
            torch.as_tensor(masks[0][None]), torch.as_tensor(masks[1][None]), 2, [spacing], None, tolerance
        )
        assert found["nsd"][0, 0] == pytest.approx(_nsd_reference(masks[0], masks[1], spacing, tolerance), abs=1e-6)
    shifted = case_metrics(_points((16, 16), (5, 6)), _points((16, 16), (5, 5)), 2, [[1.0, 1.0]], None, 1.0)
    assert shifted["nsd"][0, 0] == 1 and shifted["dice"][0, 0] == 0  # one pixel off: within 1 mm, no overlap


def test_cldice_of_hand_computed_centrelines():
    def lines(*rows_and_columns):  # 1-pixel lines are their own skeleton
        found = torch.zeros(1, 20, 20, dtype=torch.long)
        for row, columns in rows_and_columns:
            found[0, row, columns] = 1
        return found

    true = lines((10, slice(0, 20)))
    half = case_metrics(lines((10, slice(0, 10))), true, 2, [[1.0, 1.0]], cldice=True)
    # precision 10/10 of the prediction's skeleton inside, sensitivity 10/20 of the true one covered
    assert half["cldice"][0, 0] == pytest.approx(2 * 1 * 0.5 / 1.5)
    beside = case_metrics(lines((11, slice(0, 20))), true, 2, [[1.0, 1.0]], cldice=True)
    assert beside["cldice"][0, 0] == 0 and beside["nsd"][0, 0] == 1  # no centreline inside the other
    thick = true.clone()
    thick[0, 9:12, :] = 1  # the same vessel three pixels wide: Dice 0.5, about the same centreline
    found = case_metrics(thick, true, 2, [[1.0, 1.0]], cldice=True)
    assert found["dice"][0, 0] == pytest.approx(0.5)
    assert found["cldice"][0, 0] > 0.95  # the thinned bar bends off row 10 at its very ends only
    empty = torch.zeros_like(true)
    assert case_metrics(empty, empty, 2, [[1.0, 1.0]], cldice=True)["cldice"][0, 0] == 1
    assert case_metrics(empty, true, 2, [[1.0, 1.0]], cldice=True)["cldice"][0, 0] == 0
    assert "cldice" not in case_metrics(true, true, 2, [[1.0, 1.0]])


def test_pixel_auc_and_average_precision_equal_scikit_learn_inside_the_roi():
    from medimg_cli.evaluation.document import Evaluation
    from medimg_cli.evaluation.segmented import _pixel_scores

    rng = np.random.default_rng(0)
    masks = torch.as_tensor(rng.random((3, 12, 12)) < 0.3).long()
    probs1 = torch.as_tensor(np.clip(masks.numpy() * 0.4 + rng.random((3, 12, 12)) * 0.6, 0, 1)).float()
    probs = torch.stack([1 - probs1, probs1], dim=1)
    roi = torch.zeros(3, 12, 12, dtype=torch.uint8)
    roi[:, 2:10, 1:11] = 1
    result = Evaluation()
    _pixel_scores(result, probs, masks, roi)
    inside = roi.bool().numpy()
    truth, scores = masks.numpy()[inside], probs1.numpy()[inside]
    assert result.document["metrics"]["pixel_auc"]["value"] == pytest.approx(skm.roc_auc_score(truth, scores))
    assert result.document["metrics"]["pixel_ap"]["value"] == pytest.approx(skm.average_precision_score(truth, scores))


def test_empty_structures_score_perfect_or_worst():
    empty, lesion = torch.zeros(1, 10, 20, dtype=torch.long), _points((10, 20), (3, 3))
    both = case_metrics(empty, empty, 2, [[1.0, 1.0]])
    assert both["dice"][0, 0] == 1 and both["hd95"][0, 0] == 0 and both["asd"][0, 0] == 0 and both["nsd"][0, 0] == 1
    missed = case_metrics(empty, lesion, 2, [[2.0, 1.0]])
    assert missed["dice"][0, 0] == 0 and missed["hd95"][0, 0] == pytest.approx(math.hypot(20, 20))
    assert missed["nsd"][0, 0] == 0
    invented = case_metrics(lesion, empty, 2, [[1.0, 1.0]])
    assert invented["asd"][0, 0] == pytest.approx(math.hypot(10, 20)) and invented["iou"][0, 0] == 0


def test_ece_of_constructed_calibrated_and_miscalibrated_cases():
    rng = np.random.default_rng(0)
    # miscalibrated: always 90% sure, right 60% of the time -> ECE = |0.6 - 0.9| = 0.3 exactly
    labels = np.array([1] * 60 + [0] * 40)
    probs = np.tile([0.1, 0.9], (100, 1))
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(0.3)
    # calibrated: confidence p, right with probability p
    confidence = rng.uniform(0.5, 1.0, 200_000)
    correct = rng.uniform(size=confidence.size) < confidence
    probs = np.stack([1 - confidence, confidence], 1)
    assert calibration.expected_calibration_error(probs, correct.astype(int)) < 0.01
    bins = calibration.reliability_bins(probs, correct.astype(int), bins=10)
    assert bins["count"][:5].sum() == 0 and bins["count"].sum() == confidence.size


def test_brier_score_equals_scikit_learn():
    labels, probs = _cases(100, 3, seed=2)
    expected = skm.brier_score_loss(labels, probs, labels=[0, 1, 2], scale_by_half=False)
    assert calibration.brier_score(probs, labels) == pytest.approx(expected)
    labels, probs = _cases(100, 2, seed=2)
    assert calibration.brier_score(probs, labels) == pytest.approx(2 * skm.brier_score_loss(labels, probs[:, 1]))


def test_temperature_scaling_recovers_the_overconfidence_and_lowers_the_ece():
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(20_000, 4, generator=generator) * 2
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=generator)[:, 0]
    temperature = calibration.fit_temperature(3 * true_logits, labels)
    assert temperature == pytest.approx(3.0, rel=0.05)
    before = calibration.expected_calibration_error((3 * true_logits).softmax(1).numpy(), labels.numpy())
    after = calibration.expected_calibration_error((3 * true_logits / temperature).softmax(1).numpy(), labels.numpy())
    assert after < 0.02 < before


def test_risk_coverage_keeps_the_most_certain_cases_first():
    curve = risk_coverage(torch.tensor([0.9, 0.1, 0.5, 0.3]), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    np.testing.assert_allclose(curve["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve["quality"], [1.0, 1.0, 2 / 3, 0.5])


def test_sample_statistics_entropy_and_variance():
    logits = torch.tensor([[[0.0, 0.0], [10.0, -10.0]], [[0.0, 0.0], [-10.0, 10.0]]])  # 2 passes, 2 cases
    stats = sample_statistics(logits)
    assert stats["entropy"][0] == pytest.approx(math.log(2)) and stats["entropy"][1] == pytest.approx(math.log(2))
    assert stats["variance"][0] == 0 and stats["variance"][1] == pytest.approx(0.25, abs=1e-6)
    assert sample_statistics(logits[:1])["variance"].abs().max() == 0


def test_tta_flips_start_with_the_identity_and_cover_every_axis_subset():
    assert _flips(2) == [(), (2,), (3,), (2, 3)] and len(_flips(3)) == 8


def _model(name: str, task: str = "classification", spatial_dims: int = 2, **extra) -> nn.Module:
    args = dict(spatial_dims=spatial_dims, in_channels=1, num_classes=3, num_seg_classes=2, task=task)
    if name == "transformer":
        extra = {"image_size": (32, 32), "patch_size": 8, "num_layers": 2, "hidden_size": 32, "num_heads": 2} | extra
        extra["mlp_dim"] = 64
    if name == "hybrid":
        extra = {"image_size": (32, 32)} | extra
    torch.manual_seed(0)
    return create_model(name, **(args | extra)).eval()


def test_grad_cam_layer_defaults_to_the_deepest_stage_and_bad_names_list_the_valid_ones():
    model = _model("cnn")
    assert target_layer(model, None) == "stages.2"
    with pytest.raises(ConfigError, match="unknown eval.target_layer 'stage9'. Valid: .*stages.1"):
        target_layer(model, "stage9")
    with pytest.raises(ConfigError, match="use eval.explain=attention"):
        target_layer(_model("transformer"), None)


@pytest.mark.parametrize(
    "name, method",
    [("cnn", "gradcam"), ("cnn", "gradcam++"), ("hybrid", "gradcam"), ("hybrid", "attention"),
     ("transformer", "attention"), ("transformer", "saliency"), ("unet", "integrated_gradients")],
)  # fmt: skip
def test_maps_have_the_image_shape_and_range(name, method):
    images = torch.rand(3, 1, 32, 32)
    maps = explain(_model(name), images, torch.tensor([0, 1, 2]), method)
    assert maps.shape == (3, 32, 32) and maps.min() >= 0
    peaks = maps.flatten(1).amax(1)  # 1, or 0 for a map with no positive evidence (Grad-CAM's ReLU)
    assert set(peaks.tolist()) <= {0.0, 1.0} and peaks.max() == 1


@pytest.mark.parametrize("name", ["hybrid", "transformer"])
def test_attention_rollout_in_3d_has_the_volume_shape(name):
    extra = {"image_size": (16, 16, 16)} | ({"patch_size": 8} if name == "transformer" else {})
    model = _model(name, spatial_dims=3, **extra)
    maps = explain(model, torch.rand(2, 1, 16, 16, 16), torch.tensor([0, 1]), "attention")
    assert maps.shape == (2, 16, 16, 16) and maps.amax((1, 2, 3)).tolist() == [1.0, 1.0]


class _Linear(nn.Module):
    """A linear classifier on pixels: its saliency is |w| and its integrated gradients |x * w|."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        score = (image * self.weight).flatten(1).sum(1)
        return {"class_logits": torch.stack([-score, score], 1)}


def test_saliency_and_integrated_gradients_of_a_linear_model_are_exact():
    weight = torch.randn(1, 1, 8, 8)
    image = torch.rand(1, 1, 8, 8)
    model = _Linear(weight)
    normalise = lambda m: (m - m.min()) / (m.max() - m.min())  # noqa: E731
    saliency = explain(model, image, torch.tensor([1]), "saliency")
    torch.testing.assert_close(saliency[0], normalise(weight.abs()[0, 0]))
    integrated = explain(model, image, torch.tensor([1]), "integrated_gradients", steps=4)
    torch.testing.assert_close(integrated[0], normalise((image * weight).abs()[0, 0]))


def test_rank_correlation_of_identical_and_reversed_maps():
    maps = torch.rand(2, 8, 8)
    np.testing.assert_allclose(rank_correlations(maps, maps), [1.0, 1.0])
    np.testing.assert_allclose(rank_correlations(maps, -maps), [-1.0, -1.0])
    # a constant map ranks nothing, so it shares no ranking with the trained one
    np.testing.assert_allclose(rank_correlations(maps, torch.zeros(2, 8, 8)), [0.0, 0.0])


def test_mask_entropy_is_averaged_inside_the_roi_only():
    from medimg_cli.data import DataInfo
    from medimg_cli.data.batches import TensorBatches
    from medimg_cli.evaluation.uncertainty import predict
    from medimg_cli.speed import Speed

    class Fixed(nn.Module):  # left half certain (entropy ~0), right half 50/50 (entropy ln 2)
        def forward(self, image):
            logits = torch.zeros(len(image), 2, 8, 8)
            logits[:, 1, :, :4] = 30.0
            return {"seg_logits": logits}

    info = DataInfo("segmentation", 2, 1, 0, 2, ())
    roi = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    roi[0, :, :, :4], roi[1, :, :, 2:6] = 1, 1  # case 0: the certain half; case 1: half of each
    tensors = {"image": torch.zeros(2, 1, 8, 8), "mask": torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "roi": roi}
    speed = Speed.from_config({"precision": "fp32", "channels_last": False}, torch.device("cpu"), Fixed(), 2)
    found = predict(Fixed(), TensorBatches(tensors, 2, torch.device("cpu")), info, speed).seg_entropy
    assert found.tolist() == pytest.approx([0.0, math.log(2) / 2], abs=1e-6)


@pytest.mark.parametrize(
    ("rho", "outcome"),
    [([0.9, 0.7], "unchanged"), ([-0.9, -0.7], "inverted"), ([0.3, -0.1], "changed"), ([0.9, -0.9], "changed")],
)
def test_the_randomisation_verdict_keeps_the_sign(rho, outcome):
    """An inverted map (rho near -1) is not one that 'barely changes' (|rho| would say so)."""
    from medimg_cli.evaluation.explained import _randomisation_verdict

    check = _randomisation_verdict(np.array(rho))
    assert check["outcome"] == outcome and check["passed"] == (outcome == "changed")
    assert check["spearman_mean"] == pytest.approx(np.mean(rho))
