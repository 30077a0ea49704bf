"""``medimg data inspect`` for every source: report.md, report.json and examples.png."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from conftest import compose_config, run_cli
from PIL import Image
from test_dicom import write_series
from test_files import _manifest, _patient_rows
from test_medmnist import SHARED, needs_shared
from test_volumes import _nnunet, phantom_volume, write_nifti

from medimg_cli.commands.data import inspect


def write_class_folder(root, per_class: int) -> None:
    """Random 20x20 PNGs in class folders ``a`` and ``b``."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray((rng.random((20, 20)) * 255).astype(np.uint8)).save(root / label / f"{i}.png")


def run_inspect(tmp_path, *overrides: str) -> dict:
    report = inspect(compose_config(list(overrides), name="data_inspect"), tmp_path / "out")
    for name in ("report.md", "report.json", "examples.png"):
        assert (tmp_path / "out" / name).is_file(), name
    assert json.loads((tmp_path / "out" / "report.json").read_text())["task"] == report["task"]
    Image.open(tmp_path / "out" / "examples.png").verify()
    return report


def test_phantom_report_counts_and_masks(tmp_path):
    report = run_inspect(tmp_path, "data.num_samples=60")
    assert sum(s["images"] for s in report["splits"].values()) == 60
    assert sum(report["splits"]["train"]["per_class"].values()) == report["splits"]["train"]["images"]
    assert report["splits"]["train"]["mask_class_fraction"][0] > 0.5


@needs_shared
def test_medmnist_report(tmp_path):
    report = run_inspect(tmp_path, "data=medmnist", "data.name=breastmnist", f"data.root={SHARED}")
    assert report["splits"]["test"]["images"] == 156 and report["audit"] == {}


def test_manifest_report_counts_patients(tmp_path):
    write_class_folder(tmp_path / "images", per_class=12)
    rows = _patient_rows(tmp_path)
    for i, row in enumerate(rows):
        row["site"], row["note"] = f"hospital{i % 2}", f"free text {i}"
    manifest = _manifest(tmp_path, rows)
    report = run_inspect(tmp_path, "data=manifest", f"data.path={manifest}", "data.image_size=16")
    sites = Counter()
    for entry in report["splits"].values():
        sites.update(entry["metadata"]["site"])
        assert "note" not in entry["metadata"]  # 24 distinct values: not a subgroup column
    assert sites == {"hospital0": 12, "hospital1": 12}
    assert sum(report["audit"][f"patients_{s}"] for s in ("train", "val", "test")) == 8
    assert "no patient in two splits" in (tmp_path / "out" / "report.md").read_text()


def test_volume_sources_report(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        image, mask = phantom_volume(rng)
        write_nifti(tmp_path / "images" / f"c{i}.nii.gz", image)
        write_nifti(tmp_path / "masks" / f"c{i}.nii.gz", mask)
    report = run_inspect(
        tmp_path,
        "data=nifti",
        f"data.root={tmp_path / 'images'}",
        f"data.mask_root={tmp_path / 'masks'}",
        "data.image_size=16",
    )
    assert report["spatial_dims"] == 3 and len(report["splits"]["train"]["mask_class_fraction"]) == 2
    assert report["native_spacing_mm"] == {"min": [1.0, 1.0, 1.0], "max": [1.0, 1.0, 1.0]}
    root = _nnunet(tmp_path / "nn")
    report = run_inspect(tmp_path, "data=nnunet", f"data.root={root}", "data.image_size=16")
    assert report["channels"] == 2


def test_dicom_report(tmp_path):
    rows = ["PatientID,label"]
    for i in range(8):
        write_series(tmp_path / "study" / f"s{i}", 3, f"PATIENTX{i}")
        rows.append(f"PATIENTX{i},{'x' if i % 2 else 'y'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    report = run_inspect(
        tmp_path,
        "data=dicom",
        f"data.root={tmp_path / 'study'}",
        f"data.labels={tmp_path / 'labels.csv'}",
        "data.label_key=PatientID",
        "data.image_size=[16,16,3]",
        "data.split=[0.5,0.25,0.25]",
    )
    assert report["spatial_dims"] == 3 and report["audit"]["patients_train"] == 4
    assert report["native_spacing_mm"]["max"] == pytest.approx([0.8, 0.8, 2.5])
    for name in ("report.json", "report.md"):
        assert "PATIENTX" not in (tmp_path / "out" / name).read_text()


@pytest.mark.slow
def test_cli_inspect_and_a_missing_subcommand(tmp_path):
    result = run_cli("data", "inspect", "data.num_samples=40", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "examples.png").is_file() and "Dataset report" in result.stdout
    result = run_cli("data")
    assert result.returncode == 2 and "expected a subcommand: inspect" in result.stderr


def test_folder_report_and_a_corrupt_file_exits_2_from_the_cli(tmp_path):
    write_class_folder(tmp_path / "images", per_class=8)
    report = run_inspect(tmp_path, "data=folder", f"data.root={tmp_path / 'images'}", "data.image_size=16")
    assert report["classes"] == ["a", "b"] and "patients_train" not in report["audit"]
    (tmp_path / "images" / "a" / "3.png").write_bytes(b"")  # a zero-byte PNG
    result = run_cli(
        "data", "inspect", "data=folder", f"data.root={tmp_path / 'images'}", f"hydra.run.dir={tmp_path}/r"
    )
    assert result.returncode == 2
    assert "3.png: cannot read the image" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
