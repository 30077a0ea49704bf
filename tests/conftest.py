"""Shared fixtures: compose the real configs, shrunk so a run takes a second or two."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from PIL import Image

# A run small enough for tests: 64 phantoms of 32x32 (the U-Net needs 32 or more), 2 epochs.
TINY = [
    "data.num_samples=64",
    "data.image_size=32",
    "trainer.epochs=2",
    "trainer.batch_size=16",
    "trainer.table_every=1",
    "device=cpu",
]

# What every finished run folder holds (plus Hydra's .hydra/ when run through the CLI).
RUN_FILES = ("config.yaml", "metrics.csv", "summary.json", "table.md", "checkpoints/best.pt", "checkpoints/last.pt")


def compose_config(overrides: list[str] = (), name: str = "train") -> DictConfig:
    """The composed config ``conf/<name>.yaml`` with ``overrides``, as the CLI would build it."""
    with initialize_config_module(config_module="medimg_cli.conf", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=False)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Decoded-data caches and the installation's salt of the tests go to temporary folders,
    not ~/.cache/medimg and ~/.config/medimg."""
    os.environ["MEDIMG_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["MEDIMG_CONFIG_DIR"] = str(tmp_path_factory.mktemp("config"))


@pytest.fixture
def tiny_cfg():
    """Compose the tiny train config plus extra overrides."""
    return lambda *overrides: compose_config([*TINY, *overrides])


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m medimg_cli ARGS`` in a subprocess (what the ``medimg`` script runs), with
    ``env`` (default: this process's) and a wide terminal."""
    env = {**(os.environ if env is None else env), "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "medimg_cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def training_losses(model, loss_fn, batch: dict, lr: float = 1e-3, steps: int = 6) -> list[float]:
    """The loss of ``steps`` Adam steps on one ``batch`` (a model that learns lowers it)."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(batch["image"]), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def check_test_metrics(run_dir: Path, test: dict) -> None:
    """``test`` (summary.json's test metrics) recomputed from the run's ``test_predictions.csv``:
    classification and anomaly metrics with scikit-learn, Dice, IoU (and registration's HD95, folding and
    Jacobian sd) as the mean of the per-case values."""
    import json
    import math

    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from medimg_cli.results import read_cases_csv

    cases = read_cases_csv(run_dir / "test_predictions.csv")
    if "probs" in cases and cases["label"].ndim == 1:
        labels, probs = cases["label"], cases["probs"]
        pred = probs.argmax(axis=1)
        assert test["accuracy"] == pytest.approx(accuracy_score(labels, pred), abs=1e-6)
        summary = json.loads((run_dir / "summary.json").read_text())
        average, positive = summary["f1_average"], (summary["positive_class"] or {}).get("index", 1)
        assert test["f1"] == pytest.approx(f1_score(labels, pred, average=average, pos_label=positive), abs=1e-6)
        if len(np.unique(labels)) < probs.shape[1]:  # an AUC needs every class in the labels
            assert test["auc"] is None or math.isnan(test["auc"])
        elif probs.shape[1] == 2:
            assert test["auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]), abs=1e-6)
        else:
            assert test["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"), abs=1e-6)
    if "score" in cases:  # anomaly detection: the abnormal images' scores should rank high
        from sklearn.metrics import average_precision_score

        assert test["auc"] == pytest.approx(roc_auc_score(cases["label"], cases["score"]), abs=1e-6)
        assert test["ap"] == pytest.approx(average_precision_score(cases["label"], cases["score"]), abs=1e-6)
    for key in ("dice", "iou", "hd95", "folding", "jacobian_std"):  # segmentation and registration
        if key in cases:
            assert test[key] == pytest.approx(float(np.mean(cases[key])), abs=1e-6)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Two classes of 12 images each (40x48), bright squares for 'lesion', masks at 0/255."""
    rng = np.random.default_rng(0)
    for label in ("lesion", "normal"):
        for i in range(12):
            image = (rng.random((40, 48)) * 80).astype(np.uint8)
            mask = np.zeros((40, 48), np.uint8)
            if label == "lesion":
                image[10:20, 10:20] = 250
                mask[10:20, 10:20] = 255
            write_png(tmp_path / "images" / label / f"{i}.png", image)
            write_png(tmp_path / "masks" / label / f"{i}.png", mask)
    return tmp_path
