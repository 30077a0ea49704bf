"""A corpus of bad inputs: each builds its files in a folder and returns the command line and a
piece of the one-line message it must produce (tests/test_refusals.py runs them).

Every case is a user mistake, a hostile or broken file, or a fault of the place a run writes to;
none may end in a traceback or a wrong number.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
from PIL import Image

TINY = ["data.num_samples=32", "data.image_size=32", "trainer.epochs=1", "trainer.batch_size=16", "device=cpu"]


class Case(NamedTuple):
    name: str
    argv: Callable[[Path], list[str]]  # builds the case's files under the folder; the medimg command line
    expected: str  # part of the message
    code: int = 2


def _train(*overrides: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["train", *TINY, *overrides, f"hydra.run.dir={tmp / 'run'}"]


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _classes(root: Path, names=("a", "b"), per_class: int = 6, masks: Path | None = None, mask_value: int = 1) -> None:
    """Random 20x20 PNGs in class folders (and masks with a square of ``mask_value``)."""
    rng = np.random.default_rng(0)
    for label in names:
        for i in range(per_class):
            _png(root / label / f"{i}.png", (rng.random((20, 20)) * 255).astype(np.uint8))
            if masks is not None:
                mask = np.zeros((20, 20), np.uint8)
                mask[5:10, 5:10] = mask_value
                _png(masks / label / f"{i}.png", mask)


def _folder(build: Callable[[Path], None], *overrides: str) -> Callable[[Path], list[str]]:
    """A ``data=folder`` run on images ``build`` writes under ``<tmp>/images`` (masks: ``<tmp>/masks``)."""

    def argv(tmp: Path) -> list[str]:
        build(tmp)
        data = ["data=folder", f"data.root={tmp / 'images'}", "data.image_size=20", "data.cache=false"]
        return ["train", *TINY[2:], *data, *overrides, f"hydra.run.dir={tmp / 'run'}"]

    return argv


def _segmentation(mask_value: int, *overrides: str) -> Callable[[Path], list[str]]:
    seg = ["data.task=segmentation", "model=unet", "data.image_size=32"]
    build = lambda tmp: _classes(tmp / "images", masks=tmp / "masks", mask_value=mask_value)  # noqa: E731
    return lambda tmp: [*_folder(build, *seg, *overrides)(tmp), f"data.mask_root={tmp / 'masks'}"]


def _corrupt_png(tmp: Path) -> None:
    _classes(tmp / "images")
    (tmp / "images" / "a" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def _manifest(rows: str, *overrides: str) -> Callable[[Path], list[str]]:
    def argv(tmp: Path) -> list[str]:
        _classes(tmp / "images")
        (tmp / "images" / "m.csv").write_text(rows)
        data = ["data=manifest", f"data.path={tmp / 'images' / 'm.csv'}", "data.image_size=20", "data.cache=false"]
        return ["train", *TINY[2:], *data, *overrides, f"hydra.run.dir={tmp / 'run'}"]

    return argv


def _nifti(build: Callable[[Path], None], *overrides: str) -> Callable[[Path], list[str]]:
    def argv(tmp: Path) -> list[str]:
        build(tmp)
        data = ["data=nifti", f"data.root={tmp / 'vol' / 'images'}", f"data.mask_root={tmp / 'vol' / 'labels'}"]
        data += ["data.cache=false", "data.task=segmentation", "data.image_size=16"]
        return ["train", *TINY[2:], *data, "model=unet", *overrides, f"hydra.run.dir={tmp / 'run'}"]

    return argv


def _volumes(tmp: Path, count: int = 6, mask_shape=(16, 16, 16)) -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        for folder, data in (
            ("images", rng.random((16, 16, 16)).astype(np.float32)),
            ("labels", np.zeros(mask_shape, np.uint8)),
        ):
            (tmp / "vol" / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.eye(4)), tmp / "vol" / folder / f"case{i}.nii.gz")


def _broken_nifti(tmp: Path) -> None:
    _volumes(tmp)
    path = tmp / "vol" / "images" / "case2.nii.gz"
    path.write_bytes(path.read_bytes()[:200])


def _dicom(build: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    def argv(tmp: Path) -> list[str]:
        (tmp / "dcm").mkdir(parents=True, exist_ok=True)
        build(tmp / "dcm")
        rows = [f"{_series_uid(file)},{'ab'[i % 2]}" for i, file in enumerate(sorted((tmp / "dcm").iterdir()))]
        (tmp / "labels.csv").write_text("\n".join(["SeriesInstanceUID,label", "1.2.3,a", "1.2.4,b", *rows]) + "\n")
        data = ["data=dicom", f"data.root={tmp / 'dcm'}", f"data.labels={tmp / 'labels.csv'}", "data.cache=false"]
        return ["train", *TINY[2:], *data, f"hydra.run.dir={tmp / 'run'}"]

    return argv


def _series_uid(file: Path) -> str:
    import pydicom

    try:
        return pydicom.dcmread(file, stop_before_pixels=True).SeriesInstanceUID
    except Exception:  # not DICOM: no row
        return "0"


def _pydicom_file(name: str) -> Callable[[Path], None]:
    from pydicom.data import get_testdata_file

    return lambda folder: shutil.copy(get_testdata_file(name), folder / name)


def _medmnist(change: Callable[[dict], None] | None = None, raw: bytes | None = None, *overrides: str):
    """A fake breastmnist.npz (2 classes) changed by ``change``, or ``raw`` bytes as the file."""

    def argv(tmp: Path) -> list[str]:
        rng = np.random.default_rng(0)
        arrays = {}
        for split, n in (("train", 20), ("val", 6), ("test", 6)):
            arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
        if change is not None:
            change(arrays)
        np.savez_compressed(tmp / "breastmnist.npz", **arrays)
        if raw is not None:
            (tmp / "breastmnist.npz").write_bytes(raw or (tmp / "breastmnist.npz").read_bytes()[:300])
        data = ["data=medmnist", "data.name=breastmnist", f"data.root={tmp}", "data.download=false"]
        return ["train", *TINY[2:], *data, *overrides, f"hydra.run.dir={tmp / 'run'}"]

    return argv


def _set(key: str, value) -> Callable[[dict], None]:
    return lambda arrays: arrays.__setitem__(key, value(arrays[key]))


def _drop(key: str) -> Callable[[dict], None]:
    return lambda arrays: arrays.pop(key)


CONFIG_CASES = [
    Case("unknown model", _train("model=nope"), "unknown model 'nope'"),
    Case("lr not a number", _train("optim.lr=abc"), "optim.lr='abc' must be a number"),
    Case("misspelt key", _train("optim.lrr=0.1"), "optim.lrr"),
    Case("unknown task", _train("data.task=detection"), "unknown data.task 'detection'"),
    Case("unknown device", _train("device=tpu"), "device='tpu'"),
    Case("negative tracking.images", _train("tracking.images=-1"), "tracking.images"),
    Case("zero image_every", _train("tracking.image_every=0"), "tracking.image_every"),
    Case("zero steps_per_epoch", _train("trainer.steps_per_epoch=0"), "trainer.steps_per_epoch"),
    Case("unknown on_nonfinite", _train("trainer.on_nonfinite=maybe"), "trainer.on_nonfinite"),
    Case("min_match above 1", _train("model.pretrained_min_match=1.5"), "model.pretrained_min_match"),
    Case("two split fractions", _train("data.split=[0.5,0.5]"), "data.split"),
    Case("split over 1", _train("data.split=[0.8,0.2,0.2]"), "data.split"),
    Case("zero batch size", _train("trainer.batch_size=0"), "trainer.batch_size"),
    Case("negative epochs", _train("trainer.epochs=-1"), "trainer.epochs"),
    Case("unknown loss", _train("loss=nope"), "unknown loss 'nope'"),
    Case("unknown optimiser", _train("optim=nope"), "unknown optim 'nope'"),
    Case("unknown scheduler", _train("scheduler=nope"), "unknown scheduler 'nope'"),
    Case("unknown augment recipe", _train("augment=nope"), "unknown augment 'nope'"),
    Case("unknown data source", _train("data=nope"), "unknown data 'nope'"),
    Case("not a model argument", _train("+model.widthh=3"), "model.widthh"),
    Case("unknown monitor", _train("trainer.monitor=val_nope"), "val_nope"),
    Case("unknown precision", _train("trainer.precision=fp8"), "trainer.precision"),
    Case("seed not a number", _train("seed=abc"), "seed"),
    Case("phantom too few samples", _train("data.num_samples=2"), "data.num_samples"),
    Case("learning rate 1e12", _train("optim.lr=1e12", "trainer.epochs=3"), "loss is nan", code=3),
]

CALLBACK_YAML = "# @package _global_\nhydra:\n  callbacks:\n    x:\n      _target_: os.makedirs\n      name: /tmp/x\n"


def _config_dir(tmp: Path) -> list[str]:
    (tmp / "conf" / "experiment").mkdir(parents=True)
    (tmp / "conf" / "experiment" / "evil.yaml").write_text(CALLBACK_YAML)
    return ["train", "--config-dir", str(tmp / "conf"), "+experiment=evil", f"hydra.run.dir={tmp / 'run'}"]


SECURITY_CASES = [
    Case("hydra callback override", _train("+hydra.callbacks.x._target_=os.makedirs"), "--allow-callbacks"),
    Case("launcher _target_ override", _train("hydra.launcher._target_=os.system"), "--allow-callbacks"),
    Case("callback in a config folder", _config_dir, "evil.yaml: key 'hydra.callbacks'"),
]

FILE_CASES = [
    Case("missing image folder", _folder(lambda tmp: None), "images"),
    Case("empty image folder", _folder(lambda tmp: (tmp / "images").mkdir()), "images"),
    Case("one class only", _folder(lambda tmp: _classes(tmp / "images", names=("a",))), "1 class (a)"),
    Case("corrupt png", _folder(_corrupt_png), "3.png"),
    Case("mask value above mask_classes", _segmentation(3, "data.mask_classes=2"), "3"),
    Case("non-label mask", _segmentation(128), "128"),
    Case("missing mask folder", _segmentation(1, "data.mask_suffix=_nope"), "mask"),
    Case("manifest without image column", _manifest("file,label\na/0.png,a\n"), "image"),
    Case("manifest row of a missing file", _manifest("image,label\na/0.png,a\na/99.png,b\nb/1.png,b\n"), "99.png"),
    Case("manifest of one row", _manifest("image,label\na/0.png,a\n"), "m.csv"),
    Case("manifest missing", lambda tmp: ["train", "data=manifest", f"data.path={tmp / 'none.csv'}"], "none.csv"),
    Case("truncated nifti", _nifti(_broken_nifti), "case2.nii.gz"),
    Case("nifti mask of another shape", _nifti(lambda tmp: _volumes(tmp, mask_shape=(16, 16, 8))), "case0"),
    Case("nifti folder without volumes", _nifti(lambda tmp: (tmp / "vol" / "images").mkdir(parents=True)), "images"),
    Case("dcm that is not dicom", _dicom(lambda d: (d / "x.dcm").write_text("hello")), "x.dcm"),
    Case("dicom folder without series", _dicom(lambda d: None), "dcm"),
    Case("broken 12-bit jpeg dicom", _dicom(_pydicom_file("JPEG-lossy.dcm")), "JPEG-lossy.dcm"),
    Case("truncated npz", _medmnist(raw=b""), "truncated download?"),
    Case("npz of random bytes", _medmnist(raw=b"PK\x03\x04 not a zip at all"), "breastmnist.npz"),
    Case("npz without test labels", _medmnist(_drop("test_labels")), "test_labels"),
    Case("float labels", _medmnist(_set("train_labels", lambda a: a + 0.5)), "train_labels"),
    Case("label outside the classes", _medmnist(_set("val_labels", lambda a: a + 5)), "val_labels"),
    Case("NaN pixels", _medmnist(_set("test_images", lambda a: np.where(a > 128, np.nan, a))), "NaN"),
    Case("npz missing, no download", _medmnist(_drop("train_images"), None, "data.name=pathmnist"), "pathmnist.npz"),
    Case("unknown medmnist size", _medmnist(None, None, "data.size=100"), "data.size"),
    Case("unknown medmnist name", _medmnist(None, None, "data.name=nopemnist"), "nopemnist"),
]
