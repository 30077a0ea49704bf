"""Writing files safely: atomic replacement, JSON without NaN, CSV through the ``csv`` module.

Every file medimg writes goes through here, so a reader (or a resumed run) never sees a
half-written file. This module knows nothing of runs, metrics or tables.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: the permissions a plain open() would give new files


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO]:
    """A temporary file beside ``path`` that replaces it when the block ends without error, so
    readers never see a half-written file; it gets the permissions ``open`` would give."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files ``atomic_file`` left under ``folder`` when a process was killed
    mid-write (SIGKILL runs no clean-up); call it only while holding the folder (``hold_folder``),
    so no live writer's file is touched. Returns how many were removed."""
    stale = [p for p in folder.rglob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Replace ``path`` with ``text`` (or bytes) atomically (see ``atomic_file``)."""
    with atomic_file(path, "wb" if isinstance(text, bytes) else "w") as file:
        file.write(text)


def _without_nan(value: Any) -> Any:
    """NaN floats become ``None`` (JSON ``null``), in nested dicts and lists too."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    return value


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically; NaN becomes ``null``."""
    write_atomic(path, json.dumps(_without_nan(data), indent=2, default=str, allow_nan=False) + "\n")


def csv_cell(value: Any) -> str:
    """One CSV cell's text: numbers as ``repr`` (round-trips exactly), NaN and ``None`` empty."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else repr(value)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text (``\\n`` line ends, quoting only where needed) of ``header`` then ``rows``."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    return text.getvalue()


def columns_csv(columns: Mapping[str, Sequence[Any]]) -> str:
    """CSV text of equally long columns, header first (NaN and ``None`` as empty cells)."""
    count = len(next(iter(columns.values()), []))
    return csv_text(list(columns), ([column[i] for column in columns.values()] for i in range(count)))


def append_csv_row(path: Path, header: Sequence[str], row: Sequence[Any]) -> None:
    """Append one row to the CSV file ``path`` (``header`` first when it is new), flushed to disk."""
    new = not path.exists()
    with path.open("a", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        if new:
            writer.writerow(header)
        writer.writerow([csv_cell(v) for v in row])
        file.flush()
        os.fsync(file.fileno())


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as dicts of text."""
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


LOCK_NAME = ".lock"


def hold_folder(folder: Path) -> IO:
    """An exclusive advisory lock on ``folder`` (``<folder>/.lock``, holding this process's pid), kept
    until ``release``: two runs writing into one folder would interleave their ``metrics.csv``.

    The operating system drops the lock when its process ends, however it ends, so the lock of a
    killed run is taken over without a stale file to delete.

    Raises:
        ConfigError: another live process holds it (its pid is named).
    """
    import fcntl

    from medimg_cli.errors import ConfigError

    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the run's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(
            f"{folder} is in use by another run (process {holder}); wait for it to end or pick another hydra.run.dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def release(handle: IO | None) -> None:
    """Give up a ``hold_folder`` lock (``None``: nothing held)."""
    if handle is not None and not handle.closed:
        handle.close()


def load_tensors(path: Path, what: str, device: Any = "cpu") -> Any:
    """``torch.load`` of a file of tensors only (``weights_only``: unpickling anything else could run
    code), without torch's warnings.

    Raises:
        ConfigError: ``"<what>: <why it cannot be read>"`` for a foreign, truncated or code-holding
            file; never torch's advice to pass ``weights_only=False``.
    """
    import pickle
    import warnings
    import zipfile

    import torch

    from medimg_cli.errors import ConfigError

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the file is refused anyway
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            raise ConfigError(f"{what}: cannot read it (not a file torch.save wrote)") from None
        raise ConfigError(
            f"{what}: holds Python objects besides tensors, which medimg does not load (unpickling them could "
            "run code); save tensors alone, e.g. torch.save(model.state_dict(), path)"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch raises many types for truncated or foreign files
        raise ConfigError(f"{what}: cannot read it ({type(error).__name__}); truncated or not a torch file?") from None
