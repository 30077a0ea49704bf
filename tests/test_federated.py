"""medimg federated: site partitions, the FedProx term, the strategies, and end-to-end runs through
Flower's simulation engine (FedAvg with one site is ordinary training; 3 sites write the tables)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from conftest import check_test_metrics, compose_config, run_cli
from omegaconf import OmegaConf

from medimg_cli.data import DataInfo, Splits, build_data
from medimg_cli.errors import ConfigError
from medimg_cli.federated.sites import _dirichlet, assign_sites, federated_view, site_names, site_splits

flwr = pytest.importorskip("flwr", reason="Flower is an extra: pip install 'medimg[federated]'")

SMALL = ["data.num_samples=64", "data.image_size=32", "trainer.batch_size=8", "device=cpu"]


def phantom(*overrides: str) -> tuple[Splits, dict, dict]:
    cfg = compose_config([*SMALL, *overrides], name="federated")
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    return build_data(data_cfg), data_cfg, OmegaConf.to_container(cfg.federated, resolve=True)


def labelled(counts: dict[str, list[int]]) -> Splits:
    """Splits of 1x4x4 images whose labels are ``counts[split]`` images of class 0, 1, 2..."""

    def split(per_class):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
        return {"image": torch.arange(len(labels)).float().view(-1, 1, 1, 1).expand(-1, 1, 4, 4), "label": labels}

    info = DataInfo(task="classification", spatial_dims=2, in_channels=1, num_classes=3, num_seg_classes=0,
                    class_names=("a", "b", "c"))  # fmt: skip
    return Splits(**{s: split(c) for s, c in counts.items()}, info=info, fingerprint="x")


def test_iid_sites_split_every_split_evenly_without_overlap():
    data, data_cfg, fed = phantom("federated.clients=3")
    names = assign_sites(data, data_cfg, fed, min_train=8)
    assert names == ["site_1", "site_2", "site_3"]
    for split in ("train", "val", "test"):
        sizes = [len(site_splits(data, name).split(split)["image"]) for name in names]
        assert sum(sizes) == len(data.split(split)["image"]) and max(sizes) - min(sizes) <= 1
    # the images of the sites together are the pooled split's, each once
    pooled = torch.cat([site_splits(data, name).train["image"] for name in names])
    assert sorted(pooled.flatten(1).sum(1).tolist()) == sorted(data.train["image"].flatten(1).sum(1).tolist())


def test_dirichlet_deals_each_class_in_its_drawn_shares():
    labels = np.array([0] * 10 + [1] * 20)
    shares = np.array([[0.5, 0.5], [0.25, 0.75]])
    sites = _dirichlet(labels, shares, np.random.default_rng(0))
    assert np.bincount(sites[labels == 0], minlength=2).tolist() == [5, 5]
    assert np.bincount(sites[labels == 1], minlength=2).tolist() == [5, 15]


def test_dirichlet_partition_skews_labels_and_keeps_each_sites_mix_across_splits():
    data = labelled({"train": [60, 60, 60], "val": [30, 30, 30], "test": [30, 30, 30]})
    fed = {"clients": 3, "partition": "dirichlet", "alpha": 0.3, "partition_seed": 0}
    names = assign_sites(data, {}, fed, min_train=4)
    for name in names:
        site = site_splits(data, name)
        train = np.bincount(site.train["label"].numpy(), minlength=3) / len(site.train["label"])
        val = np.bincount(site.val["label"].numpy(), minlength=3) / len(site.val["label"])
        assert np.abs(train - val).max() < 0.15  # one draw of shares for all splits
    mixes = [np.bincount(site_splits(data, n).train["label"].numpy(), minlength=3) for n in names]
    assert max(m.max() / m.sum() for m in mixes) > 0.6  # alpha 0.3: some site is mostly one class
    again = labelled({"train": [60, 60, 60], "val": [30, 30, 30], "test": [30, 30, 30]})
    assign_sites(again, {}, fed, min_train=4)
    assert again.meta == data.meta  # partition_seed fixes it


def test_by_label_gives_each_site_its_own_classes():
    data = labelled({"train": [8, 8, 8], "val": [4, 4, 4], "test": [4, 4, 4]})
    names = assign_sites(data, {}, {"clients": 3, "partition": "by_label"}, min_train=4)
    for k, name in enumerate(names):
        for split in ("train", "val", "test"):
            assert set(site_splits(data, name).split(split)["label"].tolist()) == {k}


def test_phantom_sites_come_from_scanners_with_their_own_intensity_and_noise():
    data, data_cfg, fed = phantom("data.sites=3", "data.site_column=site", "data.num_samples=300")
    assert assign_sites(data, data_cfg, fed, min_train=8) == ["site_1", "site_2", "site_3"]
    means = [site_splits(data, f"site_{k}").train["image"].mean().item() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]  # gain 0.7 -> 1.3, offset -0.1 -> 0.1
    plain, _, _ = phantom("data.num_samples=300")
    assert torch.equal(plain.train["label"], data.train["label"])  # same phantoms, other scanners


@pytest.mark.parametrize(
    ("overrides", "fed", "message"),
    [
        (["data.task=segmentation"], {"partition": "dirichlet"}, "no single class per image"),
        ([], {"partition": "by_label", "clients": 4}, "3 classes cannot give 4 sites"),
        ([], {"clients": 0}, "federated.clients=0"),
        ([], {"clients": 10}, "fewer than trainer.batch_size=8"),
        (["data.site_column=scanner"], {}, "data.site_column=scanner: the data have no such metadata column"),
        ([], {"site": "site_9"}, "federated.site=site_9 is not a site"),
        ([], {"partition": "random"}, "federated.partition"),
    ],
)
def test_impossible_sites_are_refused_in_one_line(overrides, fed, message):
    data, data_cfg, base = phantom(*overrides)
    with pytest.raises(ConfigError, match=message):
        federated_view(data, data_cfg, {**base, **fed}, min_train=8)


def test_site_names_sort_naturally():
    data = labelled({"train": [1, 1, 0], "val": [1, 1, 0], "test": [1, 1, 0]})
    data.meta = {s: {"site": ["site_10", "site_2"]} for s in ("train", "val", "test")}
    assert site_names(data) == ["site_2", "site_10"]


def test_the_fedprox_term_is_mu_half_the_squared_distance_to_the_global_weights():
    from medimg_cli.federated.client import Proximal

    model = torch.nn.Linear(3, 2)
    proximal = Proximal(lambda outputs, batch: torch.tensor(1.5), model, mu=0.2)
    with torch.no_grad():
        model.weight.add_(0.5)  # 6 weights moved by 0.5; the bias stays
    assert proximal({}, {}).item() == pytest.approx(1.5 + 0.2 / 2 * 6 * 0.25)


def test_strategies_come_from_flower_with_their_settings():
    from flwr.serverapp.strategy import FedAdam, FedProx, FedYogi

    from medimg_cli.federated.server import build_strategy, offset_rounds, restore_strategy, strategy_state

    rounds = type("R", (), {"on_train": None, "on_validation": None})()
    fed = OmegaConf.to_container(compose_config(["federated=fedprox"], name="federated").federated)
    prox = build_strategy({**fed, "fraction": 0.5}, 5, rounds)
    assert isinstance(prox, FedProx) and prox.proximal_mu == 0.01 and prox.min_train_nodes == 3
    fed = OmegaConf.to_container(compose_config(["federated=fedyogi"], name="federated").federated)
    yogi = build_strategy(fed, 3, rounds)
    assert isinstance(yogi, FedYogi) and isinstance(yogi, FedAdam) is False and yogi.eta == 0.01
    yogi.m_t = {"w": np.ones(2, dtype=np.float32)}
    other = build_strategy(fed, 3, rounds)
    restore_strategy(other, strategy_state(yogi))
    assert np.array_equal(other.m_t["w"], yogi.m_t["w"])
    seen = []
    yogi.configure_train = lambda server_round, *args: seen.append(server_round)
    offset_rounds(yogi, 4)
    yogi.configure_train(1, None)
    assert seen == [5]
    with pytest.raises(ConfigError, match="federated.fraction=0"):
        build_strategy({**fed, "fraction": 0}, 3, rounds)


@pytest.mark.slow
def test_fedavg_with_one_site_is_ordinary_training_and_resumes_exactly(tmp_path):
    """One site, one local epoch per round: round r is epoch r of ``medimg train`` (same weights,
    same metrics), also across an interrupted run resumed for one more round. Both train on one
    thread (Flower's simulation gives the site one core), so the sums run in the same order."""
    common = [*SMALL, "data.task=classification"]
    fed = tmp_path / "fed"
    done = run_cli("federated", *common, "federated.clients=1", "federated.rounds=2", f"hydra.run.dir={fed}")
    assert done.returncode == 0, done.stderr
    sites_csv = fed / "sites.csv"  # as if killed after round 2's checkpoint, before its sites.csv row
    sites_csv.write_text("".join(sites_csv.read_text().splitlines(keepends=True)[:2]))
    more = run_cli("federated", *common, "federated.clients=1", "federated.rounds=3", "trainer.resume=true",
                   f"hydra.run.dir={fed}")  # fmt: skip
    assert more.returncode == 0, more.stderr
    plain = tmp_path / "train"
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}
    trained = run_cli("train", *common, "trainer.epochs=3", "tracking.tensorboard=false", f"hydra.run.dir={plain}",
                      env=one_thread)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    ours, theirs = (torch.load(d / "checkpoints" / "last.pt", weights_only=False) for d in (fed, plain))
    for key, value in theirs["state_dict"].items():
        torch.testing.assert_close(ours["state_dict"][key].to(value.dtype), value, rtol=1e-6, atol=1e-7)
    rows = [list(csv.DictReader((d / "metrics.csv").open())) for d in (fed, plain)]
    assert len(rows[0]) == len(rows[1]) == 3
    assert [r["round"] for r in csv.DictReader(sites_csv.open())] == ["1", "2", "3"]  # rewritten from last.pt
    for a, b in zip(*rows, strict=True):
        for column in ("train_loss", "val_loss", "val_accuracy", "val_auc"):
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-6), column


