"""Experiment grids: every combination of the swept values, each a ``medimg train`` run that is
found again by its resolved config.

A grid is fixed overrides (given to every run) plus axes (``key: [values]``); its runs are the
product of the axes in the order given. A run's identity is its fully resolved ``train`` config
(Hydra's compose, as ``medimg train`` itself composes it) minus the keys that cannot change its
numbers (``resume.NEUTRAL_KEYS``), so a benchmark finds its finished runs whatever
their folders are called, resumes interrupted ones from ``last.pt``, and never mixes runs of a
different config (e.g. fewer epochs) into its report.

Runs execute as ``python -m medimg_cli train`` subprocesses, ``parallel`` at a time: a crash or
a user mistake in one run does not stop the others, and each run folder holds exactly what
``medimg train`` writes (with Hydra's ``.hydra/``), so ``medimg report`` reads it like any run.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import OmegaConf

from medimg_cli.errors import ConfigError, unknown_choice
from medimg_cli.resume import NEUTRAL_KEYS

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One point of a grid.

    Attributes:
        axes: the swept values of this run, ``{"model": "cnn", "seed": "0"}``.
        overrides: the ``medimg train`` overrides: the fixed ones, then the axes.
        identity: the resolved config without ``NEUTRAL_KEYS`` (plain containers).
        folder: the run folder; an existing one with the same identity, else a new name.
        state: ``finished``, ``interrupted`` (resumes from ``last.pt``) or ``new``.
    """

    axes: dict[str, str]
    overrides: list[str]
    identity: dict[str, Any]
    folder: Path | None = None
    state: str = "new"


def expand(fixed: Sequence[str], axes: Mapping[str, Any], extra: Sequence[str] = ()) -> list[Run]:
    """The runs of a grid, in the product order of ``axes``, each with its resolved identity.

    Args:
        fixed: overrides given to every run, first.
        axes: ``key: [values]`` (each run gets ``key=value``) or named variants
            ``name: {variant: [overrides]}`` (each run gets one variant's overrides).
        extra: overrides given to every run last, so they win (the command line's).
    """
    choices = {}
    for key, values in axes.items():
        if isinstance(values, Mapping):
            choices[key] = [(str(name), [str(o) for o in overrides]) for name, overrides in values.items()]
        elif isinstance(values, Sequence) and not isinstance(values, str):
            choices[key] = [(_text(value), [f"{key}={_text(value)}"]) for value in values]
        else:
            choices[key] = []
        if not choices[key]:
            raise ConfigError(f"grid.{key}={values!r} must be a non-empty list of values, e.g. grid.{key}=[a,b]")
    runs = []
    for picked in itertools.product(*choices.values()):
        point = {key: name for key, (name, _) in zip(choices, picked, strict=True)}
        overrides = [*fixed, *(o for _, axis in picked for o in axis), *extra]
        runs.append(Run(point, overrides, identity(overrides)))
    return runs


def select(axes: Mapping[str, Any], key: str, values: Sequence[str]) -> Any:
    """Axis ``key`` restricted or set to ``values`` from the command line (``model=cnn,unet``).

    A variant axis keeps the named variants, in the given order; an unknown name is an error.
    """
    current = axes.get(key)
    if not isinstance(current, Mapping):
        return list(values)
    missing = [v for v in values if v not in current]
    if missing:
        raise unknown_choice(f"grid.{key} variant", missing[0], current)
    return {v: current[v] for v in values}


def identity(overrides: Sequence[str]) -> dict[str, Any]:
    """The resolved ``train`` config of ``overrides`` without ``NEUTRAL_KEYS``.

    Needs Hydra's global state (inside a ``run_hydra`` task, or ``initialize_config_module``).
    """
    try:
        cfg = compose("train", overrides=list(overrides))
    except Exception as error:  # Hydra and OmegaConf raise several types for a bad override
        raise ConfigError(f"the grid's train overrides {' '.join(overrides)} do not compose: {error}") from None
    return _without_ignored(OmegaConf.to_container(cfg, resolve=True))


def _without_ignored(config: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(config))  # a deep copy with JSON's types
    for key in NEUTRAL_KEYS:
        parent, _, leaf = key.rpartition(".")
        (config.get(parent, {}) if parent else config).pop(leaf, None)
    return config


def locate(runs: Sequence[Run], root: Path) -> None:
    """Set each run's folder and state from the run folders under ``root``, matched by identity."""
    known: dict[str, Path] = {}
    for config in sorted(root.glob("*/config.yaml")) if root.is_dir() else []:
        try:
            saved = OmegaConf.to_container(OmegaConf.load(config))
        except Exception:  # a damaged config.yaml cannot match; the folder is left alone
            continue
        known.setdefault(_digest(_without_ignored(saved)), config.parent)
    for run in runs:
        digest = _digest(run.identity)
        folder = known.get(digest)
        run.folder = folder or root / f"{_label(run.axes)}-{digest[:8]}"
        if folder is None:
            run.state = "new"
        elif (folder / "summary.json").is_file():
            run.state = "finished"
        elif (folder / "checkpoints" / "last.pt").is_file():
            run.state = "interrupted"
        else:  # stopped before its first epoch ended: start it again in its folder
            run.state = "new"


