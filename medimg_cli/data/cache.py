"""An on-disk cache of decoded, preprocessed datasets, so files are decoded once.

The key is a SHA-256 of the data config (all but ``NOT_DECODING_KEYS``) and of every source
file's path, size and modification time: changing a file or a preprocessing key decodes again;
changing the split, the seed or the training config does not. Entries are ``torch.save`` files written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from medimg_cli.fileio import atomic_file, write_json

log = logging.getLogger(__name__)
# data keys that only choose the split of the decoded samples, how batches are drawn from them,
# or where the cache lives; every other key (a new preprocessing key too) is part of the key, so
# it can never serve stale data
NOT_DECODING_KEYS = (
    "split", "splits", "seed", "salt", "cache", "cache_dir", "foreground_fraction", "memory_gb", "positive_class"
)  # fmt: skip
# bumped when the decoded dictionary changes (2: pixel_spacings, 3: roi, 4: sizes, 5: sizes on the file grid,
# affines; 6: originals): old entries are not read
FORMAT = 6


def cache_key(cfg: Mapping, files: Iterable[Path]) -> str:
    """The key of a decoded dataset: its decode config and its files' paths, sizes and mtimes."""
    settings = {k: v for k, v in cfg.items() if k not in NOT_DECODING_KEYS} | {"format": FORMAT}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def cached(cfg: Mapping, files: Iterable[Path], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``'s result from ``cfg["cache_dir"]`` when present, else computed and stored.

    Caching is off when ``cfg["cache"]`` is false or the config has no ``cache_dir``.
    """
    if not cfg.get("cache") or not cfg.get("cache_dir"):
        return compute()
    folder = Path(cfg["cache_dir"]).expanduser()
    path = folder / f"{cfg['source']}-{cache_key(cfg, files)}.pt"
    if path.is_file():
        try:
            result = torch.load(path, weights_only=True)
            log.info("decoded data from the cache %s", path)
            return result
        except Exception as error:  # a damaged entry is decoded again, not fatal
            log.warning("ignoring the unreadable cache entry %s (%s)", path, type(error).__name__)
    result = compute()
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as file:
        torch.save(result, file)
    return result


def cached_json(cfg: Mapping, files: Iterable[Path], compute: Callable[[], dict[str, Any]], kind: str) -> dict:
    """Like ``cached`` for a small JSON document (``kind``: e.g. ``fingerprint``), readable beside the data."""
    if not cfg.get("cache") or not cfg.get("cache_dir"):
        return compute()
    path = Path(cfg["cache_dir"]).expanduser() / f"{cfg['source']}-{kind}-{cache_key(cfg, files)}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:  # a damaged entry is computed again
            log.warning("ignoring the unreadable cache entry %s", path)
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return result
