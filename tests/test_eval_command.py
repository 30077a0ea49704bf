"""``medimg eval`` end to end on checkpoints of tiny runs: every file, per task, in 2D and 3D,
on MedMNIST, per subgroup, on another site, and the mistakes users make."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY, compose_config
from PIL import Image
from test_files import _manifest, _patient_rows
from test_inspect import write_class_folder
from test_medmnist import SHARED, needs_shared
from test_volumes import nifti_dataset, nifti_overrides  # noqa: F401  (nifti_dataset is a fixture)

from medimg_cli.commands import eval as eval_command
from medimg_cli.commands.train import train
from medimg_cli.evaluation.written import mask_png

CLASSIFYING = ["metrics.json", "metrics.csv", "predictions.csv", "confusion_matrix.csv", "confusion_matrix.png"]
CLASSIFYING += ["roc.png", "reliability.png", "reliability.csv", "risk_coverage.png", "risk_coverage.csv"]
SEGMENTING = ["metrics.json", "metrics.csv", "predictions.csv", "risk_coverage.png", "risk_coverage.csv"]
EXPLAIN = ["explain/most_confident.png", "explain/least_confident.png", "explain/explain.csv"]


FILE_DATA = [o for o in TINY if not o.startswith("data.")]  # TINY without the phantom's keys


def _train(folder: Path, *overrides: str, tiny: list[str] = TINY) -> Path:
    train(compose_config([*tiny, *overrides]), folder)
    return folder / "checkpoints" / "best.pt"


def _eval(checkpoint: Path, *overrides: str) -> dict:
    cfg = compose_config([f"checkpoint={checkpoint}", "device=cpu", "eval.bootstrap=200", *overrides], name="eval")
    return eval_command.evaluate_checkpoint_cfg(cfg)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, model, uncertainty",
    [("classification", "cnn", "mc_dropout"), ("segmentation", "cnn", "tta"), ("multitask", "hybrid", "tta")],
)
def test_eval_writes_every_file_for_the_three_phantom_tasks(tmp_path, capsys, task, model, uncertainty):
    checkpoint = _train(tmp_path / "run", f"data.task={task}", f"model={model}")
    classifies = task != "segmentation"
    extra = ["eval.temperature=true", "eval.explain=gradcam", "eval.cases=4"] if classifies else []
    document = _eval(checkpoint, f"eval.uncertainty={uncertainty}", "eval.samples=5", *extra)
    out = tmp_path / "run" / "eval" / "test"
    expected = (CLASSIFYING + EXPLAIN if classifies else []) + (SEGMENTING if task != "classification" else [])
    missing = [name for name in expected if not (out / name).is_file()]
    assert not missing, missing
    rows = _rows(out / "predictions.csv")
    cases = document["cases"]
    assert len(rows) == cases == 9  # 64 samples split 0.7/0.15/0.15, stratified (phantom split_indices)
    for name, entry in document["metrics"].items():
        assert entry["low"] <= entry["value"] <= entry["high"] or np.isnan(entry["low"]), name
    if classifies:
        probs = np.array([[float(r[f"p_{n}"]) for n in ("no_lesion", "benign", "malignant")] for r in rows])
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
        correct = np.mean([r["correct"] == "True" for r in rows])
        assert document["metrics"]["accuracy"]["value"] == pytest.approx(correct)
        assert {"entropy", "variance", "confidence"} <= set(rows[0])
        assert document["calibration"]["temperature"] > 0 and "before_temperature" in document["calibration"]
        check = document["explain"]["randomisation"]
        assert -1 <= check["spearman_mean"] <= 1 and check["outcome"] in ("changed", "unchanged", "inverted")
        assert "model-randomisation check" in capsys.readouterr().out
        matrix = _rows(out / "confusion_matrix.csv")
        assert sum(int(v) for row in matrix for k, v in row.items() if k != "true") == cases
    if task != "classification":
        masks = sorted((out / "masks").glob("*.png"))
        assert len(masks) == cases
        labels = np.array(Image.open(masks[0]))
        assert labels.shape == (32, 32) and set(np.unique(labels)) <= {0, 255}  # visible: 0/255
        dice = np.mean([float(r["dice"]) for r in rows])
        assert document["metrics"]["dice"]["value"] == pytest.approx(dice)
        assert document["distance_unit"] == "pixels"


@pytest.mark.slow
def test_eval_without_sampling_reproduces_the_runs_test_metrics(tmp_path):
    checkpoint = _train(tmp_path / "run")
    document = _eval(checkpoint, "eval.masks=false")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["test"]
    for key in ("accuracy", "f1", "auc", "dice", "iou"):
        assert document["metrics"][key]["value"] == pytest.approx(summary[key], abs=1e-6), key
    assert not (tmp_path / "run" / "eval" / "test" / "masks").exists()


@pytest.mark.slow
def test_eval_in_3d_writes_nifti_masks_and_three_slice_overlays(tmp_path):
    checkpoint = _train(tmp_path / "run", "data.spatial_dims=3", "data.image_size=16", "model=cnn")
    document = _eval(checkpoint, "eval.explain=gradcam++", "eval.cases=2")
    out = tmp_path / "run" / "eval" / "test"
    volume = nib.load(sorted((out / "masks").glob("*.nii.gz"))[0])
    assert volume.shape == (16, 16, 16) and volume.header.get_zooms() == (1.0, 1.0, 1.0)
    assert document["explain"]["target_layer"] == "stages.2"
    overlay = Image.open(out / "explain" / "most_confident.png")
    assert overlay.height > overlay.width  # 3 rows (image, map, random map) x 3 slices, 2 cases


@pytest.mark.slow
def test_surface_distances_of_a_nifti_dataset_are_in_millimetres(nifti_dataset, tmp_path):  # noqa: F811
    for path in (nifti_dataset / "images").glob("*.nii.gz"):  # anisotropic voxels: 2 x 1 x 1 mm
        for folder in ("images", "masks"):
            image = nib.load(nifti_dataset / folder / path.name)
            nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.diag([2.0, 1.0, 1.0, 1.0])), image.get_filename())
    overrides = nifti_overrides(nifti_dataset, "data.image_size=8", "model=cnn", "data.cache=false")
    checkpoint = _train(tmp_path / "run", *overrides, "trainer.batch_size=4", tiny=FILE_DATA)
    document = _eval(checkpoint)
    assert document["distance_unit"] == "mm"
    written = nib.load(sorted((tmp_path / "run" / "eval" / "test" / "masks").glob("*.nii.gz"))[0])
    # resized to 8^3 (4 x 2 x 2 mm) for the model; written back at the original 16^3 of 2 x 1 x 1 mm
    assert written.shape == (16, 16, 16) and written.header.get_zooms() == (2.0, 1.0, 1.0)


@needs_shared
@pytest.mark.slow
def test_eval_of_a_medmnist_run(tmp_path):
    data = ["data=medmnist", "data.name=breastmnist", f"data.root={SHARED}", "data.download=false"]
    checkpoint = _train(tmp_path / "run", *data, "trainer.epochs=1", "model=cnn", tiny=FILE_DATA)
    document = _eval(checkpoint, "eval.explain=saliency", "eval.uncertainty=mc_dropout", "eval.samples=3")
    out = tmp_path / "run" / "eval" / "test"
    assert document["cases"] == 156 and len(_rows(out / "predictions.csv")) == 156
    assert set(document["per_class"]) == {"malignant", "normal, benign"}
    assert all((out / name).is_file() for name in CLASSIFYING + EXPLAIN)


@pytest.mark.slow
def test_subgroups_break_the_metrics_down_by_site(tmp_path):
    write_class_folder(tmp_path / "images", per_class=30)
    rows = _patient_rows(tmp_path)
    for i, row in enumerate(rows):
        row["site"] = f"hospital{i % 2}"
    manifest = _manifest(tmp_path, rows)
    manifest_data = ["data=manifest", f"data.path={manifest}", "data.image_size=16", "model=cnn"]
    checkpoint = _train(tmp_path / "run", *manifest_data, tiny=FILE_DATA)
    _eval(checkpoint, "eval.subgroups=site")
    out = tmp_path / "run" / "eval" / "test"
    predictions, groups = _rows(out / "predictions.csv"), _rows(out / "subgroups.csv")
    for site in ("hospital0", "hospital1"):
        members = [r for r in predictions if r["site"] == site]
        row = next(g for g in groups if g["group"] == site and g["metric"] == "accuracy")
        assert int(row["n"]) == len(members) and row["column"] == "site"
        assert float(row["value"]) == pytest.approx(np.mean([r["correct"] == "True" for r in members]))


@pytest.mark.slow
def test_eval_on_another_site_writes_its_own_folder(tmp_path, capsys):
    checkpoint = _train(tmp_path / "run", "data.task=classification")
    document = _eval(checkpoint, "+data.seed=1")
    folders = [p.name for p in (tmp_path / "run" / "eval").iterdir()]
    assert len(folders) == 1 and folders[0].startswith("test-")
    assert document["data_changes"] == {"seed": 1}
    assert eval_command.main([f"checkpoint={checkpoint}", "data.sead=1"]) == 2
    assert "data.sead is not a key of this run's data config; its keys: binary, " in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.dropout=0"], "eval.uncertainty=mc_dropout: this model has no dropout"),
        ([], "unknown eval.target_layer 'stage9'. Valid: stages.0, "),
    ],
)
def test_eval_mistakes_get_one_clear_message(tmp_path, capsys, overrides, message):
    checkpoint = _train(tmp_path / "run", "data.task=classification", "model=cnn", *overrides)
    argv = [f"checkpoint={checkpoint}", "device=cpu", "eval.bootstrap=10"]
    argv += ["eval.uncertainty=mc_dropout"] if overrides else ["eval.explain=gradcam", "eval.target_layer=stage9"]
    assert eval_command.main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


@pytest.mark.slow
def test_grad_cam_peaks_inside_the_lesion_for_most_correctly_classified_cases(tmp_path):
    # normalize=none: per-image min-max lets a bright lesion darken the whole image, a shortcut
    # that Grad-CAM exposes by lighting up the background (see medimg_cli/data/phantom.py)
    phantom = ["data.normalize=none", "data.image_size=64", "data.num_samples=400", "data.task=classification"]
    checkpoint = _train(tmp_path / "run", *phantom, "trainer.epochs=10", "model=cnn", tiny=["device=cpu"])
    for method in ("gradcam", "gradcam++"):
        # the classifier on the same images with their masks: the pointing game over its test cases
        settings = [f"eval.explain={method}", f"out={tmp_path / method}", "eval.temperature=true"]
        document = _eval(checkpoint, "+data.task=multitask", *settings)
        pointing = document["explain"]["pointing_game"]
        assert pointing["cases"] >= 20 and pointing["lesion_share_of_pixels"] < 0.1
        assert pointing["peak_in_mask"] > 0.6, (method, pointing)
        rows = [r for r in _rows(tmp_path / method / "explain" / "explain.csv") if r["peak_in_mask"]]
        predictions = {r["case"]: r for r in _rows(tmp_path / method / "predictions.csv")}
        scored = [r for r in rows if predictions[r["case"]]["correct"] == "True"]
        assert len(scored) == pointing["cases"]
        assert np.mean([r["peak_in_mask"] == "True" for r in scored]) == pytest.approx(pointing["peak_in_mask"])


def test_masks_with_several_classes_are_palette_pngs_whose_indices_are_the_labels(tmp_path):
    labels = np.zeros((6, 5), np.uint8)
    labels[1:3, 1:3], labels[4:, 2:] = 1, 2
    (tmp_path / "m.png").write_bytes(mask_png(labels, num_classes=3))
    picture = Image.open(tmp_path / "m.png")
    assert picture.mode == "P" and np.array_equal(np.array(picture), labels)
    colours = np.array(picture.convert("RGB"))
    assert (colours[0, 0] == 0).all() and colours[1, 1].any() and (colours[1, 1] != colours[4, 2]).any()
