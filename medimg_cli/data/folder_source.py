"""The ``folder`` data source: images in class sub-folders (the ImageFolder layout), optional masks.

    <root>/<class>/<any/depth>/<image>.png      labels are the class folder names
    <mask_root>/<class>/<any/depth>/<image><mask_suffix>.<any>  a mask with the same relative path and stem
    <roi_root>/<class>/<any/depth>/<image><roi_suffix>.<any>    a region of interest (field of view)

For segmentation without classes, put the images straight under ``root`` (``data.task=segmentation``).
Official splits in sub-folders (``data.split_folders={train: training, test: test}``) are read
from ``<root>/<folder>`` (and ``<mask_root>/<folder>``, ``<roi_root>/<folder>``); a split without a
folder (usually val) is carved out of train (``files._assign_splits``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from medimg_cli.data import SOURCES, Splits
from medimg_cli.data.files import Record, records_to_splits
from medimg_cli.data.readers import IMAGE_SUFFIXES, VOLUME_SUFFIXES, full_suffix, strip_suffix
from medimg_cli.data.splits import SPLIT_NAMES
from medimg_cli.errors import ConfigError


def _find_mask(root: Path, relative: Path, suffix: str) -> Path | None:
    """The file under ``root`` with the relative path and stem of ``relative`` plus ``suffix``
    (``data.mask_suffix``: ``_manual1`` finds ``01_manual1.gif`` for ``01.tif``), any file type."""
    stem = strip_suffix(root / relative)
    for ending in IMAGE_SUFFIXES + VOLUME_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix + ending)
        if candidate.is_file():
            return candidate
    return None


def _required(root: Path, relative: Path, suffix: str, key: str) -> Path:
    """``_find_mask``'s file, or one line saying which names were tried and how to fix it."""
    found = _find_mask(root, relative, suffix)
    if found is None:
        name = strip_suffix(relative).name + suffix
        endings = ", ".join(IMAGE_SUFFIXES + VOLUME_SUFFIXES)
        raise ConfigError(
            f"{root / relative}: no {name}<{endings}> under data.{key}_root={root}; if {key} names add "
            f"something to the image's name (e.g. _1stHO), set data.{key}_suffix"
        )
    return found


def list_records(cfg: Mapping, suffixes: tuple[str, ...]) -> list[Record]:
    """Records of the files with ``suffixes`` under ``cfg["root"]``; labels are the class folders.

    A mask (``data.mask_root``) and a region of interest (``data.roi_root``) have the image's
    relative path and stem plus ``data.mask_suffix`` / ``data.roi_suffix``, in any file type.
    """
    root = Path(cfg["root"]).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root={root} is not a folder")
    roots = {key: Path(cfg[f"{key}_root"]).expanduser() for key in ("mask", "roi") if cfg.get(f"{key}_root")}
    if "roi" in roots and cfg["task"] == "classification":
        raise ConfigError("data.roi_root restricts segmentation; data.task=classification has no masks")
    records = []
    for path in sorted(p for p in root.rglob("*") if full_suffix(p) in suffixes and p.is_file()):
        relative = path.relative_to(root)
        label = relative.parts[0] if len(relative.parts) > 1 else None
        found = {
            key: _required(folder, relative, cfg.get(f"{key}_suffix") or "", key)
            for key, folder in roots.items()
            if cfg["task"] != "classification"
        }
        records.append(Record(str(relative), (path,), label, found.get("mask"), found.get("roi")))
    return records


def split_folder_records(cfg: Mapping, suffixes: tuple[str, ...]) -> list[Record]:
    """``list_records`` of each ``data.split_folders`` sub-folder, marked with its split."""
    folders = dict(cfg["split_folders"])
    unknown = [name for name in folders if name not in SPLIT_NAMES]
    if unknown or "train" not in folders:
        raise ConfigError(
            f"data.split_folders={folders}: keys are split names ({', '.join(SPLIT_NAMES)}) and train is needed, "
            "e.g. data.split_folders={train:training,test:test}"
        )
    records = []
    for split, folder in folders.items():
        moved = {f"{key}_root": str(Path(cfg[f"{key}_root"]).expanduser() / folder)
                 for key in ("mask", "roi") if cfg.get(f"{key}_root")}  # fmt: skip
        found = list_records({**cfg, "root": str(Path(cfg["root"]).expanduser() / folder), **moved}, suffixes)
        records += [dataclasses.replace(r, name=f"{folder}/{r.name}", split=split) for r in found]
    return records


@SOURCES.register("folder")
def folder_splits(cfg: Mapping) -> Splits:
    """List the images under ``cfg["root"]`` (per split folder, when given) and build splits from them."""
    listed = (
        split_folder_records(cfg, IMAGE_SUFFIXES) if cfg.get("split_folders") else list_records(cfg, IMAGE_SUFFIXES)
    )
    return records_to_splits(listed, cfg, f"data.root={cfg['root']}")
