"""Native segmentation from the files a user has: masks and ROIs found by suffix in any format,
official split folders, manifest case and ROI columns, and the inputs refused or warned about."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose_config
from PIL import Image
from test_native import _folder_cfg, _write_folder

from medimg_cli.commands.eval import evaluate_checkpoint_cfg
from medimg_cli.commands.train import train
from medimg_cli.data import build_data
from medimg_cli.errors import ConfigError


@pytest.mark.parametrize(
    "bad, extra, message",
    [
        (np.full((28, 44), 3, np.uint8), ["data.mask_classes=2"], "mask value 3 >= data.mask_classes=2"),
        (np.arange(28 * 44).reshape(28, 44) % 200, [], "200 distinct values"),  # a JPEG-smeared mask
        (np.full((28, 44), 0.5, np.float32), [], "mask value 0.5 is not a label"),
        (np.full((28, 44), -1, np.int16), [], "mask value -1 is not a label"),
    ],
    ids=["above_mask_classes", "grey_levels", "fraction", "negative"],
)
def test_mask_values_that_are_not_labels_are_refused_naming_the_file(tmp_path, bad, extra, message):
    _write_folder(tmp_path)
    name = "case01.npy" if bad.dtype != np.uint8 else "case01.png"
    (tmp_path / "masks" / "case01.png").unlink()
    np.save(tmp_path / "masks" / name, bad) if name.endswith(".npy") else Image.fromarray(bad).save(
        tmp_path / "masks" / name
    )
    with pytest.raises(ConfigError, match=message) as error:
        build_data(dict(_folder_cfg(tmp_path, *extra).data))
    assert "case01" in str(error.value)


def test_a_classifier_needs_two_classes(tmp_path):
    for i in range(6):
        (tmp_path / "only").mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8), i * 20, np.uint8)).save(tmp_path / "only" / f"{i}.png")
    cfg = compose_config(["data=folder", f"data.root={tmp_path}", "data.cache=false", "data.split=[0.5,0.25,0.25]"])
    with pytest.raises(ConfigError, match=r"1 class \(only\) cannot train a classifier"):
        build_data(dict(cfg.data))


def _vessel_folder(root, count: int = 8, seed: int = 1) -> None:
    """CHASE_DB1-like names: Image_NN.jpg, masks Image_NN_1stHO.gif (0/255), field of view Image_NN_fov.png."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        image = rng.integers(0, 80, (36, 40, 3)).astype(np.uint8)
        mask = np.zeros((36, 40), np.uint8)
        mask[10:30, 18:21] = 255  # a vertical vessel
        image[mask > 0] = 200
        fov = np.zeros((36, 40), np.uint8)
        fov[2:34, 2:38] = 1
        for folder in ("images", "manual", "fov"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"Image_{i:02d}.jpg")
        Image.fromarray(mask).convert("P").save(root / "manual" / f"Image_{i:02d}_1stHO.gif")
        Image.fromarray(fov).save(root / "fov" / f"Image_{i:02d}_fov.png")


def test_folder_masks_and_rois_found_by_suffix_in_any_format(tmp_path):
    _vessel_folder(tmp_path)
    overrides = [
        "data=folder",
        f"data.root={tmp_path / 'images'}",
        f"data.mask_root={tmp_path / 'manual'}",
        "data.task=segmentation",
        "data.channels=3",
        "data.image_size=null",
        "data.split=[0.5,0.25,0.25]",
        "data.cache=false",
    ]
    with pytest.raises(ConfigError, match=r"no Image_00<\.png, .*\.gif.*> under data.mask_root=.*set data.mask_suffix"):
        build_data(dict(compose_config(overrides).data))
    found = [*overrides, "data.mask_suffix=_1stHO", f"data.roi_root={tmp_path / 'fov'}", "data.roi_suffix=_fov"]
    splits = build_data(dict(compose_config(found).data))
    assert splits.info.num_seg_classes == 2 and int(splits.train["mask"][0].sum()) == 60  # 0/255 GIF -> 0/1
    roi = splits.train["roi"][0, 0]
    assert roi.shape == (64, 64) and int(roi.sum()) == 32 * 36 and int(roi[2:34, 2:38].sum()) == 32 * 36
    resized = build_data(dict(compose_config([*found, "data.image_size=32"]).data))
    assert resized.train["roi"].shape == (len(resized.train["image"]), 1, 32, 32)  # resized with its image


