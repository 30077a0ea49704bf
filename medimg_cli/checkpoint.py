"""Checkpoints that know their model: written atomically, loadable without the config files.

A checkpoint is a dict with ``format``, ``model`` (``{"name", "args"}`` for
``medimg_cli.models.create_model``), ``state_dict``, ``config`` (the resolved run config as
plain containers), ``epoch``, ``history`` (the metrics rows so far), ``best`` and, in
``last.pt``, ``optimizer`` and ``rng`` for an exact resume.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medimg_cli.errors import ConfigError
from medimg_cli.fileio import atomic_file, load_tensors
from medimg_cli.models import create_model

FORMAT = "medimg-checkpoint-1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` via a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path) as file:
            torch.save({"format": FORMAT, **payload}, file)
    except RuntimeError as error:  # torch wraps a failed write (a full disk) in a RuntimeError
        if isinstance(error.__context__, OSError):
            raise OSError(error.__context__.errno, error.__context__.strerror, str(path)) from None
        raise


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a medimg checkpoint; a missing or foreign file raises a ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; expected <run folder>/checkpoints/best.pt or last.pt")
    payload = load_tensors(path, f"checkpoint {path}", device)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"checkpoint {path} is not a medimg checkpoint (format {FORMAT} expected)")
    return payload


def model_from_checkpoint(payload: dict[str, Any], path: str | Path) -> nn.Module:
    """Rebuild the model stored in the checkpoint read from ``path`` and load its weights (on the
    checkpoint's device); weights that do not fit the stored model arguments are a ``ConfigError``."""
    try:
        model = create_model(payload["model"]["name"], **payload["model"]["args"])
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"checkpoint {path}: its model cannot be rebuilt ({type(error).__name__}: {error})") from None
    stored, expected = payload["state_dict"], model.state_dict()
    problems = {
        "missing": [key for key in expected if key not in stored],
        "unexpected": [key for key in stored if key not in expected],
        "of another shape": [
            key for key, value in stored.items() if key in expected and expected[key].shape != value.shape
        ],
    }
    if any(problems.values()):
        counts = ", ".join(f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in problems.items() if keys)
        raise ConfigError(
            f"checkpoint {path}: its weights do not fit its model '{payload['model']['name']}' ({counts}); "
            "was the file edited, or written by another medimg version?"
        )
    model.load_state_dict(stored)
    return model


def rng_state() -> dict[str, Any]:
    """The random number generator states that training draws from."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by ``rng_state``."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuple(value: Any) -> Any:
    """Lists back to tuples, as ``random.setstate`` needs them."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
