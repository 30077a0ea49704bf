"""The self-configuring plan: nnU-Net's rules against hand-worked cases, the memory budget, CT
normalisation, and a run whose keys all say ``auto``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import check_test_metrics, compose_config, run_cli
from test_volumes import nifti_dataset, nifti_overrides  # noqa: F401 (a fixture)

from medimg_cli.commands.eval import evaluate_checkpoint
from medimg_cli.commands.train import train
from medimg_cli.data.fingerprinting import fingerprint_records
from medimg_cli.data.plan import divisor, fit_patch, make_plan, network_plan, sample_bytes, target_spacing
from medimg_cli.data.readers import normalise
from medimg_cli.errors import ConfigError


def test_network_plan_follows_nnunets_rule():
    iso = network_plan((128, 128, 128), (1.0, 1.0, 1.0))
    assert iso["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 5  # 128 -> 4 in five halvings, capped at six stages
    assert iso["filters"] == [32, 64, 128, 256, 320, 320] and iso["kernels"] == [[3, 3, 3]] * 6
    thick = network_plan((160, 160, 40), (0.8, 0.8, 3.0))
    # 3 mm slices are over 2x the 0.8 mm pixels: no pooling and 1-wide kernels along z at first;
    # after one in-plane halving (1.6 mm) z is within 2x and is pooled too
    assert thick["kernels"][:2] == [[3, 3, 1], [3, 3, 3]]
    assert thick["strides"][:3] == [[1, 1, 1], [2, 2, 1], [2, 2, 2]]
    assert network_plan((36, 50), None)["strides"] == [[1, 1], [2, 2], [2, 2], [2, 2]]  # 36 -> 18 -> 9 -> 5


def test_target_spacing_is_the_median_and_thin_slices_win_on_anisotropic_data():
    iso = np.array([[1.0, 1.0, 1.0], [0.8, 0.8, 1.2], [1.2, 1.2, 0.8]])
    assert target_spacing(iso) == [1.0, 1.0, 1.0]
    thick = np.array([[1.0, 1.0, 5.0]] * 9 + [[1.0, 1.0, 2.0]])
    assert target_spacing(thick) == pytest.approx([1.0, 1.0, 4.7])  # numpy's 10th percentile of z: 2 + 0.9 * 3


def test_patch_fits_the_budget_and_a_budget_too_small_is_refused():
    patch, network = fit_patch([200, 200, 200], None, 1e9)
    assert 2 * sample_bytes(patch, network) <= 1e9 < 2 * sample_bytes([n + 16 for n in patch], network)
    assert all(n % d == 0 for n, d in zip(patch, divisor(network["strides"]), strict=True))
    fingerprint = {"shapes": [[64, 64]] * 4, "spacings": None, "foreground": {}, "cases": 4}
    with pytest.raises(ConfigError, match=r"trainer.memory_gb=1e-05 is too small for two patches .*\[16, 16\]"):
        make_plan(fingerprint, 1e-5)


def test_ct_normalisation_clips_then_uses_the_foreground_statistics():
    image = torch.tensor([-1000.0, 0.0, 100.0, 3000.0])
    found = normalise(image, "ct", {"low": -100.0, "high": 200.0, "mean": 50.0, "sd": 25.0})
    assert found.tolist() == pytest.approx([-6.0, -2.0, 2.0, 6.0])  # (-100-50)/25, (0-50)/25, ...
    with pytest.raises(ConfigError, match="data.normalize=ct needs data.intensity"):
        normalise(image, "ct")


def test_fingerprint_intensities_equal_numpy_on_the_foreground(nifti_dataset):  # noqa: F811
    from medimg_cli.data.files import Record
    from medimg_cli.data.readers import read_volume

    paths = sorted((nifti_dataset / "images").glob("*.nii.gz"))[:5]
    records = [Record(name=p.name, images=(p,), mask=nifti_dataset / "masks" / p.name) for p in paths]
    found = fingerprint_records(records, {"modality": "CT"})
    voxels = np.concatenate(
        [read_volume(r.images[0])[0][0][read_volume(r.mask)[0][0] > 0] for r in records]
    )  # 64 per cube: under the sample limit, so every voxel counts
    low, high = np.percentile(voxels, [0.5, 99.5])
    assert found["foreground"]["low"] == pytest.approx(low) and found["foreground"]["high"] == pytest.approx(high)
    assert found["foreground"]["mean"] == pytest.approx(np.clip(voxels, low, high).mean(), rel=1e-5)
    assert found["shapes"] == [[16, 16, 16]] * 5 and found["spacings"] == [[1.0, 1.0, 1.0]] * 5


def test_a_run_with_every_key_auto_plans_trains_and_evaluates(nifti_dataset, tmp_path):  # noqa: F811
    auto = ["data.spacing=auto", "data.patch_size=auto", "data.normalize=auto", "trainer.batch_size=auto"]
    overrides = nifti_overrides(nifti_dataset, "data.image_size=null", "data.modality=CT", "model=dynunet", *auto)
    small = ["trainer.memory_gb=0.02", "trainer.epochs=1", "trainer.steps_per_epoch=2", "device=cpu"]
    summary = train(compose_config([*overrides, *small, "data.cache=false"]), tmp_path)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["patch_size"] == [16, 16, 16] and plan["batch_size"] == 2 and plan["normalize"] == "ct"
    assert plan["fingerprint"]["cases"] < 12  # the training cases only
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())  # the values, so eval rebuilds them
    assert config["data"]["patch_size"] == [16, 16, 16] and config["trainer"]["batch_size"] == 2
    assert config["data"]["intensity"] == plan["intensity"] and config["model"]["strides"] == plan["network"]["strides"]
    check_test_metrics(tmp_path, summary["test"])
    metrics = evaluate_checkpoint(tmp_path / "checkpoints" / "best.pt", "test", "cpu")
    assert metrics["dice"] == pytest.approx(summary["test"]["dice"], abs=1e-6)


def test_medimg_data_plan_prints_and_writes_the_plan(nifti_dataset, tmp_path):  # noqa: F811
    args = [f"data.root={nifti_dataset / 'images'}", f"data.mask_root={nifti_dataset / 'masks'}", "data.cache=false"]
    result = run_cli("data", "plan", "data=nifti", *args, "memory_gb=0.02", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    assert "| data.patch_size | [16, 16, 16] |" in result.stdout and (tmp_path / "plan.json").is_file()
    refused = run_cli("data", "plan", "data=nifti", *args, "memory_gb=0.00001", f"hydra.run.dir={tmp_path}")
    assert refused.returncode == 2 and "too small for two patches" in refused.stderr


def test_the_fingerprint_reads_a_dicom_series_and_its_modality(tmp_path):
    from test_dicom import write_series
    from test_volumes import write_nifti

    from medimg_cli.data.dicom import find_series, read_series
    from medimg_cli.data.files import Record

    write_series(tmp_path / "study" / "s0", 4, "P0", value=100.0)
    (header,) = find_series(tmp_path / "study")
    volume, spacing = read_series(header.files)
    mask = np.zeros(volume.shape[1:], np.uint8)
    mask[2:6, 2:6, 1:3] = 1
    write_nifti(tmp_path / "mask.nii.gz", mask)
    record = Record(name="s0", images=tuple(header.files), mask=tmp_path / "mask.nii.gz", kind="dicom")
    found = fingerprint_records([record], {})
    assert found["modality"] == "CT" and found["shapes"] == [list(volume.shape[1:])]
    assert found["spacings"] == [list(spacing)] and found["foreground"]["mean"] == pytest.approx(
        volume[0][mask > 0].mean()
    )
    assert fingerprint_records([record], {"modality": "MR"})["modality"] == "MR"  # data.modality wins


def test_the_fingerprint_is_computed_once_and_kept_beside_the_cache(nifti_dataset, tmp_path, monkeypatch):  # noqa: F811
    from medimg_cli.data import build_data, files

    overrides = nifti_overrides(
        nifti_dataset, "data.image_size=null", "data.patch_size=auto", f"data.cache_dir={tmp_path}"
    )
    first = build_data(dict(compose_config(overrides).data) | {"memory_gb": 0.02})
    (kept,) = tmp_path.glob("nifti-fingerprint-*.json")
    assert json.loads(kept.read_text()) == first.plan["fingerprint"]

    def refuse(*_):
        raise AssertionError("the fingerprint was computed again")

    monkeypatch.setattr(files, "fingerprint_records", refuse)
    again = build_data(dict(compose_config(overrides).data) | {"memory_gb": 0.02})
    assert again.plan == first.plan