def test_official_split_folders_keep_the_test_set_and_carve_validation_from_training(tmp_path):
    _vessel_folder(tmp_path / "training", count=10)
    _vessel_folder(tmp_path / "test", count=4, seed=2)
    for folder in ("images", "manual"):  # DRIVE-like: <root>/<split folder>/... per tree
        for split in ("training", "test"):
            (tmp_path / folder).mkdir(exist_ok=True)
            (tmp_path / split / folder).rename(tmp_path / folder / split)
    overrides = [
        "data=folder", f"data.root={tmp_path / 'images'}", f"data.mask_root={tmp_path / 'manual'}",
        "data.mask_suffix=_1stHO", "data.task=segmentation", "data.channels=3", "data.image_size=null",
        "data.cache=false", "data.split=[0.6,0.2,0.2]", "data.split_folders={train:training,test:test}",
    ]  # fmt: skip
    splits = build_data(dict(compose_config(overrides).data))
    from medimg_cli.data.splits import anonymise, salt_of

    salt = salt_of({"salt": None})
    assert sorted(splits.ids["test"]) == sorted(anonymise(f"test/Image_{i:02d}.jpg", salt) for i in range(4))
    assert len(splits.ids["train"]) == 7 and len(splits.ids["val"]) == 3  # 0.2 / (0.6 + 0.2) of 10, rounded
    with pytest.raises(ConfigError, match=r"data.split_folders=.*train is needed"):
        build_data(dict(compose_config([*overrides[:-1], "data.split_folders={test:test}"]).data))


def test_manifest_roi_column_and_a_missing_roi_file(tmp_path):
    _vessel_folder(tmp_path)
    rows = ["image,mask,roi"] + [f"images/Image_{i:02d}.jpg,manual/Image_{i:02d}_1stHO.gif,fov/Image_{i:02d}_fov.png"
                                 for i in range(8)]  # fmt: skip
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    overrides = ["data=manifest", f"data.path={tmp_path / 'm.csv'}", "data.task=segmentation", "data.image_size=null",
                 "data.cache=false", "data.split=[0.5,0.25,0.25]"]  # fmt: skip
    splits = build_data(dict(compose_config(overrides).data))
    assert int(splits.test["roi"][0].sum()) == 32 * 36
    (tmp_path / "fov" / "Image_03_fov.png").unlink()
    with pytest.raises(ConfigError, match="roi .*Image_03_fov.png is missing"):
        build_data(dict(compose_config(overrides).data))


def test_a_case_column_names_every_output_and_is_checked(tmp_path):
    _vessel_folder(tmp_path)
    rows = ["case,image,mask"] + [
        f"eye{i:02d},images/Image_{i:02d}.jpg,manual/Image_{i:02d}_1stHO.gif" for i in range(8)
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    overrides = ["data=manifest", f"data.path={tmp_path / 'm.csv'}", "data.task=segmentation", "data.image_size=32",
                 "data.cache=false", "data.split=[0.5,0.25,0.25]", "model=unet", "trainer.epochs=1",
                 "device=cpu"]  # fmt: skip
    train(compose_config(overrides), tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "best.pt"
    evaluate_checkpoint_cfg(
        compose_config([f"checkpoint={checkpoint}", "device=cpu", "eval.bootstrap=20"], name="eval")
    )
    written = sorted(p.stem for p in (tmp_path / "run" / "eval" / "test" / "masks").glob("*.png"))
    assert len(written) == 2 and all(name.startswith("eye") for name in written)
    assert not (tmp_path / "run" / "eval" / "test" / "cases.csv").exists()  # file names only on request
    mapped = [
        f"checkpoint={checkpoint}",
        "device=cpu",
        "eval.bootstrap=20",
        "eval.case_map=true",
        f"out={tmp_path / 'm'}",
    ]
    evaluate_checkpoint_cfg(compose_config(mapped, name="eval"))
    rows_found = (tmp_path / "m" / "cases.csv").read_text().splitlines()
    assert rows_found[0] == "id,file" and len(rows_found) == 3
    assert all(f"Image_{line[3:5]}.jpg" in line for line in rows_found[1:])  # eyeNN -> images/Image_NN.jpg
    for bad, message in (("eye01", "case 'eye01' is listed twice"), ("../x", "case '../x' must be letters")):
        (tmp_path / "m.csv").write_text("\n".join([*rows, f"{bad},images/Image_00.jpg,manual/Image_00_1stHO.gif"]))
        with pytest.raises(ConfigError, match=message):
            build_data(dict(compose_config(overrides).data))


def test_manifest_rows_listed_twice_or_outside_its_folder_are_warned_about(tmp_path, caplog):
    _vessel_folder(tmp_path / "data")
    rows = ["image,mask"] + [f"images/Image_{i:02d}.jpg,manual/Image_{i:02d}_1stHO.gif" for i in range(8)]
    rows += ["images/Image_03.jpg,manual/Image_03_1stHO.gif", "../data/images/Image_04.jpg,manual/Image_04_1stHO.gif"]
    (tmp_path / "data" / "m.csv").write_text("\n".join(rows) + "\n")
    cfg = compose_config(["data=manifest", f"data.path={tmp_path / 'data' / 'm.csv'}", "data.task=segmentation",
                          "data.cache=false", "data.split=[0.5,0.25,0.25]"])  # fmt: skip
    with caplog.at_level("WARNING"):
        build_data(dict(cfg.data))
    assert "2 image(s) listed more than once; first: " in caplog.text and "Image_03.jpg" in caplog.text
    assert "1 image path(s) lead outside the manifest's folder; first: ../data/images/Image_04.jpg" in caplog.text
