"""The corpus of bad inputs (tests/bad_inputs.py) plus broken checkpoints and unusable places: each
exits 2 (3 for a non-finite loss) with at most 3 lines naming the file, key or value, no traceback.

The cases run in this process through ``medimg_cli.cli.main``, as the ``medimg`` script would
(a traceback would surface here as the exception itself), so 80 of them take a minute, not ten.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from bad_inputs import CONFIG_CASES, FILE_CASES, SECURITY_CASES, TINY, Case

from medimg_cli.cli import main
from medimg_cli.fileio import hold_folder, release


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The best.pt of a one-epoch phantom run."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *TINY, f"hydra.run.dir={run}"]) == 0
    return run / "checkpoints" / "best.pt"


def _refused(argv: list[str], capsys, expected: str, code: int = 2) -> str:
    """The stderr of ``medimg ARGV``, checked: exit ``code``, 1-3 lines with ``expected``, no traceback.
    Warnings count as the two lines Python would print for each."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and 1 <= len(err.splitlines()) + 2 * len(caught) <= 3, (err, caught)
    assert expected in err, err
    return err


@pytest.mark.parametrize("case", CONFIG_CASES + SECURITY_CASES + FILE_CASES, ids=lambda case: case.name)
def test_a_bad_input_is_refused_in_one_line(case: Case, tmp_path, capsys):
    _refused(case.argv(tmp_path), capsys, case.expected, case.code)


class _Hostile:
    def __reduce__(self):
        return os.system, ("touch /tmp/medimg-pwned",)


def _edited(change):
    """A copy of the trained checkpoint with ``change(payload)`` applied."""

    def write(trained: Path, tmp: Path) -> Path:
        payload = torch.load(trained, weights_only=True)
        change(payload)
        torch.save(payload, tmp / "edited.pt")
        return tmp / "edited.pt"

    return write


def _written(content: bytes | None = None, half: bool = False):
    def write(trained: Path, tmp: Path) -> Path:
        (tmp / "file.pt").write_bytes(trained.read_bytes()[: trained.stat().st_size // 2] if half else content)
        return tmp / "file.pt"

    return write


CHECKPOINTS = {
    "missing": (lambda trained, tmp: tmp / "none.pt", "does not exist"),
    "text": (_written(b"hello"), "cannot read it"),
    "truncated": (_written(half=True), "cannot read it"),
    "pickled code": (_written(pickle.dumps(_Hostile())), "cannot read it (not a file torch.save wrote)"),
    "another format": (_edited(lambda p: p.update(format="other")), "not a medimg checkpoint"),
    "weights of another shape": (
        _edited(lambda p: p["model"]["args"].update(channels=[8, 16, 32])),
        "of another shape",
    ),
    "a weight missing": (_edited(lambda p: p["state_dict"].popitem()), "1 missing"),
    "an unknown model argument": (_edited(lambda p: p["model"]["args"].update(nope=1)), "cannot be rebuilt"),
}


@pytest.mark.parametrize("command", ["eval", "export"])
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_a_broken_checkpoint_is_refused_by_eval_and_export(trained, name, command, tmp_path, capsys):
    write, expected = CHECKPOINTS[name]
    path = write(trained, tmp_path)
    err = _refused([command, f"checkpoint={path}", f"hydra.run.dir={tmp_path / 'out'}"], capsys, expected)
    assert str(path) in err and "weights_only=False" not in err
    assert not Path("/tmp/medimg-pwned").exists()


@pytest.mark.parametrize(
    ("pretrained", "expected"),
    [
        (lambda trained, tmp: tmp / "none.pth", "no such file"),
        (_written(pickle.dumps(_Hostile())), "file.pt"),
        (_edited(lambda p: [p["state_dict"].pop(k) for k in list(p["state_dict"])[2:]]), "pretrained_min_match"),
    ],
    ids=["missing", "pickled code", "few tensors match"],
)
def test_a_bad_pretrained_file_is_refused(trained, pretrained, expected, tmp_path, capsys):
    path = pretrained(trained, tmp_path)
    if path.name == "edited.pt":  # a bare state dict, as a .pth of pretrained weights is
        torch.save(torch.load(path, weights_only=True)["state_dict"], path)
    err = _refused(["train", *TINY, f"model.pretrained={path}", f"hydra.run.dir={tmp_path / 'run'}"], capsys, expected)
    assert "weights_only=False" not in err


def test_other_commands_refuse_in_one_line(trained, tmp_path, capsys):
    _refused(["eval", f"checkpoint={trained}", "data.sead=1"], capsys, "data.sead")
    _refused(["export", f"checkpoint={trained}", "format=tflite"], capsys, "tflite")
    _refused(["report", f"runs={tmp_path / 'none'}"], capsys, "none")
    _refused(["augment", "preview", "augment=nope"], capsys, "unknown augment 'nope'")
    _refused(["data", "inspect", "data=folder", f"data.root={tmp_path / 'none'}"], capsys, "none")
    _refused(["benchmark", "experiment=nope"], capsys, "nope")


def test_unusable_run_folders_are_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    _refused(["train", *TINY, f"hydra.run.dir={tmp_path / 'file' / 'run'}"], capsys, "not a directory")
    _refused(["train", *TINY, "hydra.run.dir=/proc/medimg-run"], capsys, "/proc/medimg-run")
    lock = hold_folder(tmp_path / "held")  # as another process's run would
    try:
        _refused(["train", *TINY, f"hydra.run.dir={tmp_path / 'held'}"], capsys, f"process {os.getpid()}")
    finally:
        release(lock)


def test_resuming_a_folder_without_a_checkpoint_is_refused(tmp_path, capsys):
    _refused(["train", *TINY, "trainer.resume=true", f"hydra.run.dir={tmp_path / 'run'}"], capsys, "last.pt")
