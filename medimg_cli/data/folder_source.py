"""The ``folder`` data source: images in class sub-folders (the ImageFolder layout), optional masks.

    <root>/<class>/<any/depth>/<image>.png      labels are the class folder names
    <mask_root>/<class>/<any/depth>/<image>.png  a mask with the same relative path and stem

For segmentation without classes, put the images straight under ``root`` (``data.task=segmentation``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from medimg_cli.data import SOURCES, Splits
from medimg_cli.data.files import IMAGE_SUFFIXES, VOLUME_SUFFIXES, Record, full_suffix, records_to_splits, strip_suffix
from medimg_cli.errors import ConfigError


def _find_mask(mask_root: Path, relative: Path) -> Path | None:
    """The file under ``mask_root`` with the same relative path and stem as ``relative``, any suffix."""
    stem = strip_suffix(mask_root / relative)
    for suffix in IMAGE_SUFFIXES + VOLUME_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def list_records(cfg: Mapping, suffixes: tuple[str, ...]) -> list[Record]:
    """Records of the files with ``suffixes`` under ``cfg["root"]``; labels are the class folders."""
    root = Path(cfg["root"]).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root={root} is not a folder")
    mask_root = Path(cfg["mask_root"]).expanduser() if cfg.get("mask_root") else None
    records = []
    for path in sorted(p for p in root.rglob("*") if full_suffix(p) in suffixes and p.is_file()):
        relative = path.relative_to(root)
        label = relative.parts[0] if len(relative.parts) > 1 else None
        mask = _find_mask(mask_root, relative) if mask_root else None
        if mask_root and mask is None and cfg["task"] != "classification":
            raise ConfigError(f"{path}: no mask with the same relative path under data.mask_root={mask_root}")
        records.append(Record(name=str(relative), images=(path,), label=label, mask=mask))
    return records


@SOURCES.register("folder")
def folder_splits(cfg: Mapping) -> Splits:
    """List the images under ``cfg["root"]`` and build splits from them."""
    return records_to_splits(list_records(cfg, IMAGE_SUFFIXES), cfg, f"data.root={cfg['root']}")
