"""NIfTI and nnU-Net sources on volumes the tests write, checked against nibabel."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import check_test_metrics, compose_config

from medimg_cli.commands.train import train
from medimg_cli.data import build_data
from medimg_cli.data.readers import read_volume
from medimg_cli.errors import ConfigError


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)


def phantom_volume(rng: np.random.Generator, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A noisy volume with one bright cube; the mask marks the cube."""
    image = rng.normal(0, 0.2, (size, size, size)).astype(np.float32)
    mask = np.zeros((size, size, size), np.uint8)
    x, y, z = rng.integers(2, size - 6, 3)
    image[x : x + 4, y : y + 4, z : z + 4] += 2
    mask[x : x + 4, y : y + 4, z : z + 4] = 1
    return image, mask


def test_reader_matches_nibabel_canonical_orientation_and_spacing(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    lps = np.diag([-2.0, -2.0, 3.0, 1.0])  # x and y flipped relative to RAS
    write_nifti(tmp_path / "v.nii.gz", data, lps)
    array, spacing = read_volume(tmp_path / "v.nii.gz")
    reference = nib.as_closest_canonical(nib.load(tmp_path / "v.nii.gz")).get_fdata()
    np.testing.assert_array_equal(array[0], reference)
    np.testing.assert_array_equal(array[0], data[::-1, ::-1, :])
    assert spacing == (2.0, 2.0, 3.0)


def test_4d_volumes_become_channels(tmp_path):
    write_nifti(tmp_path / "v.nii", np.zeros((4, 5, 6, 2), np.float32))
    assert read_volume(tmp_path / "v.nii")[0].shape == (2, 4, 5, 6)


def test_garbage_nifti_names_the_file(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ConfigError, match="bad.nii.gz: cannot read the NIfTI volume"):
        read_volume(tmp_path / "bad.nii.gz")


@pytest.fixture
def nifti_dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(12):
        image, mask = phantom_volume(rng)
        write_nifti(tmp_path / "images" / f"case{i:02d}.nii.gz", image)
        write_nifti(tmp_path / "masks" / f"case{i:02d}.nii.gz", mask)
    return tmp_path


def nifti_overrides(root: Path, *extra: str) -> list[str]:
    return [
        "data=nifti",
        f"data.root={root / 'images'}",
        f"data.mask_root={root / 'masks'}",
        "data.image_size=16",
        *extra,
    ]


def test_nifti_segmentation_trains_in_3d(nifti_dataset, tmp_path):
    cfg = compose_config(
        [
            *nifti_overrides(nifti_dataset),
            "model.channels=[4,8]",
            "model.decoder_channels=4",
            "trainer.epochs=1",
            "trainer.batch_size=4",
            "device=cpu",
        ]
    )
    summary = train(cfg, tmp_path / "run")
    check_test_metrics(tmp_path / "run", summary["test"])
    splits = build_data(dict(cfg.data))
    assert splits.info.spatial_dims == 3 and splits.train["mask"].shape[1:] == (1, 16, 16, 16)


def test_slices_of_a_volume_stay_in_one_split(nifti_dataset):
    splits = build_data(dict(compose_config(nifti_overrides(nifti_dataset, "data.slice_axis=2")).data))
    assert splits.info.spatial_dims == 2 and splits.train["image"].shape[1:] == (1, 16, 16)
    for name in ("train", "val", "test"):
        assert len(splits.split(name)["image"]) == 16 * len(splits.ids[name])  # whole volumes only


def test_resampling_to_a_spacing_scales_the_mask(tmp_path):
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:4, 2:4, 2:4] = 1
    for i in range(6):
        write_nifti(
            tmp_path / "images" / f"c{i}.nii",
            np.random.default_rng(i).random((8, 8, 8), dtype=np.float32),
            np.diag([2.0, 2.0, 2.0, 1.0]),
        )
        write_nifti(tmp_path / "masks" / f"c{i}.nii", mask, np.diag([2.0, 2.0, 2.0, 1.0]))
    cfg = compose_config(
        nifti_overrides(tmp_path, "data.spacing=[1,1,1]", "data.image_size=null", "data.split=[0.5,0.25,0.25]")
    )
    splits = build_data(dict(cfg.data))
    assert int(splits.train["mask"][0].sum()) == 8 * 8  # 2x2x2 voxels at 2 mm -> 4x4x4 at 1 mm


def _nnunet(root: Path, cases: int = 8) -> Path:
    rng = np.random.default_rng(1)
    for i in range(cases):
        image, mask = phantom_volume(rng)
        write_nifti(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz", image)
        write_nifti(root / "imagesTr" / f"case_{i:03d}_0001.nii.gz", image * 2)
        write_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", mask)
    meta = {
        "channel_names": {"0": "T1", "1": "T2"},
        "labels": {"background": 0, "lesion": 1, "edema": 2},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_v2_stacks_channel_files(tmp_path):
    root = _nnunet(tmp_path / "Dataset001_Test")
    splits = build_data(dict(compose_config(["data=nnunet", f"data.root={root}", "data.image_size=16"]).data))
    assert splits.info.in_channels == 2 and splits.info.num_seg_classes == 3
    assert splits.info.modalities == 2 and splits.info.modality_names == ("T1", "T2")  # model.fusion can take them
    assert sum(len(splits.split(s)["image"]) for s in ("train", "val", "test")) == 8


def test_nnunet_missing_channel_and_label_files_are_named(tmp_path):
    root = _nnunet(tmp_path / "Dataset001_Test")
    (root / "imagesTr" / "case_003_0001.nii.gz").unlink()
    with pytest.raises(ConfigError, match="case case_003 has channels \\[0\\], expected 0..1"):
        build_data(dict(compose_config(["data=nnunet", f"data.root={root}"]).data))
    with pytest.raises(ConfigError, match="has no dataset.json"):
        build_data(dict(compose_config(["data=nnunet", f"data.root={tmp_path}"]).data))


def test_decathlon_layout_with_4d_images(tmp_path):
    rng = np.random.default_rng(2)
    training = []
    for i in range(6):
        image, mask = phantom_volume(rng)
        write_nifti(tmp_path / "imagesTr" / f"c{i}.nii.gz", np.stack([image, image], axis=-1))
        write_nifti(tmp_path / "labelsTr" / f"c{i}.nii.gz", mask)
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    meta = {"modality": {"0": "FLAIR", "1": "T1"}, "labels": {"0": "background", "1": "tumour"}, "training": training}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    cfg = compose_config(["data=nnunet", f"data.root={tmp_path}", "data.image_size=16", "data.split=[0.5,0.25,0.25]"])
    splits = build_data(dict(cfg.data))
    assert splits.info.in_channels == 2 and splits.train["image"].shape[1:] == (2, 16, 16, 16)
    assert splits.info.modality_names == ("FLAIR", "T1")  # one 4D file, two modalities


def test_volumes_as_three_channels(nifti_dataset):
    splits = build_data(dict(compose_config(nifti_overrides(nifti_dataset, "data.channels=3")).data))
    assert splits.info.in_channels == 3 and splits.train["image"].shape[1:] == (3, 16, 16, 16)
