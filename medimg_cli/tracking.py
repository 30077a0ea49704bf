"""Experiment tracking beside ``metrics.csv``: TensorBoard by default, MLflow on request.

- TensorBoard (``tracking.tensorboard``, on by default): ``<run>/tensorboard/`` holds every
  numeric column of ``metrics.csv`` as a scalar per epoch, grouped ``train/``, ``val/`` and
  ``time/`` (``tag``), the test metrics (``test/``) at the last epoch with the main settings in
  the HParams tab, and every ``tracking.image_every`` epochs a labelled picture (at least 512 px
  high, ``pictures.grid_figure``) of ``tracking.images`` validation images: the true mask above
  the predicted one, or the images titled ``label -> prediction`` when the model only classifies.
  A resumed run purges events after its last saved epoch.
- Weights & Biases (``tracking.wandb=true``, ``pip install 'medimg[wandb]'``): the resolved
  config, the same metrics and pictures and the test metrics in the run summary, project
  ``tracking.wandb_project``; ``WANDB_MODE=offline`` needs no network. The W&B run id is kept in
  ``<run>/wandb.json`` so that a resumed run continues the same W&B run.
- MLflow (``tracking.mlflow=true``): the resolved config as parameters (dotted keys), the same
  metrics per epoch and the test metrics, in the store ``tracking.mlflow_uri`` (default: the
  SQLite file ``mlruns/mlflow.db`` in the working directory, MLflow 3's local store; its file
  store is deprecated). The MLflow run id is kept in ``<run>/mlflow.json`` so that a resumed
  run continues the same MLflow run.

Only the process that writes the run folder tracks; CSV stays the record of truth.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medimg_cli.data import DataInfo
from medimg_cli.errors import ConfigError
from medimg_cli.fileio import write_json
from medimg_cli.pictures import Tile, figure_array, grid_figure

MLFLOW_PARAMS_PER_CALL = 100  # MLflow's limit for one log_batch
# the settings shown in TensorBoard's HParams tab beside each run's test metrics
HPARAMS = ("model.name", "data.name", "data.task", "augment.name", "loss.name", "optim.name", "optim.lr",
           "optim.weight_decay", "scheduler.name", "trainer.batch_size", "trainer.epochs", "seed")  # fmt: skip


def tag(column: str) -> str:
    """The TensorBoard tag of a ``metrics.csv`` column, grouped by where it was measured:
    ``val_auc`` -> ``val/auc``, ``train_loss`` -> ``train/loss``, ``epoch_seconds`` -> ``time/epoch_seconds``."""
    group, _, name = column.partition("_")
    return f"{group}/{name}" if group in ("train", "val", "test") and name else f"time/{column}"


def hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """``HPARAMS`` of the resolved config, as numbers, booleans or text (what TensorBoard takes)."""
    found = {}
    for key in HPARAMS:
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None:
            found[key] = value if isinstance(value, (int, float, bool, str)) else str(value)
    return found


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``: config keys as MLflow parameter names."""
    found: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found |= flatten(value, name + ".")
        else:
            found[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return found


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch" and not math.isnan(v)}


class Tracker:
    """Sends each epoch's row (and samples) to TensorBoard and/or MLflow.

    Args:
        settings: the ``tracking`` config (``None``: the defaults).
        run_dir: the run folder.
        config: the resolved config (MLflow parameters).
        first_epoch: the epoch training starts at (> 1 when resuming).
        sweep_name: in a sweep, the job's overrides (``model=unet,seed=1``): the run's name in
            every tracker, and its TensorBoard folder ``<run>/tensorboard/<sweep_name>`` so that
            ``tensorboard --logdir <sweep>`` lists the runs by what they changed. Outside a sweep
            the run folder's name, and ``<run>/tensorboard``.
    """

    def __init__(
        self, settings: Mapping | None, run_dir: Path, config: Mapping, first_epoch: int, sweep_name: str | None = None
    ) -> None:
        settings = dict(settings or {})
        self.config = config
        self.images = int(settings.get("images", 4))
        self.image_every = int(settings.get("image_every", 1))
        self.writer = self.mlflow = self.wandb = None
        # a path in an override (data.path=/x/y.csv) must not become nested folders
        name = sweep_name.replace("/", "|")[:200] if sweep_name else None
        if settings.get("tensorboard", True):
            from torch.utils.tensorboard import SummaryWriter

            folder = run_dir / "tensorboard" / name if name else run_dir / "tensorboard"
            self.writer = SummaryWriter(str(folder), purge_step=first_epoch)
        if settings.get("mlflow", False):
            self.mlflow = _MlflowRun(settings, run_dir, config, name or run_dir.name)
        if settings.get("wandb", False):
            self.wandb = _WandbRun(settings, run_dir, config, name or run_dir.name)

    def epoch(self, row: Mapping[str, Any], samples: Mapping[str, Any] | None = None) -> None:
        """Log one ``metrics.csv`` row; ``samples`` from ``sample_predictions`` when due."""
        values, epoch = _numbers(row), int(row["epoch"])
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(tag(key), value, epoch)
            if samples is not None:
                self.writer.add_image("val_samples", samples["picture"], epoch, dataformats="HWC")
                if samples["text"]:
                    self.writer.add_text("val_samples", samples["text"], epoch)
            self.writer.flush()
        if self.mlflow is not None:
            self.mlflow.metrics(values, epoch)
        if self.wandb is not None:
            self.wandb.log(values, epoch, samples)

    def wants_samples(self, epoch: int) -> bool:
        wanted = self.writer is not None or self.wandb is not None
        return wanted and self.images > 0 and epoch % self.image_every == 0

    def finish(self, test: Mapping[str, Any], epoch: int) -> None:
        """Log the test metrics (as ``test_<name>``) and close."""
        values = {f"test_{k}": v for k, v in _numbers(test).items()}
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(tag(key), value, epoch)
            # the HParams tab: this run's settings beside its test metrics (in the run's own folder)
            metrics = {f"hparams/{key}": value for key, value in values.items()}
            self.writer.add_hparams(hparams(self.config), metrics, run_name=".", global_step=epoch)
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.metrics(values, epoch)
            self.mlflow.close()
        if self.wandb is not None:
            self.wandb.finish(values)


@torch.no_grad()
def sample_predictions(outputs: dict[str, torch.Tensor], info: DataInfo, batch: dict) -> dict[str, Any]:
    """A labelled picture ``(H, W, 3)`` uint8 (``pictures.grid_figure``, at least 512 px high) of
    ``batch["image"]`` ``(N, C, *spatial)``: the true masks above the predicted ones, or for anomaly
    detection the images with their abnormal regions above the anomaly maps (one scale for the
    row); each column titled ``label -> prediction`` when classifying, which ``text`` repeats."""
    if info.registers:
        from medimg_cli.evaluation.registered import pair_rows  # it imports the evaluation modules

        return {"picture": figure_array(grid_figure(*pair_rows(outputs, batch))), "text": ""}
    images = batch["image"]
    titles = [f"image {i}" for i in range(len(images))]
    if info.classifies and not info.multilabel:
        names = info.class_names
        predicted = outputs["class_logits"].argmax(1).tolist()
        truth = batch["label"].tolist()
        titles = [f"{names[label]} -> {names[guess]}" for label, guess in zip(truth, predicted, strict=True)]
    rows, labels = [], []
    if info.segments:
        predicted_masks = outputs["seg_logits"].argmax(1)
        true_masks = batch["mask"][:, 0]
        rows.append([Tile(image, mask, title) for image, mask, title in zip(images, true_masks, titles, strict=True)])
        rows.append([Tile(image, mask) for image, mask in zip(images, predicted_masks, strict=True)])
        labels += ["true mask", "predicted mask"]
    else:
        truth = batch["mask"][:, 0] if info.detects and "mask" in batch else [None] * len(images)
        rows.append([Tile(image, mask, title) for image, mask, title in zip(images, truth, titles, strict=True)])
        labels.append("abnormal region" if info.detects and "mask" in batch else "image")
    cmaps = ["gray"] * len(rows)
    if info.detects:
        rows.append([Tile(anomaly) for anomaly in outputs["anomaly_map"]])
        labels.append("anomaly map")
        cmaps.append("inferno")
    text = "  \n".join(f"image {i}: {title}" for i, title in enumerate(titles)) if info.classifies else ""
    return {"picture": figure_array(grid_figure(rows, labels, cmaps)), "text": text}


class _MlflowRun:
    """One MLflow run through the client API (no global state), created or continued."""

    def __init__(self, settings: Mapping, run_dir: Path, config: Mapping, name: str) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("tracking.mlflow=true needs MLflow: pip install 'medimg[mlflow]'") from None
        uri = settings.get("mlflow_uri") or f"sqlite:///{(Path.cwd() / 'mlruns' / 'mlflow.db').as_posix()}"
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(uri)
        record = run_dir / "mlflow.json"
        if record.is_file():
            self.run_id = json.loads(record.read_text())["run_id"]
            return
        name = settings.get("experiment", "medimg")
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts" if uri.startswith("sqlite") else None
            experiment_id = self.client.create_experiment(name, artifact_location=artifacts and artifacts.as_uri())
        else:
            experiment_id = experiment.experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        from mlflow.entities import Param

        params = [Param(k, v[:6000]) for k, v in flatten(config).items()]
        for start in range(0, len(params), MLFLOW_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[start : start + MLFLOW_PARAMS_PER_CALL])
        self.client.set_tag(self.run_id, "medimg.run_dir", str(run_dir))
        write_json(record, {"tracking_uri": uri, "run_id": self.run_id})

    def metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(1000 * time.time())
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class _WandbRun:
    """One Weights & Biases run, created or continued (its id is kept in ``<run>/wandb.json``):
    the resolved config, metrics per epoch (step = epoch, tags as TensorBoard's), the sample
    pictures and the test metrics in the run summary. ``WANDB_MODE=offline`` writes it under
    ``<run>/wandb/`` without a network, for ``wandb sync`` later."""

    def __init__(self, settings: Mapping, run_dir: Path, config: Mapping, name: str) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("tracking.wandb=true needs Weights & Biases: pip install 'medimg[wandb]'") from None
        self.wandb, record = wandb, run_dir / "wandb.json"
        run_id = json.loads(record.read_text())["run_id"] if record.is_file() else secrets.token_hex(6)
        project = settings.get("wandb_project") or "medimg"
        self.run = wandb.init(
            project=project, id=run_id, resume="allow", name=name, dir=str(run_dir), config=dict(config),
            settings=wandb.Settings(silent=True),
        )  # fmt: skip
        write_json(record, {"project": project, "run_id": run_id})

    def log(self, values: Mapping[str, float], step: int, samples: Mapping[str, Any] | None = None) -> None:
        found: dict[str, Any] = {tag(key): value for key, value in values.items()}
        if samples is not None:
            found["val/samples"] = self.wandb.Image(samples["picture"], caption=samples["text"] or None)
        self.run.log(found, step=step)

    def finish(self, test: Mapping[str, float]) -> None:
        self.run.summary.update({tag(key): value for key, value in test.items()})
        self.run.finish()
