"""The ``dicom`` data source: a folder (or DICOMDIR) of DICOM series with labels and masks from a CSV.

    medimg train data=dicom data.root=~/study data.labels=~/study/labels.csv data.window=lung

Each series (SeriesInstanceUID) is one sample: a 3D volume in RAS+ orientation, or a 2D image
for single-slice series (CR, DX, secondary capture). ``data.labels`` is a CSV with a key column
named by ``data.label_key`` (SeriesInstanceUID, StudyInstanceUID or PatientID) and a ``label``
column, a ``mask`` column (a DICOM-SEG of the series or a NIfTI label volume in its geometry,
relative to the CSV), or both.
Splits are grouped by PatientID; patient ids are hashed before use and never written.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path

from medimg_cli.data import SOURCES, Splits
from medimg_cli.data.dicom import SeriesHeader, find_series
from medimg_cli.data.files import Record, records_to_splits
from medimg_cli.errors import ConfigError, unknown_choice

log = logging.getLogger(__name__)

LABEL_KEYS = {"SeriesInstanceUID": "series_uid", "StudyInstanceUID": "study_uid", "PatientID": "patient_id"}


def read_index(path: Path, key: str) -> dict[str, dict[str, str]]:
    """``{key value: row}`` from a CSV with the key column and ``label`` and/or ``mask`` columns."""
    try:
        with path.expanduser().open(newline="") as file:
            rows = list(csv.DictReader(file))
    except OSError as error:
        raise ConfigError(f"data.labels={path}: cannot read ({error})") from None
    if not rows or key not in rows[0] or not {"label", "mask"} & set(rows[0]):
        raise ConfigError(f"data.labels={path}: needs the column {key} and a label and/or mask column")
    return {row[key]: row for row in rows}


@SOURCES.register("dicom")
def dicom_splits(cfg: Mapping) -> Splits:
    """Find the series under ``cfg["root"]``, attach labels and build splits."""
    root = Path(cfg["root"]).expanduser()
    if not root.exists():
        raise ConfigError(f"data.root={root} does not exist")
    if cfg["label_key"] not in LABEL_KEYS:
        raise unknown_choice("data.label_key", cfg["label_key"], LABEL_KEYS)
    if not cfg.get("labels"):
        raise ConfigError("data.labels has no value; pass data.labels=<CSV with a key column and label/mask columns>")
    index_path = Path(cfg["labels"]).expanduser()
    index = read_index(index_path, cfg["label_key"])
    unreadable: list[Path] = []
    series = find_series(root, unreadable)
    _report_unreadable(unreadable, cfg)
    if not series:
        raise ConfigError(f"data.root={root}: no DICOM image series found")

    def row_of(header: SeriesHeader) -> dict[str, str] | None:
        return index.get(getattr(header, LABEL_KEYS[cfg["label_key"]]) or "")

    unlisted = [s for s in series if row_of(s) is None]
    if unlisted:
        raise ConfigError(
            f"{len(unlisted)} series have no row in data.labels (e.g. the series of {unlisted[0].files[0]})"
        )

    def mask_of(header: SeriesHeader) -> Path | None:
        mask = row_of(header).get("mask")
        return index_path.parent / mask if mask else None

    records = [
        Record(
            name=s.series_uid,
            images=s.files,
            label=row_of(s).get("label") or None,
            mask=mask_of(s),
            patient=s.patient_id,
            kind="dicom",
            # the CSV's other columns (site, scanner...) are metadata: subgroups, federated sites
            meta=tuple((k, v) for k, v in row_of(s).items() if k not in (cfg["label_key"], "label", "mask")),
        )
        for s in series
    ]
    return records_to_splits(records, cfg, str(root))


def _report_unreadable(unreadable: list[Path], cfg: Mapping) -> None:
    """A ``.dcm`` that is not DICOM is a bad file: an error, or with ``data.on_bad_file=skip`` a
    warning with the count and the first one (other files in the tree are not expected to be DICOM)."""
    if not unreadable:
        return
    if cfg.get("on_bad_file", "error") != "skip":
        raise ConfigError(
            f"{unreadable[0]}: not a readable DICOM file ({len(unreadable)} such .dcm file(s) under data.root); "
            "fix or remove it, or set data.on_bad_file=skip"
        )
    log.warning("skipped %d .dcm file(s) that are not DICOM (data.on_bad_file=skip); first: %s", len(unreadable),
                unreadable[0])  # fmt: skip
