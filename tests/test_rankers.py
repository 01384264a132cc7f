"""The rankers of `diffubias.rankers`, on planted signals: each one puts the planted conflicts
on top; `gce` is today's detection, bit for bit; the committee really leaves samples out and
trains the scoring model on the rest; the biased model's diagnostics hold its accuracies per
epoch, and warn when a dataset has no shortcut for it to learn, not when it has one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_bar_images
from PIL import Image
from planted_methods import planted_config, planted_folder  # noqa: F401 (a fixture)

import diffubias.rankers as rankers
from diffubias.cli import main
from diffubias.config import RANKERS, RunConfig
from diffubias.prepared import PreparedDataset, new_classifier, train_config
from diffubias.scoring import score_samples
from diffubias.stages.detect import detect_bias
from diffubias.training import train_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planted(planted_folder, tmp_path_factory):  # noqa: F811
    """(config, data, is_conflict): colour predicts the class but for 18 of 600 samples."""
    cfg = planted_config(planted_folder, tmp_path_factory.mktemp("rankers"), top_k=9,
                         biased_epochs=3, committee_size=3)
    data = PreparedDataset.load(cfg)
    return cfg, data, data.conflicts(data.split("train")[0])


def _bar_scenes(labels: np.ndarray, colours: np.ndarray, rng: np.random.Generator,
                size: int = 12) -> np.ndarray:
    """uint8 (N, size, size, 3): conftest's bar images with a bright bar that any model learns
    in an epoch or two."""
    return make_bar_images(labels, colours, rng, size, bar=6, strength=90,
                           noise=20).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def no_shortcut(tmp_path_factory):
    """A folder dataset whose colour says nothing of the class (half of each class per
    colour): there is no shortcut, so any model that fits train learns the classes."""
    root = tmp_path_factory.mktemp("no-shortcut")
    rng = np.random.default_rng(1)
    rows = []
    for split, n in (("train", 600), ("valid", 200), ("test", 200)):
        labels = np.tile([0, 1], n // 2)
        colours = rng.permutation(np.repeat([0, 1], n // 2))
        (root / split).mkdir()
        for i, image in enumerate(_bar_scenes(labels, colours, rng)):
            Image.fromarray(image).save(root / split / f"{i:04d}.png")
            rows.append(f"{split}/{i:04d}.png,{split},{('vertical', 'horizontal')[labels[i]]},"
                        f"{('red', 'green')[colours[i]]}")
    (root / "metadata.csv").write_text("path,split,label,bias\n" + "\n".join(rows) + "\n")
    cfg = planted_config(root, tmp_path_factory.mktemp("no-shortcut-run"), biased_epochs=3)
    return cfg, PreparedDataset.load(cfg)


@pytest.mark.parametrize("ranker", RANKERS)
def test_every_ranker_puts_the_planted_conflicts_on_top(planted, ranker):
    cfg, data, is_conflict = planted
    detection = detect_bias(data, cfg.with_overrides(ranker=ranker))
    m = detection.metrics
    assert m["n_conflicts"] == 18 == int(is_conflict.sum())
    assert m["auroc"] > 0.95 and m["average_precision"] > 0.6, m
    assert m["r_precision"] >= 0.6, m
    assert detection.diagnostics.ranker == ranker


def test_gce_is_todays_detection_bit_for_bit(planted):
    """The recipe detect_bias had before rankers existed: GCE, last epoch, CE scores (on the
    run's initialisation at the biased model's width)."""
    cfg, data, _ = planted
    _, train = data.split("train")
    _, valid = data.split("valid")
    model = new_classifier(data, cfg.with_overrides(width=cfg.biased_width))
    before = train_classifier(model, train, valid=valid,
                              config=train_config(cfg, epochs=cfg.biased_epochs, loss="gce",
                                                  gce_q=cfg.gce_q, selection="last"))
    expected = score_samples(before.model, train, device="cpu")
    ranking = rankers.rank_samples(data, cfg)
    assert cfg.ranker == "gce" and ranking.dropped is None
    assert np.array_equal(ranking.losses, expected)
    assert ranking.training.history == before.history


def test_the_biased_model_is_narrower_than_the_classifier(planted):
    cfg, data, _ = planted
    assert RunConfig().biased_width < RunConfig().width  # the defaults: 4 against 16
    assert cfg.biased_width < cfg.width  # here 4 against 8
    narrow = rankers.rank_samples(data, cfg)
    assert narrow.training.model.spec.width == cfg.biased_width
    assert new_classifier(data, cfg).spec.width == cfg.width  # what the other models start as
    wide = rankers.rank_samples(data, cfg.with_overrides(biased_width=cfg.width))
    assert wide.training.model.spec.width == cfg.width
    assert not np.array_equal(narrow.losses, wide.losses)


def test_the_committee_drops_what_it_finds_conflicting_and_trains_on_the_rest(planted,
                                                                             monkeypatch):
    cfg, data, is_conflict = planted
    trained_on = []
    real = rankers.train_classifier

    def recording(model, train, **kwargs):
        trained_on.append(len(train))
        return real(model, train, **kwargs)

    monkeypatch.setattr(rankers, "train_classifier", recording)
    ranking = rankers.rank_samples(data, cfg.with_overrides(ranker="committee"))
    n, dropped = len(is_conflict), ranking.dropped
    assert 0 < dropped.sum() < n // 2
    # the members each trained on a bootstrap resample as large as train, the amplified model
    # on what the committee kept
    assert trained_on == [n] * cfg.committee_size + [n - int(dropped.sum())]
    assert ranking.info["n_dropped"] == int(dropped.sum())
    assert ranking.info["n_trained"] == n - int(dropped.sum())
    assert sum(ranking.info["fits_histogram"]) == n
    # what it drops is mostly the planted conflicts: far more of them than of the aligned
    assert dropped[is_conflict].mean() > 0.5 > 5 * dropped[~is_conflict].mean()


def test_a_committee_that_fits_nothing_says_what_to_change(planted, monkeypatch):
    cfg, data, _ = planted
    monkeypatch.setattr(rankers, "COMMITTEE_CONFIDENCE", 1.0)  # no probability exceeds 1
    with pytest.raises(ValueError, match=r"left out every sample of a class .* raise "
                                         r"biased_epochs or use the gce ranker"):
        rankers.rank_samples(data, cfg.with_overrides(ranker="committee", committee_size=2,
                                                      biased_epochs=1))


def test_diagnostics_hold_train_and_valid_accuracy_per_epoch(planted):
    cfg, data, _ = planted
    diagnostics = detect_bias(data, cfg).diagnostics
    assert [e["epoch"] for e in diagnostics.epochs] == [1, 2, 3]
    for epoch in diagnostics.epochs:
        assert 0 <= epoch["train_accuracy"] <= 1 and 0 <= epoch["valid_accuracy"] <= 1
    assert diagnostics.selected_epoch == 3  # "last"
    assert diagnostics.train_accuracy == diagnostics.epochs[-1]["train_accuracy"]
    assert diagnostics.chance == pytest.approx(0.5)
    # biased: it fits train by colour and is near chance on the unbiased validation split
    assert diagnostics.train_accuracy > 0.9 and diagnostics.valid_accuracy < 0.75
    assert diagnostics.transfer < rankers.TRANSFER_WARNING and diagnostics.warning is None
    assert json.loads(json.dumps(diagnostics.to_dict()))["epochs"][0]["epoch"] == 1


def test_a_dataset_without_a_shortcut_gets_the_warning(no_shortcut):
    cfg, data = no_shortcut
    diagnostics = detect_bias(data, cfg).diagnostics
    assert diagnostics.valid_accuracy > 0.85, diagnostics.epochs
    assert diagnostics.transfer >= rankers.TRANSFER_WARNING
    warning = diagnostics.warning
    assert "may not be biased" in warning and "fewer biased_epochs (now 3)" in warning
    assert "the committee ranker" in warning and "gce_q (now 0.7" in warning


def test_train_valid_gap_keeps_the_epoch_that_generalises_worst(planted):
    cfg, data, _ = planted
    ranking = rankers.rank_samples(data, cfg.with_overrides(biased_selection="train-valid-gap",
                                                            biased_epochs=4))
    history = ranking.training.history
    gaps = [h.train_accuracy - h.valid_accuracy for h in history]
    assert ranking.training.best_epoch == 1 + int(np.argmax(gaps))
    assert ranking.training.valid_accuracy == history[ranking.training.best_epoch - 1] \
        .valid_accuracy
    # the kept weights are that epoch's: they score what the returned model scores
    _, train = data.split("train")
    assert np.array_equal(ranking.losses, score_samples(ranking.training.model, train))


def test_detect_command_takes_the_ranker_and_reports_the_biased_model(planted_folder,  # noqa: F811
                                                                      tmp_path):
    out = tmp_path / "run"
    assert main(["detect", "--out", str(out), "--dataset", str(planted_folder), "--cache-dir",
                 str(tmp_path / "cache"), "--device", "cpu", "--width", "8", "--lr", "0.003",
                 "--biased-epochs", "2", "--top-k", "9", "--ranker", "erm-early",
                 "--biased-width", "6"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["ranker"] == "erm-early" and report["config"]["biased_width"] == 6
    assert report["models"]["biased"]["ranker"] == "erm-early"
    assert report["models"]["biased"]["width"] == 6
    model = report["biased_model"]
    assert model["ranker"] == "erm-early" and len(model["epochs"]) == 2
    assert {"train_accuracy", "valid_accuracy", "transfer", "warning"} <= set(model)
    assert model["loss"] == "ce"


def test_subset_keeps_images_and_labels_of_the_positions(planted_bias):
    from diffubias.images import InMemoryImages

    source = InMemoryImages(planted_bias["images"], planted_bias["labels"])
    local = np.array([5, 5, 599, 0])
    part = rankers.subset(source, local)
    assert torch.equal(part.images, planted_bias["images"][local])
    assert part.labels.tolist() == planted_bias["labels"][local].tolist()