def execute(runs: Sequence[Run], parallel: int = 1, gpus: Sequence[int] = ()) -> list[Run]:
    """Run the unfinished ``runs``, ``parallel`` at a time; returns the runs that failed.

    Each run's terminal output goes to ``<folder>/train.out``. Interrupted runs continue from
    ``last.pt``; a run stopped before its first epoch ended starts again. With ``gpus``, each
    run sees one of them (``CUDA_VISIBLE_DEVICES``), the one with the fewest runs at that time,
    so ``parallel = len(gpus)`` is one run per GPU and ``2 * len(gpus)`` two small ones per GPU.
    """
    pending = [run for run in runs if run.state != "finished"]
    threads = _threads_per_run(parallel)
    active: list[tuple[Run, subprocess.Popen, float, int | None]] = []
    failed: list[Run] = []
    done = len(runs) - len(pending)
    try:
        while pending or active:
            while pending and len(active) < parallel:
                run = pending.pop(0)
                gpu = least_busy(gpus, [item[3] for item in active]) if gpus else None
                active.append((run, _start(run, threads, gpu), time.perf_counter(), gpu))
            time.sleep(0.2)
            for item in list(active):
                run, process, start, _ = item
                if process.poll() is None:
                    continue
                active.remove(item)
                done += 1
                seconds = time.perf_counter() - start
                if process.returncode == 0 and (run.folder / "summary.json").is_file():
                    run.state = "finished"
                    log.info("[%d/%d] %s finished in %.0f s", done, len(runs), _label(run.axes, " "), seconds)
                else:
                    failed.append(run)
                    tail = (run.folder / "train.out").read_text(errors="replace").strip().splitlines()[-3:]
                    log.error(
                        "[%d/%d] %s failed (exit code %s); see %s: %s",
                        done,
                        len(runs),
                        _label(run.axes, " "),
                        process.returncode,
                        run.folder / "train.out",
                        " | ".join(tail),
                    )
    finally:  # Ctrl-C or an error here: stop the children; their last.pt lets them resume
        for _, process, _, _ in active:
            process.terminate()
        for _, process, _, _ in active:
            process.wait()
    return failed


def least_busy(gpus: Sequence[int], busy: Sequence[int | None]) -> int:
    """The GPU of ``gpus`` running the fewest of the ``busy`` runs (the first such in order)."""
    return min(gpus, key=lambda gpu: sum(b == gpu for b in busy))


def _start(run: Run, threads: int | None, gpu: int | None = None) -> subprocess.Popen:
    run.folder.mkdir(parents=True, exist_ok=True)
    resume = ["trainer.resume=true"] if run.state == "interrupted" else []
    if run.state == "interrupted":
        log.info("resuming %s in %s", _label(run.axes, " "), run.folder)
    command = [sys.executable, "-m", "medimg_cli", "train", *run.overrides, *resume, f"hydra.run.dir={run.folder}"]
    env = {**os.environ, "COLUMNS": "160"}
    if threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    # a resumed run appends: the interrupted part's output (and why it stopped) stays readable
    with (run.folder / "train.out").open("a" if resume else "w") as out:
        if resume:
            out.write("\nmedimg benchmark: resuming this run after an interruption\n")
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            out.write(f"medimg benchmark: CUDA_VISIBLE_DEVICES={gpu}\n")
            out.flush()
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the benchmark process dies, even by SIGKILL (Linux).

    Without it a killed benchmark would leave its runs training, and a re-run would start the
    same runs a second time in the same folders.
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a killed benchmark's runs finish on their own
        pass


def _threads_per_run(parallel: int) -> int | None:
    """CPU threads per run when several share this machine's cores (``None``: one run, all cores)."""
    return max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None


def _digest(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _label(axes: Mapping[str, str], separator: str = "_") -> str:
    """``{"model": "cnn", "seed": "0"}`` -> ``model-cnn_seed-0`` (folder-safe) or ``model=cnn seed=0``."""
    if separator != "_":
        return separator.join(f"{key}={value}" for key, value in axes.items())
    parts = (f"{key.rpartition('.')[2]}-{value}" for key, value in axes.items())
    return re.sub(r"[^A-Za-z0-9._=-]+", "", separator.join(parts)) or "run"


def _text(value: Any) -> str:
    """An axis value as the command line writes it (lists as ``[a,b]``)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return "null" if value is None else str(value)
