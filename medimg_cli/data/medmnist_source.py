"""The ``medmnist`` data source: MedMNIST v2 / MedMNIST+ ``.npz`` files with their official splits.

    medimg train data=medmnist data.name=breastmnist data.root=~/data/medmnist
    medimg train data=medmnist data.name=adrenalmnist3d data.size=64

Dataset facts (file names, URLs, MD5s, task type, channels, labels) come from the official
``medmnist`` package's ``INFO``. Files are ``<name>.npz`` (28 px) or ``<name>_<size>.npz``
(64, 128, 224) under ``data.root``. A missing file is downloaded and MD5-checked when
``data.download=true``; offline, one line says which file to put where. Local files are not
MD5-checked: re-saved copies (as in ``shared/data``) are valid data with other bytes.

Label semantics follow the benchmark: binary and multi-class labels are class indices,
ordinal RetinaMNIST is treated as multi-class (as the official protocol does), and ChestMNIST
is multi-label (14 independent binary labels, ``(N, 14)``). Images are scaled to [0, 1].
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torch.nn.functional as F

from medimg_cli.data import SOURCES, DataInfo, Splits, fingerprint
from medimg_cli.errors import ConfigError, unknown_choice

SIZES = (28, 64, 128, 224)


def _info(name: str) -> dict:
    from medmnist.info import INFO  # the package's __init__ is slow to import; only this source needs it

    if name not in INFO:
        raise unknown_choice("MedMNIST dataset data.name", name, INFO)
    return INFO[name]


# The class that is the finding in the binary datasets, by the names MedMNIST's metadata gives
# them: binary F1, sensitivity and PPV are about it (data.positive_class overrides).
FINDING = {"breastmnist": "malignant", "pneumoniamnist": "pneumonia"}


def npz_path(root: str | Path, name: str, size: int) -> Path:
    """Where the official file of ``name`` at ``size`` lives under ``root``."""
    if size not in SIZES:
        raise unknown_choice("data.size", str(size), [str(s) for s in SIZES])
    return Path(root).expanduser() / (f"{name}.npz" if size == 28 else f"{name}_{size}.npz")


def fetch(root: str | Path, name: str, size: int, download: bool) -> Path:
    """Return the local file of ``name``, downloading and MD5-checking it first if allowed."""
    path = npz_path(root, name, size)
    if path.is_file():
        return path
    info = _info(name)
    suffix = "" if size == 28 else f"_{size}"
    url, md5 = info[f"url{suffix}"], info[f"MD5{suffix}"]
    if not download:
        raise ConfigError(f"{path} is missing; download {url} to that path, or set data.download=true")
    from torchvision.datasets.utils import download_url

    try:
        download_url(url, root=str(path.parent), filename=path.name, md5=md5)
    except (URLError, OSError) as error:
        raise ConfigError(
            f"{path} is missing and cannot be downloaded ({type(error).__name__}: offline?); "
            f"fetch {url} to that path, or point data.root at a folder with {path.name}"
        ) from None
    if not path.is_file():  # torchvision leaves no file when the MD5 does not match
        raise ConfigError(f"the download of {url} did not match MD5 {md5}; try again")
    return path


def _images(array: np.ndarray, channels: int, spatial_dims: int, wanted: int) -> np.ndarray:
    """uint8 ``(N, *spatial[, 3])`` -> float32 ``(N, wanted, *spatial)`` in [0, 1]; grayscale is
    repeated when 3 channels are wanted (ImageNet backbones)."""
    if array.ndim == spatial_dims + 1:
        array = array[:, None]
    elif channels == 3:
        array = np.moveaxis(array, -1, 1)
    if wanted == 3 and array.shape[1] == 1:
        array = np.repeat(array, 3, axis=1)
    return array.astype(np.float32) / 255.0


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a MedMNIST ``.npz``; a truncated, corrupt or foreign file is a ``ConfigError``."""
    try:
        with np.load(path) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ConfigError(
            f"{path} is not a readable MedMNIST .npz file ({error}); truncated download? delete it and fetch it again"
        ) from None
    expected = {f"{split}_{kind}" for split in ("train", "val", "test") for kind in ("images", "labels")}
    if not expected <= set(arrays):
        raise ConfigError(f"{path} lacks {sorted(expected - set(arrays))}; is it a MedMNIST file?")
    return arrays


@SOURCES.register("medmnist")
def medmnist_splits(cfg: Mapping) -> Splits:
    """Load the official train/val/test splits of MedMNIST dataset ``cfg["name"]``."""
    name = cfg["name"]
    info = _info(name)
    if cfg["task"] != "classification":
        raise ConfigError(f"MedMNIST has image labels only; use data.task=classification (got {cfg['task']})")
    path = fetch(cfg["root"], name, cfg["size"], cfg["download"])
    spatial_dims = 3 if name.endswith("3d") else 2
    channels = cfg.get("channels") or info["n_channels"]
    if channels not in (1, 3) or (channels == 1 and info["n_channels"] == 3):
        raise ConfigError(f"data.channels={channels}: {name} has {info['n_channels']} channel(s); use null or 3")
    multilabel = info["task"].startswith("multi-label")
    arrays = _read_npz(path)
    upsample = cfg.get("upsample")
    if upsample is not None and (not isinstance(upsample, int) or upsample < cfg["size"]):
        raise ConfigError(f"data.upsample={upsample!r} must be null or a size >= data.size ({cfg['size']}), e.g. 224")
    splits = {}
    classes = len(info["label"])
    for split in ("train", "val", "test"):
        labels = arrays[f"{split}_labels"]
        labels = labels.reshape(len(labels), -1) if multilabel else labels.reshape(-1)
        _check_labels(labels, classes, multilabel, f"{path}: {split}_labels")
        images = torch.from_numpy(_images(arrays[f"{split}_images"], info["n_channels"], spatial_dims, channels))
        if not torch.isfinite(images).all():
            raise ConfigError(f"{path}: {split}_images has NaN or infinite pixels; fix the file (MedMNIST's are uint8)")
        if upsample is not None:  # MedMNIST v2's "(224)": the 28 px images, nearest-neighbour upsampled
            images = F.interpolate(images, size=(upsample,) * spatial_dims, mode="nearest")
        splits[split] = {
            "image": images,
            "label": torch.from_numpy(labels.astype(np.float32 if multilabel else np.int64)),
        }
    class_names = tuple(info["label"][key] for key in sorted(info["label"], key=int))
    data_info = DataInfo(
        task="classification",
        spatial_dims=spatial_dims,
        in_channels=channels,
        num_classes=len(class_names),
        num_seg_classes=0,
        class_names=class_names,
        multilabel=multilabel,
        positive_class=class_names.index(FINDING[name]) if name in FINDING else None,
    )
    return Splits(**splits, info=data_info, fingerprint=fingerprint(arrays))


def _check_labels(labels: np.ndarray, classes: int, multilabel: bool, where: str) -> None:
    """Refuse labels that would be truncated or index out of range instead of a silent wrong number."""
    if not np.isfinite(labels).all() or not np.array_equal(labels, np.round(labels)):
        raise ConfigError(f"{where}: labels must be whole numbers; found {labels[labels != np.round(labels)][:1]}")
    high = 1 if multilabel else classes - 1
    if labels.size and (labels.min() < 0 or labels.max() > high):
        raise ConfigError(f"{where}: label {int(labels.max() if labels.max() > high else labels.min())} is outside "
                          f"0..{high} of this dataset's {classes} classes")  # fmt: skip
