"""``medimg augment preview|export``: see what a recipe does, or write augmented files.

    medimg augment preview augment=paper
    medimg augment preview augment=strong data=medmnist data.name=breastmnist data.root=../shared/data/medmnist
    medimg augment export augment=paper augment.copies=4

``preview`` writes ``preview.png`` (one row per training image: the original, then
``augment.copies`` augmented versions, masks in colour, one intensity scale per row) and
``augmentations.csv``, one row per augmented image with its original and the transformations
with their drawn parameters (the layout of Gomathi and Roopa Chandrika's Table 1). ``export``
writes the whole dataset as files: the training split plus ``augment.copies`` augmented
versions of each training image, the validation and test splits unchanged, and
``manifest.csv``, which ``medimg train data=manifest`` reads back (2D images as ``.npy``,
volumes as ``.nii.gz``; copies keep their original's patient id).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from medimg_cli.augment import Augmenter, build_augment, describe
from medimg_cli.config import check_numbers, resolve_device, seed_everything
from medimg_cli.data import SPLITS, Splits, build_data
from medimg_cli.errors import ConfigError
from medimg_cli.fileio import csv_text, write_atomic
from medimg_cli.hydra_app import dispatch, run_hydra
from medimg_cli.pictures import Tile, class_title, grid_figure
from medimg_cli.reporting.plots import save_figure
from medimg_cli.tables import make_console

HELP = "preview an augmentation recipe (PNG grid + Table 1-style CSV) or export augmented files"
SUBCOMMANDS = {
    "preview": "a PNG grid of augmented samples and what each transform applied",
    "export": "an augmented copy of a dataset's training split, as files and a manifest",
}
BATCH = 64  # samples augmented at once
log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    command = dispatch("augment", SUBCOMMANDS, argv)
    if isinstance(command, int):
        return command
    task = preview if command == "preview" else export
    return run_hydra(f"augment {command}", lambda cfg: task(cfg, Path(HydraConfig.get().runtime.output_dir)), argv[1:])


def _setup(cfg: DictConfig) -> tuple[Splits, Augmenter, int, torch.device]:
    """Data, the recipe (without ``copies``), the number of copies and the device."""
    check_numbers(cfg)
    recipe = OmegaConf.to_container(cfg.augment, resolve=True)
    copies = recipe.pop("copies")
    if not isinstance(copies, int) or copies < 1:
        raise ConfigError(f"augment.copies={copies} must be a whole number >= 1")
    data = build_data(OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=True))
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    return data, build_augment(recipe, data.info), copies, device


def augmented(
    augmenter: Augmenter, split: dict[str, torch.Tensor], indices: list[int], copies: int, device: torch.device
) -> Iterator[tuple[int, int, dict[str, torch.Tensor], str]]:
    """``(index, copy number, sample, transformations)`` for every copy of every chosen sample.

    Samples are augmented in batches on ``device``, copy by copy; a sample holds CPU tensors.
    """
    for copy in range(1, copies + 1):
        for start in range(0, len(indices), BATCH):
            chosen = torch.tensor(indices[start : start + BATCH])
            batch = {key: value[chosen].to(device) for key, value in split.items()}
            record: dict[str, Any] = {}
            out = augmenter(batch, record)
            lines = describe(record, augmenter.order(), len(chosen))
            for row, index in enumerate(chosen.tolist()):
                yield index, copy, {key: value[row].cpu() for key, value in out.items()}, lines[row]


def _table(rows: list[tuple[str, str, str]]) -> str:
    return csv_text(("original", "augmented", "transformation"), rows)


def _name(index: int, copy: int = 0) -> str:
    """``img_00012`` for an original training image, ``img_00012_aug_3`` for its third copy."""
    return f"img_{index:05d}" + (f"_aug_{copy}" if copy else "")


def preview(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Write ``preview.png`` and ``augmentations.csv`` for the first ``images`` training images."""
    if cfg.images < 1:
        raise ConfigError(f"images={cfg.images} must be >= 1")
    data, augmenter, copies, device = _setup(cfg)
    split = data.train
    indices = list(range(min(cfg.images, len(split["image"]))))
    masks = split["mask"][:, 0] if "mask" in split else [None] * len(split["image"])
    tiles = {i: [Tile(split["image"][i], masks[i], "original")] for i in indices}
    rows = []
    for index, copy, sample, applied in augmented(augmenter, split, indices, copies, device):
        mask = sample["mask"][0] if "mask" in sample else None
        tiles[index].append(Tile(sample["image"], mask, f"augmentation {copy}"))
        rows.append((_name(index), _name(index, copy), applied))
    rows.sort()
    out.mkdir(parents=True, exist_ok=True)
    names = data.info.class_names
    labels = [f"{_name(i)}\n{class_title(names, split['label'][i])}" if "label" in split else _name(i) for i in indices]
    save_figure(grid_figure([tiles[i] for i in indices], labels), out / "preview.png", palette=True)
    write_atomic(out / "augmentations.csv", _table(rows))
    make_console().print(f"recipe {augmenter.name}: {len(rows)} augmented images of {len(indices)}; folder: {out}")
    return {"images": len(indices), "augmented": len(rows)}


