"""Patient-safe splits: grouped, stratified, audited, anonymised."""

from __future__ import annotations

import stat
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medimg_cli.data.splits import anonymise, audit, grouped_split, read_fixed_splits, salt_of
from medimg_cli.errors import ConfigError

FRACTIONS = (0.7, 0.15, 0.15)


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(st.tuples(st.integers(0, 15), st.sampled_from("abc")), min_size=1, max_size=120),
    seed=st.integers(0, 2**31),
)
def test_no_patient_is_ever_in_two_splits(samples, seed):
    patients = [f"p{p}" for p, _ in samples]
    labels = [label for _, label in samples]
    splits = grouped_split(labels, patients, FRACTIONS, seed)
    where = {}
    for patient, split in zip(patients, splits, strict=True):
        assert where.setdefault(patient, split) == split
    assert set(splits) <= {"train", "val", "test"}


def test_one_image_per_patient_gives_stratified_shares():
    labels = ["a"] * 100 + ["b"] * 40
    splits = grouped_split(labels, [str(i) for i in range(140)], FRACTIONS, seed=0)
    for label, total in (("a", 100), ("b", 40)):
        counts = Counter(s for s, lab in zip(splits, labels, strict=True) if lab == label)
        assert counts["train"] == pytest.approx(0.7 * total, abs=1)
        assert counts["val"] == pytest.approx(0.15 * total, abs=1)


def test_split_is_fixed_by_seed():
    labels, groups = ["a", "b"] * 30, [str(i // 2) for i in range(60)]
    assert grouped_split(labels, groups, FRACTIONS, 3) == grouped_split(labels, groups, FRACTIONS, 3)
    assert grouped_split(labels, groups, FRACTIONS, 3) != grouped_split(labels, groups, FRACTIONS, 4)


def test_audit_refuses_a_patient_in_two_splits_without_naming_them():
    patient = anonymise("Jane Doe", "salt")
    with pytest.raises(ConfigError, match=f"1 patient\\(s\\) appear in more than one split .*{patient}") as error:
        audit(["train", "test"], [patient, patient], ["x", "y"])
    assert "Jane" not in str(error.value)


def test_audit_warns_about_duplicate_images(caplog):
    audit(["train", "test", "test"], [None, None, None], ["same", "same", "other"])
    assert "1 image(s) occur byte-identical in more than one split" in caplog.text


def test_the_installation_salt_is_secret_made_once_and_overridable(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDIMG_CONFIG_DIR", str(tmp_path / "a"))
    first = salt_of({"salt": None})
    assert len(first) == 64 and salt_of({"salt": None}) == first  # 32 random bytes, kept
    assert stat.S_IMODE((tmp_path / "a" / "salt").stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["salt"]  # no temporary left
    monkeypatch.setenv("MEDIMG_CONFIG_DIR", str(tmp_path / "b"))
    assert salt_of({"salt": None}) != first  # another installation, another salt
    assert salt_of({"salt": "shared"}) == "shared"


def test_anonymise_is_salted_and_stable():
    assert anonymise("123", "a") == anonymise("123", "a") != anonymise("123", "b")
    assert len(anonymise("123", "a")) == 16


def test_fixed_splits_must_cover_every_id():
    assert read_fixed_splits({"train": ["x"], "test": ["y"]}, ["y", "x"], "s.json") == ["test", "train"]
    with pytest.raises(ConfigError, match="s.json lists no split for 1 sample"):
        read_fixed_splits({"train": ["x"]}, ["x", "z"], "s.json")
