"""The folder and manifest sources on image files the tests write, and their bad-input messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, write_png
from PIL import Image

from medimg_cli.commands.train import train
from medimg_cli.data import build_data
from medimg_cli.data.readers import normalise, read_image
from medimg_cli.errors import ConfigError


def data_cfg(source: str, *overrides: str) -> dict:
    return dict(compose_config([f"data={source}", "data.image_size=32", *overrides]).data)


def test_png_reads_like_pillow(tmp_path):
    array = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    write_png(tmp_path / "a.png", array)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", 1)[0], np.asarray(Image.open(tmp_path / "a.png")))
    assert read_image(tmp_path / "a.png", 3).shape == (3, 3, 4)


def test_normalisations():
    image = torch.tensor([[2.0, 4.0], [6.0, 10.0]])
    assert torch.equal(normalise(image, "minmax"), torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    z = normalise(image, "zscore")
    assert z.mean().abs() < 1e-6 and (z.std() - 1).abs() < 1e-6


def test_folder_labels_masks_and_resize(image_folder):
    splits = build_data(
        data_cfg(
            "folder",
            f"data.root={image_folder / 'images'}",
            f"data.mask_root={image_folder / 'masks'}",
            "data.task=multitask",
        )
    )
    assert splits.info.class_names == ("lesion", "normal") and splits.info.num_seg_classes == 2
    assert splits.train["image"].shape[1:] == (1, 32, 32) and splits.train["mask"].shape[1:] == (1, 32, 32)
    assert set(splits.train["mask"].unique().tolist()) == {0, 1}
    assert sum(len(ids) for ids in splits.ids.values()) == 24
    # stratified: both classes in every split
    for name in ("train", "val", "test"):
        assert set(splits.split(name)["label"].tolist()) == {0, 1}


def test_folder_trains_end_to_end_and_writes_a_reusable_split(image_folder, tmp_path):
    root = f"data.root={image_folder / 'images'}"
    cfg = compose_config(["data=folder", root, "data.image_size=32", "trainer.epochs=1", "device=cpu"])
    train(cfg, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "splits.json").read_text())
    reused = build_data(data_cfg("folder", root, f"data.splits={tmp_path / 'run' / 'splits.json'}", "data.seed=9"))
    assert reused.ids == saved


def _manifest(tmp_path: Path, rows: list[dict], name: str = "manifest.csv") -> Path:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(rows))
    else:
        keys = list(rows[0])
        path.write_text("\n".join([",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]) + "\n")
    return path


def _patient_rows(image_folder: Path) -> list[dict]:
    """24 images of 8 patients (3 each), labels from the folder names."""
    rows = []
    for i, path in enumerate(sorted((image_folder / "images").rglob("*.png"))):
        label = path.parent.name
        rows.append({"image": str(path.relative_to(image_folder)), "label": label, "patient_id": f"{label}-{i % 4}"})
    return rows


@pytest.mark.parametrize("name", ["manifest.csv", "manifest.json"])
def test_manifest_groups_patients(image_folder, name):
    path = _manifest(image_folder, _patient_rows(image_folder), name)
    splits = build_data(data_cfg("manifest", f"data.path={path}"))
    assert sum(len(splits.split(s)["image"]) for s in ("train", "val", "test")) == 24
    assert all(len(ids) > 0 for ids in splits.ids.values())


def test_the_split_depends_on_the_seed_not_on_the_secret_salt(image_folder):
    """The salt changes the hashed ids written to splits.json, never which samples go where."""
    path = _manifest(image_folder, _patient_rows(image_folder), "manifest.csv")
    a, b, c = (
        build_data(data_cfg("manifest", f"data.path={path}", *o)) for o in (["data.salt=a"], ["data.salt=b"], [])
    )
    assert a.names == b.names == c.names and a.ids != b.ids
    assert build_data(data_cfg("manifest", f"data.path={path}", "data.seed=1")).names != a.names


def test_manifest_with_a_patient_in_two_explicit_splits_is_refused(image_folder):
    rows = _patient_rows(image_folder)
    for i, row in enumerate(rows):
        row["split"] = ("train", "val", "test")[i % 3]  # every patient's 3 images across splits
    path = _manifest(image_folder, rows)
    with pytest.raises(ConfigError, match="patient\\(s\\) appear in more than one split"):
        build_data(data_cfg("manifest", f"data.path={path}"))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_bytes(b""), "cannot read the image"),  # zero-byte PNG
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n garbage"), "cannot read the image"),
        (lambda p: p.unlink(), "is missing"),
    ],
)
def test_bad_image_files_name_the_file(image_folder, write, message):
    rows = _patient_rows(image_folder)
    write(image_folder / rows[5]["image"])
    path = _manifest(image_folder, rows)
    with pytest.raises(ConfigError, match=message) as error:
        build_data(data_cfg("manifest", f"data.path={path}"))
    assert rows[5]["image"] in str(error.value)


def test_mismatched_mask_and_missing_column_and_empty_folder(image_folder, tmp_path):
    write_png(image_folder / "masks" / "lesion" / "0.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ConfigError, match="mask shape \\(10, 10\\) differs from image shape \\(40, 48\\)"):
        build_data(
            data_cfg(
                "folder",
                f"data.root={image_folder / 'images'}",
                f"data.mask_root={image_folder / 'masks'}",
                "data.task=segmentation",
            )
        )
    path = _manifest(tmp_path, [{"file": "a.png"}])
    with pytest.raises(ConfigError, match="no 'image' column"):
        build_data(data_cfg("manifest", f"data.path={path}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images found"):
        build_data(data_cfg("folder", f"data.root={tmp_path / 'empty'}"))


def test_denoising_gaussian_and_median():
    from medimg_cli.data.readers import denoise

    image = np.zeros((1, 9, 9), np.float32)
    image[0, 4, 4] = 1.0  # an impulse: the median removes it, the Gaussian spreads it
    assert denoise(image, "median", 1).max() == 0.0
    smoothed = denoise(image, "gaussian", 1.0)
    assert smoothed.sum() == pytest.approx(1.0, rel=1e-3) and smoothed[0, 4, 4] < 0.2
    with pytest.raises(ConfigError, match="unknown data.denoise 'mean'"):
        denoise(image, "mean", 1)


def test_decoded_data_are_cached_until_a_file_changes(image_folder, tmp_path, monkeypatch):
    import medimg_cli.data.files as files

    calls = []
    real = files._decode
    monkeypatch.setattr(files, "_decode", lambda *a: calls.append(1) or real(*a))
    cfg = data_cfg("folder", f"data.root={image_folder / 'images'}", f"data.cache_dir={tmp_path / 'cache'}")
    first = build_data(cfg)
    assert len(calls) == 24 and len(list((tmp_path / "cache").glob("folder-*.pt"))) == 1
    again = build_data(cfg)
    assert len(calls) == 24  # read from the cache, not decoded
    assert again.ids == first.ids and torch.equal(again.train["image"], first.train["image"])
    build_data({**cfg, "seed": 5})
    assert len(calls) == 24  # another split of the same decoded data
    write_png(image_folder / "images" / "lesion" / "0.png", np.zeros((40, 48), np.uint8))
    build_data(cfg)
    assert len(calls) == 48  # a changed file invalidates the entry
    build_data({**cfg, "normalize": "zscore"})
    assert len(calls) == 72  # so does a preprocessing key


def test_on_bad_file_skip_lists_the_file_and_trains_on_the_rest(image_folder, tmp_path):
    (image_folder / "images" / "normal" / "5.png").write_bytes(b"")
    root = f"data.root={image_folder / 'images'}"
    cfg = compose_config(
        ["data=folder", root, "data.image_size=32", "data.on_bad_file=skip", "trainer.epochs=1", "device=cpu"]
    )
    train(cfg, tmp_path / "run")
    skipped = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 1 and "5.png: cannot read the image" in skipped[0]
    assert sum(len(ids) for ids in json.loads((tmp_path / "run" / "splits.json").read_text()).values()) == 23


def test_nan_pixels_are_refused_with_the_file_name(tmp_path):
    for label in ("a", "b"):
        for i in range(4):
            (tmp_path / label).mkdir(exist_ok=True)
            np.save(tmp_path / label / f"{i}.npy", np.ones((8, 8), np.float32))
    bad = np.ones((8, 8), np.float32)
    bad[2, 2] = np.nan
    np.save(tmp_path / "b" / "2.npy", bad)
    with pytest.raises(ConfigError, match="b/2.npy: the image has NaN or infinite values"):
        build_data(data_cfg("folder", f"data.root={tmp_path}", "data.image_size=8"))
