"""The ``dicom`` data source: a folder (or DICOMDIR) of DICOM series with labels from a CSV.

    medimg train data=dicom data.root=~/study data.labels=~/study/labels.csv data.window=lung

Each series (SeriesInstanceUID) is one sample: a 3D volume, or a 2D image for single-slice
series (CR, DX, secondary capture). ``data.labels`` is a CSV with a ``label`` column and a key
column named by ``data.label_key`` (SeriesInstanceUID, StudyInstanceUID or PatientID). Splits are
grouped by PatientID; patient ids are hashed before use and never written.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

from medimg_cli.data import SOURCES, Splits
from medimg_cli.data.dicom import SeriesHeader, find_series
from medimg_cli.data.files import Record, records_to_splits
from medimg_cli.errors import ConfigError, unknown_choice

LABEL_KEYS = {"SeriesInstanceUID": "series_uid", "StudyInstanceUID": "study_uid", "PatientID": "patient_id"}


def read_labels(path: Path, key: str) -> dict[str, str]:
    """``{key value: label}`` from a CSV with columns ``key`` and ``label``."""
    try:
        with path.expanduser().open(newline="") as file:
            rows = list(csv.DictReader(file))
    except OSError as error:
        raise ConfigError(f"data.labels={path}: cannot read ({error})") from None
    if not rows or key not in rows[0] or "label" not in rows[0]:
        raise ConfigError(f"data.labels={path}: needs the columns {key} and label")
    return {row[key]: row["label"] for row in rows}


@SOURCES.register("dicom")
def dicom_splits(cfg: Mapping) -> Splits:
    """Find the series under ``cfg["root"]``, attach labels and build splits."""
    root = Path(cfg["root"]).expanduser()
    if not root.exists():
        raise ConfigError(f"data.root={root} does not exist")
    if cfg["task"] != "classification":
        raise ConfigError("DICOM masks (DICOM-SEG, NIfTI) are not supported yet; use data.task=classification")
    if cfg["label_key"] not in LABEL_KEYS:
        raise unknown_choice("data.label_key", cfg["label_key"], LABEL_KEYS)
    if not cfg.get("labels"):
        raise ConfigError("data.labels has no value; pass data.labels=<CSV with a key column and a label column>")
    labels = read_labels(Path(cfg["labels"]), cfg["label_key"])
    series = find_series(root)
    if not series:
        raise ConfigError(f"data.root={root}: no DICOM image series found")

    def label_of(header: SeriesHeader) -> str | None:
        return labels.get(getattr(header, LABEL_KEYS[cfg["label_key"]]) or "")

    unlabelled = [s for s in series if label_of(s) is None]
    if unlabelled:
        raise ConfigError(
            f"{len(unlabelled)} series have no row in data.labels (e.g. the series of {unlabelled[0].files[0]})"
        )
    records = [
        Record(name=s.series_uid, images=s.files, label=label_of(s), patient=s.patient_id, kind="dicom") for s in series
    ]
    return records_to_splits(records, cfg, str(root))
