"""Splits that do not leak: grouped by patient, stratified by label, audited every time.

Patient identifiers never leave this module in clear: ``anonymise`` turns them into salted
hashes, and every id written to a run folder is a hash.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from medimg_cli.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")
SPLIT_ORDER_SALT = "medimg"  # orders the automatic split only; the hashes it makes are never written
log = logging.getLogger(__name__)


def anonymise(value: str, salt: str) -> str:
    """A salted SHA-256 of ``value``, shortened: stable for a salt, not reversible without it."""
    return hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()[:16]


def salt_of(data_cfg: Mapping) -> str:
    """``data.salt``, or (when null) this installation's secret salt.

    A public default salt would let anyone reverse the hash of a short patient id by trying every
    id; the secret one is 32 random bytes, created once, readable by the user alone (mode 0600),
    in ``$MEDIMG_CONFIG_DIR`` (default ``~/.config/medimg``). Runs that must share hashed ids across
    machines (a ``data.splits`` file) set the same ``data.salt`` on each.
    """
    if data_cfg.get("salt") is not None:
        return str(data_cfg["salt"])
    folder = os.path.expanduser(os.environ.get("MEDIMG_CONFIG_DIR") or "~/.config/medimg")
    path = os.path.join(folder, "salt")
    if not os.path.exists(path):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
        try:  # link, unlike rename, fails when another process made the salt first: theirs stays
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    with open(path) as file:
        return file.read().strip()


def check_fractions(fractions: Sequence[float]) -> None:
    """``data.split`` must be three positive shares of train, val and test summing to 1."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"data.split={list(fractions)} must be three positive fractions summing to 1")


def split_indices(n: int, fractions: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into train/val/test by ``fractions``."""
    check_fractions(fractions)
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }


def grouped_split(labels: Sequence[object], groups: Sequence[str], fractions: Sequence[float], seed: int) -> list[str]:
    """Assign each sample to train/val/test so that every group lies in one split.

    Groups (patients) are dealt to splits label by label: groups are stratified by their most
    common label, shuffled with ``seed``, and each goes to the split with the largest relative
    shortfall of that label's samples. With one sample per group this is a stratified split.

    Args:
        labels: one label per sample (any hashable; ``None`` when unlabelled).
        groups: one group id per sample (e.g. a patient id).
        fractions: target shares of train, val and test, summing to 1.
        seed: fixes the assignment.

    Returns:
        The split name of each sample, in input order.
    """
    check_fractions(fractions)
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    strata: dict[str, list[str]] = defaultdict(list)
    for group, indices in members.items():
        majority = Counter(str(labels[i]) for i in indices).most_common(1)[0][0]
        strata[majority].append(group)
    rng = np.random.default_rng(seed)
    assignment = [""] * len(labels)
    for stratum in sorted(strata):
        stratum_groups = sorted(strata[stratum])
        rng.shuffle(stratum_groups)
        target = np.asarray(fractions) * sum(len(members[g]) for g in stratum_groups)
        filled = np.zeros(3)
        for group in stratum_groups:
            # the split furthest below its target, relative to the target, takes the group, so
            # small strata still reach val and test
            split = int(np.argmax((target - filled) / target))
            filled[split] += len(members[group])
            for index in members[group]:
                assignment[index] = SPLIT_NAMES[split]
    return assignment


def audit(splits: Sequence[str], patients: Sequence[str | None], digests: Sequence[str]) -> dict[str, int]:
    """Refuse a patient in two splits; warn about byte-identical images across splits.

    Args:
        splits: the split of each sample.
        patients: the (hashed) patient of each sample, ``None`` when unknown.
        digests: a content hash of each decoded image.

    Returns:
        ``patients_<split>`` counts and ``duplicate_images_across_splits``, for reports.
    """
    seen: dict[str, set[str]] = defaultdict(set)
    for split, patient in zip(splits, patients, strict=True):
        if patient is not None:
            seen[patient].add(split)
    leaking = sorted(p for p, s in seen.items() if len(s) > 1)
    if leaking:
        raise ConfigError(
            f"{len(leaking)} patient(s) appear in more than one split (e.g. patient hash {leaking[0]} in "
            f"{sorted(seen[leaking[0]])}); put all images of a patient in one split, or drop the split column"
        )
    where: dict[str, set[str]] = defaultdict(set)
    for split, digest in zip(splits, digests, strict=True):
        where[digest].add(split)
    duplicated = sum(1 for s in where.values() if len(s) > 1)
    if duplicated:
        log.warning("%d image(s) occur byte-identical in more than one split", duplicated)
    counts = {f"patients_{name}": sum(1 for s in seen.values() if name in s) for name in SPLIT_NAMES}
    return counts | {"duplicate_images_across_splits": duplicated}


def read_fixed_splits(mapping: Mapping[str, Sequence[str]], ids: Sequence[str], source: str) -> list[str]:
    """The split of each id from a ``splits.json`` mapping ``{split: [ids]}``; every id must be listed."""
    lookup = {i: split for split in SPLIT_NAMES for i in mapping.get(split, [])}
    missing = [i for i in ids if i not in lookup]
    if missing:
        raise ConfigError(
            f"{source} lists no split for {len(missing)} sample(s) (e.g. id {missing[0]}); "
            "a splits.json from another machine needs the data.salt it was written with"
        )
    return [lookup[i] for i in ids]