def export(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Write the augmented dataset and its ``manifest.csv`` into ``out``."""
    data, augmenter, copies, device = _setup(cfg)
    info = data.info
    if info.multilabel:
        raise ConfigError("export writes one class per image; multi-label data (e.g. ChestMNIST) cannot be exported")
    if augmenter.mixes:
        raise ConfigError(
            "mixup and cutmix make soft labels, which one class per file cannot hold; export without them"
        )
    suffix = ".npy" if info.spatial_dims == 2 else ".nii.gz"
    out.mkdir(parents=True, exist_ok=True)
    manifest = [("image", "mask", "label", "split", "patient_id", "original", "transformation")]

    def write(name: str, split_name: str, sample: dict[str, torch.Tensor], original: str, applied: str) -> None:
        image = f"images/{name}{suffix}"
        _save(out / image, sample["image"].numpy())
        mask = ""
        if "mask" in sample:
            mask = f"masks/{name}{suffix}"
            _save(out / mask, sample["mask"][0].numpy().astype(np.uint8))
        label = info.class_names[int(sample["label"])] if "label" in sample else ""
        manifest.append((image, mask, label, split_name, original, original, applied))

    for split_name in SPLITS:
        split = data.split(split_name)
        for index in range(len(split["image"])):
            name = f"{split_name}_{index:05d}"
            write(name, split_name, {k: v[index] for k, v in split.items()}, name, "none")
    indices = list(range(len(data.train["image"])))
    for index, copy, sample, applied in augmented(augmenter, data.train, indices, copies, device):
        write(f"train_{index:05d}_aug_{copy}", "train", sample, f"train_{index:05d}", applied)
    write_atomic(out / "manifest.csv", csv_text(manifest[0], manifest[1:]))
    counts = {s: sum(1 for row in manifest[1:] if row[3] == s) for s in SPLITS}
    classes = ",".join(info.class_names)
    make_console().print(
        f"recipe {augmenter.name}: {len(indices)} training images -> {counts['train']} "
        f"(+ {counts['val']} val, {counts['test']} test) in {out}\n"
        f"train on it: medimg train data=manifest data.path={out / 'manifest.csv'} data.task={info.task} "
        f"data.classes=[{classes}] data.image_size=[{','.join(map(str, info.image_size))}] data.normalize=none",
        markup=False,
        soft_wrap=True,
    )
    return counts


def _save(path: Path, array: np.ndarray) -> None:
    """An image ``(C, H, W)`` / mask ``(H, W)`` as ``.npy``, or a volume as NIfTI (channels last)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, array)
        return
    import nibabel as nib

    volume = np.moveaxis(array, 0, -1) if array.ndim == 4 else array  # (C, X, Y, Z) -> (X, Y, Z, C)
    if volume.ndim == 4 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
