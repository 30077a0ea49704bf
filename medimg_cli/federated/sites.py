"""The sites of a federated run: which images each client holds.

Sites come from a metadata column (``data.site_column``: a manifest's or DICOM source's hospital
or scanner, the phantom's ``data.sites``) or from a simulated partition of any dataset
(``federated.partition``): ``iid`` (shuffled, equal shares), ``dirichlet`` (label skew: each
class spread over the sites by proportions drawn from Dirichlet(``federated.alpha``), as Hsu et
al. 2019; small alpha, few classes per site) or ``by_label`` (each site holds its own classes).
The same site of an image holds across splits: each site has its own train, val and test images,
and the pooled splits are the union of the sites'.

Written here rather than with ``flwr-datasets``' partitioners: those split Hugging Face datasets,
while medimg's splits are tensors with per-sample records (``Splits.keep`` keeps them aligned).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from medimg_cli.data import SPLITS, Splits
from medimg_cli.errors import ConfigError, unknown_choice

PARTITIONS = ("iid", "dirichlet", "by_label")
COLUMN = "site"  # the metadata column that names each image's site (subgroup tables, medimg eval)
DRAWS = 100  # Dirichlet draws tried until every site gets a batch of training images


def assign_sites(data: Splits, data_cfg: Mapping, fed: Mapping, min_train: int) -> list[str]:
    """Name each image's site in ``data.meta[split]["site"]`` (in place); returns the site names.

    Args:
        data: the pooled splits.
        data_cfg: the data config (``site_column``).
        fed: the ``federated`` config (``partition``, ``clients``, ``alpha``, ``partition_seed``).
        min_train: training images every site needs (a batch: ``trainer.batch_size``).
    """
    column = data_cfg.get("site_column")
    if column:
        names = _from_column(data, column)
    else:
        names = [f"site_{k + 1}" for k in range(_clients(fed))]
        sites = _partition(data, fed, len(names), min_train)
        data.meta = {split: {**((data.meta or {}).get(split) or {}), COLUMN: [names[k] for k in sites[split]]}
                     for split in SPLITS}  # fmt: skip
    for name in names:
        held = data.meta["train"][COLUMN].count(name)
        if held < min_train:
            raise ConfigError(
                f"site {name} holds {held} training images, fewer than trainer.batch_size={min_train}; "
                "lower the batch size or federated.clients"
            )
    return names


def site_splits(data: Splits, name: str) -> Splits:
    """The splits of one site: ``data`` (after ``assign_sites``) restricted to site ``name``."""
    site = copy.copy(data)
    for split in SPLITS:
        sites = data.meta[split][COLUMN]
        site.keep(split, [i for i, value in enumerate(sites) if value == name])
    return site


def _clients(fed: Mapping) -> int:
    clients = fed.get("clients")
    if not isinstance(clients, int) or isinstance(clients, bool) or clients < 1:
        raise ConfigError(f"federated.clients={clients} must be a whole number of sites, 1 or more")
    return clients


def _from_column(data: Splits, column: str) -> list[str]:
    """The sites named by metadata ``column``, copied to the ``site`` column."""
    if not data.meta or column not in (data.meta.get("train") or {}):
        found = ", ".join(data.subgroup_columns()) or "none"
        raise ConfigError(f"data.site_column={column}: the data have no such metadata column (columns: {found})")
    data.meta = {split: {**data.meta[split], COLUMN: [str(v) for v in data.meta[split][column]]} for split in SPLITS}
    return site_names(data)


def site_names(data: Splits) -> list[str]:
    """The sites named in ``data.meta``, in natural order (``site_2`` before ``site_10``)."""
    found = {value for split in SPLITS for value in data.meta[split][COLUMN]}
    return sorted(found, key=lambda name: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)])


def _partition(data: Splits, fed: Mapping, clients: int, min_train: int) -> dict[str, np.ndarray]:
    """Each image's site index ``(N,)`` per split, for ``federated.partition``."""
    partition = fed.get("partition", "iid")
    if partition not in PARTITIONS:
        raise unknown_choice("federated.partition", partition, PARTITIONS)
    rng = np.random.default_rng(fed.get("partition_seed", 0))
    if partition == "iid":
        return {split: _iid(len(data.split(split)["image"]), clients, rng) for split in SPLITS}
    labels = {split: _labels(data, split, partition) for split in SPLITS}
    classes = data.info.num_classes
    if partition == "by_label":
        if classes < clients:
            raise ConfigError(f"federated.partition=by_label: {classes} classes cannot give {clients} sites one each")
        owner = np.arange(classes) * clients // classes  # consecutive classes per site, as even as they come
        return {split: owner[labels[split]] for split in SPLITS}
    alpha = float(fed.get("alpha", 0.5))
    if not alpha > 0:
        raise ConfigError(f"federated.alpha={alpha} must be positive (small: strong label skew; large: near iid)")
    for _ in range(DRAWS):  # redraw until every site can fill a training batch
        shares = rng.dirichlet(np.full(clients, alpha), size=classes)  # (classes, sites)
        sites = {split: _dirichlet(labels[split], shares, rng) for split in SPLITS}
        if np.bincount(sites["train"], minlength=clients).min() >= min_train:
            return sites
    raise ConfigError(
        f"federated.alpha={alpha}: in {DRAWS} draws some site always got fewer than {min_train} training images; "
        "raise federated.alpha or lower federated.clients"
    )


def _iid(n: int, clients: int, rng: np.random.Generator) -> np.ndarray:
    """Shuffled, near-equal shares: site index per image ``(n,)``."""
    sites = np.empty(n, dtype=np.int64)
    for k, chosen in enumerate(np.array_split(rng.permutation(n), clients)):
        sites[chosen] = k
    return sites


def _dirichlet(labels: np.ndarray, shares: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Site index per image ``(n,)``: class c's images dealt to the sites in proportions ``shares[c]``."""
    sites = np.empty(len(labels), dtype=np.int64)
    for c, share in enumerate(shares):
        members = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(np.cumsum(share)[:-1] * len(members)).astype(int)
        for k, chosen in enumerate(np.split(members, cuts)):
            sites[chosen] = k
    return sites


def _labels(data: Splits, split: str, partition: str) -> np.ndarray:
    """One class per image ``(n,)``; label partitions need them."""
    label: Any = data.split(split).get("label")
    if label is None or label.ndim != 1 or not data.info.classifies:
        raise ConfigError(
            f"federated.partition={partition} deals images by class, and these data have no single class per image "
            f"(task {data.info.task}); use federated.partition=iid or data.site_column"
        )
    return label.numpy()


def federated_view(data: Splits, data_cfg: Mapping, fed: Mapping, min_train: int) -> Splits:
    """The data a run of a federated config sees: every image's site named (``assign_sites``), and
    with ``federated.site`` set (a site's own training, a local-only baseline) that site's alone."""
    names = assign_sites(data, data_cfg, fed, min_train)
    site = fed.get("site")
    if site is None:
        return data
    if str(site) not in names:
        raise ConfigError(f"federated.site={site} is not a site of these data; sites: {', '.join(names)}")
    return site_splits(data, str(site))
