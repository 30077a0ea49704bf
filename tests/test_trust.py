"""Configs do not run code: Hydra callbacks and ``_target_`` keys are refused unless allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from medimg_cli.trust import _code_keys_in

CONF = Path(__file__).parents[1] / "medimg_cli" / "conf"


def _callback_folder(tmp_path: Path, marker: Path) -> Path:
    """A --config-dir whose experiment YAML asks Hydra to call ``os.makedirs(marker)``."""
    folder = tmp_path / "conf"
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "evil.yaml").write_text(
        f"# @package _global_\nhydra:\n  callbacks:\n    x:\n      _target_: os.makedirs\n      name: {marker}\n"
    )
    return folder


@pytest.mark.parametrize(
    "override",
    ["+hydra.callbacks.x._target_=os.makedirs", "+hydra.callbacks.x.name=/tmp/x", "hydra.launcher._target_=os.system"],
)
def test_an_override_that_would_run_code_is_refused(tmp_path, override):
    result = run_cli("train", override, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    assert f"override '{override}'" in result.stderr and "--allow-callbacks" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3 and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_config_folder_callback_runs_only_with_allow_callbacks(tmp_path):
    marker = tmp_path / "called"
    folder = _callback_folder(tmp_path, marker)
    args = ["train", "--config-dir", str(folder), "+experiment=evil", "--cfg", "job"]
    refused = run_cli(*args)
    assert refused.returncode == 2, refused.stderr
    assert "evil.yaml: key 'hydra.callbacks'" in refused.stderr and not marker.exists()
    # The same file with the flag: Hydra does call the function (so the refusal above is what stopped it).
    run_cli(*args[:-2], "hydra.run.dir=" + str(tmp_path / "run"), "trainer.epochs=0", "--allow-callbacks")
    assert marker.is_dir()


def test_searchpath_folders_are_scanned_too(tmp_path):
    folder = _callback_folder(tmp_path, tmp_path / "called")
    result = run_cli("train", f"hydra.searchpath=[file://{folder}]", "+experiment=evil")
    assert result.returncode == 2 and "evil.yaml" in result.stderr


def test_the_shipped_configs_run_only_medimg_code():
    """The launchers name Hydra's plugins through ``defaults``, never a ``_target_``; the one code
    key shipped is train.yaml's sweep-summary callback, a class of medimg itself."""
    assert list(_code_keys_in(CONF)) == [(CONF / "train.yaml", "hydra.callbacks")]
    callbacks = yaml.safe_load((CONF / "train.yaml").read_text())["hydra"]["callbacks"]
    assert callbacks == {"sweep_summary": {"_target_": "medimg_cli.sweeps.SweepSummary"}}
