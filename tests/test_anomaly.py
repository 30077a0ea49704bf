"""Anomaly detection (data.task=anomaly): normal-only training, image and pixel metrics against
scikit-learn, anomaly maps on a planted lesion, the train table and medimg eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose_config
from scipy.spatial.distance import mahalanobis
from sklearn.metrics import average_precision_score, roc_auc_score
from test_files import data_cfg

from medimg_cli.cli import main
from medimg_cli.commands.train import train
from medimg_cli.data import build_data
from medimg_cli.data.batches import TensorBatches
from medimg_cli.errors import ConfigError
from medimg_cli.evaluation.anomalous import anomaly_maps, decided_metrics, pixel_metrics, split_cases
from medimg_cli.loop import evaluate
from medimg_cli.losses import TaskLoss
from medimg_cli.metrics import pixel_auc, quality_metrics
from medimg_cli.models import create_model
from medimg_cli.results import read_metrics_csv
from medimg_cli.speed import Speed
from medimg_cli.trained import load_trained

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
PHANTOM = ["data.task=anomaly", "data.normalize=none"]


def phantom(*overrides: str):
    cfg = compose_config(["data.num_samples=120", *PHANTOM, *overrides])
    return build_data(dict(cfg.data))


def test_train_split_holds_only_normal_images_and_val_test_hold_both():
    whole = build_data(dict(compose_config(["data.num_samples=120", "data.normalize=none"]).data))
    splits = phantom()
    normal = whole.train["label"] == 0
    assert 0 < int(normal.sum()) < len(normal)  # the source's train split has abnormal images to drop
    assert torch.equal(splits.train["image"], whole.train["image"][normal])
    assert (splits.train["label"] == 0).all() and not splits.train["mask"].any()
    for name in ("val", "test"):
        source, split = whole.split(name), splits.split(name)
        assert torch.equal(split["image"], source["image"])
        assert torch.equal(split["label"], (source["label"] != 0).long())
        assert torch.equal(split["mask"], (source["mask"] > 0).to(torch.uint8))
    info = splits.info
    assert (info.task, info.class_names, info.positive_class, info.num_seg_classes) == (
        "anomaly", ("normal", "abnormal"), 1, 2,
    )  # fmt: skip


def test_normal_classes_by_name_or_index_and_refusals():
    whole = build_data(dict(compose_config(["data.num_samples=120", "data.normalize=none"]).data))
    splits = phantom("data.normal_classes=[no_lesion,1]")  # malignant alone is abnormal
    assert torch.equal(splits.test["label"], (whole.test["label"] == 2).long())
    assert len(splits.train["label"]) == int((whole.train["label"] < 2).sum())
    with pytest.raises(ConfigError, match="makes every class normal"):
        phantom("data.normal_classes=[0,1,2]")
    assert len(phantom().train["label"]) == int((whole.train["label"] == 0).sum())  # null: the first class
    with pytest.raises(ConfigError, match=r"'cyst' is not a class of this data \(0 no_lesion, 1 benign, 2 malignant\)"):
        phantom("data.normal_classes=[cyst]")
    with pytest.raises(ConfigError, match="the positive class is abnormal"):
        phantom("data.positive_class=1")


def test_a_folder_source_with_masks_becomes_anomaly_splits(image_folder):
    args = [f"data.root={image_folder / 'images'}", f"data.mask_root={image_folder / 'masks'}"]
    splits = build_data(data_cfg("folder", *args, "data.task=anomaly", "data.normal_classes=[normal]"))
    assert (splits.train["label"] == 0).all() and not splits.train["mask"].any()
    assert len(splits.ids["train"]) == len(splits.train["label"]) == len(splits.names["train"])
    assert all(name.startswith("normal/") for name in splits.names["train"])
    for name in ("val", "test"):  # the lesion images are abnormal, their masks the abnormal region
        split = splits.split(name)
        assert set(split["label"].tolist()) == {0, 1}
        assert ((split["mask"].flatten(1).amax(1) > 0) == (split["label"] == 1)).all()


def test_image_and_pixel_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: many ties
    found = quality_metrics({"score": torch.from_numpy(scores).float(), "label": torch.from_numpy(labels)})
    assert found["auc"] == pytest.approx(roc_auc_score(labels, scores.astype(np.float32)), abs=1e-12)
    assert found["ap"] == pytest.approx(average_precision_score(labels, scores.astype(np.float32)), abs=1e-12)
    maps, masks = np.round(rng.random(5000), 2), rng.random(5000) < 0.1
    maps[masks] += 0.2
    assert pixel_auc(maps, masks) == pytest.approx(roc_auc_score(masks, maps), abs=1e-12)


def test_threshold_comes_from_val_and_decides_the_test_metrics():
    val = {"score": np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.15]), "label": np.array([0, 0, 0, 1, 1, 1])}
    test = {"score": np.array([0.1, 0.55, 0.6, 0.8, 0.3, 0.2]), "label": np.array([0, 0, 1, 1, 1, 0])}
    found = decided_metrics(val, test)
    assert found["threshold"] == 0.6  # J = 2/3 - 0 there; 1/3 or less at every other threshold
    # test: called abnormal at >= 0.6: 0.6 and 0.8 (both abnormal); 0.3 abnormal missed; no false positive
    assert found["sensitivity"] == pytest.approx(2 / 3)
    assert found["specificity"] == 1.0
    assert found["f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))


def test_pixel_dice_thresholds_where_dice_is_best_on_val():
    class Identity(torch.nn.Module):  # the anomaly map is the image
        def forward(self, image):
            score = image.flatten(1).mean(1)
            return {"anomaly_map": image, "anomaly_score": score, "sample_loss": score}

    rng = np.random.default_rng(1)

    def split(n):
        masks = rng.random((n, 1, 8, 8)) < 0.2
        image = torch.from_numpy(rng.normal(masks * 1.0, 0.7)).float()
        return {"image": image, "mask": torch.from_numpy(masks), "label": torch.arange(n) % 2}

    test, val = split(6), split(6)
    loss, cpu = TaskLoss(phantom().info), Speed(torch.device("cpu"))

    def pixels(split):  # one pass of the model over the split, as medimg eval makes it
        return split_cases(Identity(), TensorBatches(split, 4, torch.device("cpu")), loss, cpu).pixel_values()

    found = pixel_metrics(pixels(test), pixels(val))
    scores, truth = val["image"].flatten().double().numpy(), val["mask"].flatten().numpy()

    def dice(called, truth):
        return 2 * (called & truth).sum() / (called.sum() + truth.sum())

    best = max(np.unique(scores), key=lambda t: dice(scores >= t, truth))  # every threshold, by brute force
    assert found["pixel_threshold"] == pytest.approx(best)
    called = test["image"].flatten().double().numpy() >= best
    assert found["pixel_dice"] == pytest.approx(dice(called, test["mask"].flatten().numpy()))


def test_loss_and_validation_loss_count_normal_images_only():
    info = phantom().info
    loss = TaskLoss(info)
    batch = {"image": torch.zeros(4, 1, 2, 2), "label": torch.tensor([0, 1, 0, 1])}
    assert loss({"sample_loss": torch.tensor([1.0, 20.0, 3.0, 40.0])}, batch).item() == pytest.approx(2.0)

    class Echo(torch.nn.Module):  # the anomaly score and loss of an image is its first pixel
        def forward(self, image):
            value = image.flatten(1)[:, 0]
            return {"sample_loss": value, "anomaly_score": value, "anomaly_map": image[:, :1]}

    values = torch.tensor([1.0, 100.0, 3.0, 5.0, 200.0])
    split = {"image": values.view(5, 1, 1, 1), "label": torch.tensor([0, 1, 0, 0, 1])}
    found = evaluate(Echo(), TensorBatches(split, 2, torch.device("cpu")), loss, Speed(torch.device("cpu")))
    assert found["loss"] == pytest.approx((1 + 3 + 5) / 3)  # across batches of 2, 2 and 1 images
    assert found["auc"] == 1.0


def test_padim_fits_the_mean_and_covariance_and_scores_mahalanobis_distances():
    args = dict(spatial_dims=2, in_channels=1, num_classes=2, num_seg_classes=0, task="anomaly")
    model = create_model("padim", **args, image_size=(16, 16), channels=[4, 8], latent_size=8, features=6)
    images, probe = torch.randn(20, 1, 16, 16), torch.randn(3, 1, 16, 16)
    model.train()
    model(images[:12])  # the statistics add up over batches
    model(images[12:])
    model.eval()
    with torch.no_grad():
        embedded, probed = model.embed(images).double().numpy(), model.embed(probe)
        found = model.distances(probed).numpy()
        maps = model(probe)["anomaly_map"]
    for position in (0, 7, embedded.shape[1] - 1):
        values = embedded[:, position]
        covariance = np.cov(values.T, bias=True) + 0.01 * np.eye(values.shape[1])
        for b in range(3):
            expected = mahalanobis(probed[b, position].numpy(), values.mean(0), np.linalg.inv(covariance))
            assert found[b, position] == pytest.approx(expected, rel=1e-4)  # float32 distances
    assert maps.shape == (3, 1, 16, 16) and (maps > 0).all()


@pytest.mark.skipif(not (SHARED / "breastmnist.npz").is_file(), reason=f"MedMNIST files not found in {SHARED}")
def test_breastmnist_autoencoder_never_trains_on_a_malignant_image(tmp_path, monkeypatch):
    seen: list[torch.Tensor] = []
    forward = TaskLoss.forward

    def spy(self, outputs, batch):
        if torch.is_grad_enabled():  # training steps (evaluation runs under no_grad)
            seen.append(batch["label"].clone())
        return forward(self, outputs, batch)

    monkeypatch.setattr(TaskLoss, "forward", spy)
    run = tmp_path / "run"
    args = ["data=medmnist", "data.name=breastmnist", f"data.root={SHARED}", "data.download=false"]
    # MedMNIST's BreastMNIST has two classes, 0 malignant and 1 "normal, benign": the latter is normal
    args += ["data.task=anomaly", "data.normal_classes=[1]", "model=autoencoder", "trainer.epochs=2"]
    assert main(["train", *args, "device=cpu", f"hydra.run.dir={run}"]) == 0
    train_labels = np.load(SHARED / "breastmnist.npz")["train_labels"].ravel()
    normal = int((train_labels == 1).sum())
    assert normal < len(train_labels)
    seen_labels = torch.cat(seen)
    assert (seen_labels == 0).all() and len(seen_labels) == 2 * (normal // 32) * 32  # full batches, 2 epochs
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "anomaly" and summary["positive_class"] == {"index": 1, "name": "abnormal"}
    for key in ("auc", "ap", "sensitivity", "specificity", "f1", "threshold"):
        assert math.isfinite(summary["test"][key]), key
    rows = read_metrics_csv(run / "metrics.csv")
    assert all(math.isfinite(row["val_auc"]) and math.isfinite(row["val_ap"]) for row in rows)
    table = (run / "table.md").read_text()
    assert "AUC %" in table and "AP %" in table and "test" in table


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory) -> Path:
    """A denoising autoencoder trained on the normal phantoms (about 10 s on a CPU core)."""
    run = tmp_path_factory.mktemp("denoiser")
    overrides = [*PHANTOM, "data.num_samples=400", "model=denoising_autoencoder", "trainer.epochs=30"]
    train(compose_config([*TINY, *overrides, "trainer.batch_size=16", "trainer.epochs=30"]), run)
    return run


def test_anomaly_map_is_high_on_a_planted_lesion(denoiser):
    trained = load_trained(denoiser / "checkpoints" / "best.pt", "cpu")
    normal = trained.data.test["image"][trained.data.test["label"] == 0][:8]
    grid = torch.stack(torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij"))
    disc = ((grid - 16).pow(2).sum(0) <= 16).float()  # radius 4 px at the organ's centre
    planted = normal + 0.3 * disc
    maps = anomaly_maps(trained.model, planted, trained.speed)[:, 0]
    before = anomaly_maps(trained.model, normal, trained.speed)[:, 0]
    inside, ring = disc.bool(), ((grid - 16).pow(2).sum(0) <= 144) & ~disc.bool()
    assert (maps[:, inside].mean(1) > 4 * maps[:, ring].mean(1)).all()
    assert (maps.flatten(1).mean(1) > before.flatten(1).mean(1)).all()


def test_eval_reports_bootstrap_intervals_pixel_metrics_and_pictures(denoiser):
    assert main(["eval", f"checkpoint={denoiser / 'checkpoints' / 'best.pt'}", "device=cpu", "eval.bootstrap=200"]) == 0
    out = denoiser / "eval" / "test"
    document = json.loads((out / "metrics.json").read_text())
    summary = json.loads((denoiser / "summary.json").read_text())
    auc = document["metrics"]["auc"]
    assert auc["low"] <= auc["value"] <= auc["high"] and auc["high"] > auc["low"]
    assert auc["value"] == pytest.approx(summary["test"]["auc"], abs=1e-6)
    assert document["decision"]["threshold"] == pytest.approx(summary["test"]["threshold"])
    assert document["metrics"]["sensitivity"]["value"] == pytest.approx(summary["test"]["sensitivity"])
    assert 0.5 < document["metrics"]["pixel_auc"]["value"] <= 1 and document["metrics"]["pixel_auc"]["low"] is None
    assert 0 < document["metrics"]["pixel_dice"]["value"] < 1 and document["decision"]["pixel_threshold"] > 0
    for name in ("anomaly_maps.png", "score_histogram.png", "predictions.csv", "metrics.csv"):
        assert (out / name).is_file(), name
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert header.startswith("case,id,label,score,prediction")


def test_export_gives_the_anomaly_map_and_score(denoiser):
    checkpoint = denoiser / "checkpoints" / "best.pt"
    assert main(["export", f"checkpoint={checkpoint}", "format=torchscript", "device=cpu"]) == 0
    described = json.loads((denoiser / "export" / "model.pt.json").read_text())
    assert list(described["outputs"]) == ["anomaly_map", "anomaly_score"]


@pytest.mark.slow
def test_denoising_autoencoder_localises_phantom_lesions(tmp_path):
    """The experiment's best method at its setting (one seed): pixel AUC of at least 0.90 (about 45 s)."""
    overrides = [*PHANTOM, "data.num_samples=1500", "model=denoising_autoencoder", "trainer.epochs=60", "device=cpu"]
    summary = train(compose_config(overrides), tmp_path)
    assert summary["test"]["pixel_auc"] >= 0.90
    assert summary["test"]["auc"] >= 0.85
