"""``medimg augment preview|export`` on the phantom and a MedMNIST file."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, run_cli
from omegaconf import OmegaConf
from PIL import Image

from medimg_cli.commands.augment import export, preview
from medimg_cli.commands.train import train
from medimg_cli.data import build_data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
PHANTOM = ["data.num_samples=40", "data.image_size=32", "device=cpu"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_preview_writes_a_grid_and_one_row_per_augmented_image(tmp_path):
    preview(compose_config([*PHANTOM, "augment=paper", "images=3", "augment.copies=2"], "augment_preview"), tmp_path)
    rows = read_csv(tmp_path / "augmentations.csv")
    assert [(r["original"], r["augmented"]) for r in rows] == [
        (f"img_0000{i}", f"img_0000{i}_aug_{c}") for i in range(3) for c in (1, 2)
    ]
    assert all(set(r["transformation"].replace("; ", ";").split(";")) for r in rows)
    assert any("rotate(degrees=" in r["transformation"] for r in rows)  # prob 0.5 each, 6 draws
    with Image.open(tmp_path / "preview.png") as grid:  # 3 rows of 1 original + 2 copies
        assert grid.height >= 512 and 0.8 < grid.width / grid.height < 1.3
    assert (tmp_path / "preview.pdf").is_file() and (tmp_path / "preview.svg").is_file()


def test_export_writes_a_dataset_that_data_manifest_reads_back(tmp_path):
    cfg = compose_config([*PHANTOM, "augment=geometric", "augment.copies=2"], "augment_export")
    counts = export(cfg, tmp_path / "export")
    original = build_data(OmegaConf.to_container(cfg.data, resolve=True))
    sizes = {s: len(original.split(s)["image"]) for s in ("train", "val", "test")}
    assert counts == {"train": 3 * sizes["train"], "val": sizes["val"], "test": sizes["test"]}
    rows = read_csv(tmp_path / "export" / "manifest.csv")
    first = next(r for r in rows if r["original"] == "train_00000" and r["transformation"] == "none")
    np.testing.assert_array_equal(np.load(tmp_path / "export" / first["image"]), original.train["image"][0].numpy())
    copies = [r for r in rows if r["original"] == "train_00000" and r["transformation"] != "none"]
    assert len(copies) == 2 and all(r["patient_id"] == "train_00000" for r in copies)

    classes = ",".join(original.info.class_names)
    reread = compose_config(
        [
            "data=manifest",
            f"data.path={tmp_path / 'export' / 'manifest.csv'}",
            "data.task=multitask",
            f"data.classes=[{classes}]",
            "data.image_size=32",
            "data.normalize=none",
            "data.cache=false",
            "trainer.epochs=1",
            "trainer.batch_size=16",
            "device=cpu",
        ]
    )
    back = build_data(OmegaConf.to_container(reread.data, resolve=True))
    assert len(back.train["image"]) == counts["train"]
    assert torch.equal(back.test["label"].sort().values, original.test["label"].sort().values)
    summary = train(reread, tmp_path / "run")
    assert summary["epochs"] == 1


def test_export_refuses_mixing_recipes(tmp_path):
    result = run_cli("augment", "export", "augment=mix", "data.task=classification", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2 and "soft labels" in result.stderr


@pytest.mark.skipif(not (SHARED / "breastmnist.npz").is_file(), reason="needs ../shared/data/medmnist/breastmnist.npz")
def test_preview_and_export_on_a_medmnist_file(tmp_path):
    data = ["data=medmnist", "data.name=breastmnist", f"data.root={SHARED}", "data.download=false"]
    result = run_cli("augment", "preview", *data, "augment=strong", "images=4", f"hydra.run.dir={tmp_path / 'p'}")
    assert result.returncode == 0, result.stderr
    assert len(read_csv(tmp_path / "p" / "augmentations.csv")) == 4 * 4
    counts = export(
        compose_config([*data, "augment=paper", "augment.copies=1", "device=cpu"], "augment_export"), tmp_path / "e"
    )
    assert counts == {"train": 2 * 546, "val": 78, "test": 156}  # BreastMNIST's official split sizes


def test_augment_without_a_subcommand_says_which_exist():
    result = run_cli("augment")
    assert result.returncode == 2 and "expected a subcommand: preview, export" in result.stderr


@pytest.mark.parametrize("command, subcommands", [("augment", ("preview", "export")), ("data", ("inspect", "plan"))])
def test_help_of_a_command_with_subcommands_lists_them(command, subcommands):
    result = run_cli(command, "--help")
    assert result.returncode == 0 and "error" not in result.stderr
    assert all(f"  {name}" in result.stdout for name in subcommands)
