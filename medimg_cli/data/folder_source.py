"""The ``folder`` data source: images in class sub-folders (the ImageFolder layout), optional masks.

    <root>/<class>/<any/depth>/<image>.png      labels are the class folder names
    <mask_root>/<class>/<any/depth>/<image>.png  a mask with the same relative path and stem

For segmentation without classes, put the images straight under ``root`` (``data.task=segmentation``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from medimg_cli.data import SOURCES, Splits
from medimg_cli.data.files import IMAGE_SUFFIXES, Record, records_to_splits
from medimg_cli.errors import ConfigError


def _find_mask(mask_root: Path, relative: Path) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = (mask_root / relative).with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


@SOURCES.register("folder")
def folder_splits(cfg: Mapping) -> Splits:
    """List the images under ``cfg["root"]`` and build splits from them."""
    root = Path(cfg["root"]).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root={root} is not a folder")
    mask_root = Path(cfg["mask_root"]).expanduser() if cfg.get("mask_root") else None
    records = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        relative = path.relative_to(root)
        label = relative.parts[0] if len(relative.parts) > 1 else None
        mask = _find_mask(mask_root, relative) if mask_root else None
        if mask_root and mask is None and cfg["task"] != "classification":
            raise ConfigError(f"{path}: no mask with the same relative path under data.mask_root={mask_root}")
        records.append(Record(name=str(relative), image=path, label=label, mask=mask))
    return records_to_splits(records, cfg, f"data.root={root}")