@pytest.mark.slow
def test_three_sites_write_the_round_tables_the_baselines_and_a_global_model_eval_takes(tmp_path):
    run_dir = tmp_path / "fed"
    done = run_cli("federated", "data=phantom", "federated.clients=3", "federated.rounds=3", *SMALL,
                   "federated.baselines=true", "trainer.table_every=1", f"hydra.run.dir={run_dir}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    sites = list(csv.DictReader((run_dir / "sites.csv").open()))
    assert [(int(r["round"]), r["site"]) for r in sites] == [(r, f"site_{k}") for r in (1, 2, 3) for k in (1, 2, 3)]
    counts = summary["federated"]["sites"]
    assert [c["train"] for c in counts.values()] == [int(float(r["images"])) for r in sites[:3]]
    check_test_metrics(run_dir, summary["test"])
    table = (run_dir / "table.md").read_text()
    assert "| round |" in table and "site_3 val loss" in table and "local site_2" in table
    # the comparison's centralised row is that baseline's own best checkpoint on the pooled test split
    comparison = summary["federated"]["comparison"]
    centralised = json.loads((run_dir / "baselines" / "centralised" / "summary.json").read_text())
    assert comparison["centralised"]["pooled"]["accuracy"] == pytest.approx(centralised["test"]["accuracy"])
    assert centralised["epochs"] == 3
    local = OmegaConf.load(run_dir / "baselines" / "site_2" / "config.yaml")
    assert local.federated.site == "site_2" and local.seed == 1
    evaluated = run_cli("eval", f"checkpoint={run_dir / 'checkpoints' / 'best.pt'}", "device=cpu",
                        f"hydra.run.dir={tmp_path / 'eval'}")  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    groups = list(csv.DictReader((run_dir / "eval" / "test" / "subgroups.csv").open()))
    per_site = {r["group"]: int(r["n"]) for r in groups if r["column"] == "site"}
    assert per_site == {site: c["test"] for site, c in counts.items()}


def test_a_deployed_site_trains_on_its_own_data_and_keeps_its_state(tmp_path, monkeypatch):
    """The ``ClientApp`` that Flower's deployment engine runs at a site, called as a SuperNode
    would: the site reads its own data config and keeps its round state in its own folder."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    for key in ("_run_id", "_task_id", "_node_id"):  # what Flower's runtime sets in a SuperNode's process
        monkeypatch.setattr(TaskIdentity, key, 1)

    from medimg_cli.federated.deploy import client
    from medimg_cli.models import create_model, model_args

    shared = compose_config([*SMALL, "data.task=classification", "federated.clients=2"], name="federated")
    (tmp_path / "federated.yaml").write_text(OmegaConf.to_yaml(shared))
    own = OmegaConf.merge(shared.data, {"seed": 7, "num_samples": 40})
    (tmp_path / "site.yaml").write_text(OmegaConf.to_yaml(own))
    node = {"site-index": 1, "data": str(tmp_path / "site.yaml"), "folder": str(tmp_path / "site")}
    context = Context(1, 5, node, RecordDict(), {"medimg-config": str(tmp_path / "federated.yaml")})
    data = build_data(OmegaConf.to_container(own))
    torch.manual_seed(0)
    model = create_model("cnn", **model_args(OmegaConf.to_container(shared.model), data.info))
    config = ConfigRecord({"server-round": 1, "local-epochs": 1})
    message = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config}), 5, "train")
    reply = client(message, context)
    metrics = next(iter(reply.content.metric_records.values()))
    assert metrics["num-examples"] == len(data.train["image"]) and metrics["site-index"] == 1
    trained = next(iter(reply.content.array_records.values())).to_torch_state_dict()
    moved = max((trained[key] - value).abs().max().item() for key, value in model.named_parameters())
    # it trained, from the weights it was sent: a few Adam steps of lr 0.001 move none far (its own
    # initialisation, seed 1, differs from them by tenths)
    assert 0 < moved < 0.02
    assert (tmp_path / "site" / "state_1.pt").is_file()
    assert OmegaConf.load(tmp_path / "site" / "config.yaml").seed == shared.seed + 1


def test_fedadam_steps_the_weights_but_averages_the_batch_norm_statistics():
    from flwr.app import ArrayRecord, MetricRecord, RecordDict

    from medimg_cli.federated.server import average_buffers

    class Reply:  # what aggregate_train reads of a site's reply
        def __init__(self, var: float, images: int) -> None:
            arrays = {"w": torch.zeros(2), "bn.running_var": torch.full((2,), var)}
            metrics = MetricRecord({"num-examples": images})
            self.content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics})

        def has_content(self) -> bool:
            return True

    strategy = type("S", (), {"weighted_by_key": "num-examples"})()
    stepped = {"w": torch.full((2,), 0.5), "bn.running_var": torch.full((2,), -0.2)}  # an optimiser's step
    strategy.aggregate_train = lambda server_round, replies: (ArrayRecord(stepped), None)
    average_buffers(strategy, {"bn.running_var"})
    arrays, _ = strategy.aggregate_train(1, [Reply(1.0, 10), Reply(2.0, 30)])
    assert np.allclose(arrays["bn.running_var"].numpy(), 1.75)  # (1 x 10 + 2 x 30) / 40
    assert np.allclose(arrays["w"].numpy(), 0.5)


def test_a_site_continues_from_its_last_finished_round(tmp_path):
    """A site sampled in rounds 1 and 3 starts round 4 from its round-3 state, and a state of a
    round the server never finished (5, before an interruption) is passed over."""
    import random

    from medimg_cli.federated.client import _restore, _save

    class Run:  # the pieces of a site's run that its round state holds
        run_dir, device, schedule = tmp_path, "cpu", None
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scaler = torch.amp.GradScaler("cpu", enabled=False)

    start = {"torch": torch.get_rng_state(), "python": random.getstate()}
    for round_ in (1, 3, 5):
        Run.optimizer.param_groups[0]["lr"] = float(round_)
        _save(Run, round_)
    assert sorted(p.name for p in tmp_path.glob("state_*.pt")) == ["state_3.pt", "state_5.pt"]
    _restore(Run, 4, start)
    assert Run.optimizer.param_groups[0]["lr"] == 3.0
    torch.rand(3)
    _restore(Run, 0, start)  # not trained yet: the random state as built
    assert torch.equal(torch.get_rng_state(), start["torch"])


def test_ddp_is_refused_for_federated_runs(tmp_path):
    from medimg_cli.federated.run import federate

    with pytest.raises(ConfigError, match="trainer.devices=2: each site trains in one process"):
        federate(compose_config(["trainer.devices=2"], name="federated"), tmp_path / "run")
