"""Rankers: the model whose losses rank the training samples, and how it is trained.

Each ranker trains one scoring model on the training split and returns every training sample's
cross entropy under it (higher: more likely bias-conflicting), with the model's own diagnostics.
Side by side (`RunConfig.ranker`):

  gce        the method's biased model: Generalized CE (q = gce_q), which up-weights the easy,
             bias-aligned samples (DiffuBias; LfF, Nam et al. 2020)
  erm-early  plain CE stopped early: JTT's identification model (Liu et al. 2021), which learns
             the easy shortcut before the classes
  committee  bias-amplified (BiasEnsemble, Lee et al. AAAI 2023; bootstrap members as in
             Kim et al. NeurIPS 2022): `committee_size` GCE models, each with its own
             initialisation on a bootstrap resample of train; a sample that fewer than a
             majority of them fit confidently is taken as bias-conflicting and left out; the
             scoring model trains with GCE on the rest, so nothing pulls it towards the classes,
             and scores every training sample

Every ranker trains a model of `biased_width` (a small CNN; narrower than the classifier, so
that it has little room for the classes) for `biased_epochs`, keeping the last epoch or, with
`biased_selection` train-valid-gap, the epoch that fits train but generalises worst to the
validation split.
Reads no bias label. Knows nothing of top-K, metrics or stores (`diffubias.stages.detect`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from diffubias.config import RANKERS, RunConfig
from diffubias.images import ImageSource, InMemoryImages, StreamingImages
from diffubias.prepared import PreparedDataset, new_classifier, train_config
from diffubias.progress import ProgressFn, part
from diffubias.scoring import score_samples
from diffubias.training import TrainResult, train_classifier

# BiasEnsemble's rule: a member fits a sample when its probability of the label exceeds this.
# The paper's 0.99 follows 1,000 steps of training; our members train a few epochs, and 0.9
# keeps the bias-aligned majority while still leaving out what the members only half learnt.
COMMITTEE_CONFIDENCE = 0.9
# selection names of RunConfig.biased_selection -> diffubias.training's
_SELECTIONS = {"last": "last", "train-valid-gap": "train_valid_gap"}
# A biased model fits train through the shortcut and fails the validation split where the
# shortcut does not hold: little of its fit above chance carries over (under 0.05 for every
# ranker on the built-ins, bench/detection.py; near 1 on a set without a shortcut,
# tests/test_rankers.py). At or above this share it has learnt the classes, and its highest
# losses are mostly hard bias-aligned samples (docs/guide/metrics.md#is-the-biased-model-biased).
TRANSFER_WARNING = 0.7


@dataclass(frozen=True, eq=False)
class Ranking:
    """A scoring model and every training sample's CE loss under it."""

    training: TrainResult = field(repr=False)  # the scoring model, with its per-epoch history
    losses: np.ndarray  # float32 (N,), CE under the scoring model, in train-split order
    # committee only: bool (N,), left out of the scoring model's training; None for the others
    dropped: np.ndarray | None = None
    info: dict = field(default_factory=dict)  # how the scoring model was made, for report.json


@dataclass(frozen=True)
class Diagnostics:
    """Is the scoring model biased? Read from its own accuracies, never from bias labels.

    `transfer` = (valid - chance) / (train - chance): the share of its fit above chance that
    carries over to the validation split. Near 0: it fits train by a shortcut the validation
    split does not share (biased, as wanted); near 1: it has learnt the classes. This reads
    right only when the validation split is less biased than train (the built-ins', or one
    collected without the shortcut); a random split of the same images is as biased as train,
    and there a biased model also scores high on it.
    """

    ranker: str
    epochs: tuple[dict, ...]  # per epoch: epoch, train_loss, train_accuracy, valid_accuracy
    selected_epoch: int  # the epoch whose model scores
    train_accuracy: float  # at that epoch, the running mean over its batches
    valid_accuracy: float | None  # at that epoch; None without a validation split
    chance: float | None  # validation accuracy of always answering its largest class
    transfer: float | None
    warning: str | None  # set when the model looks unbiased, with what to try
    info: dict  # the ranker's own: loss, q, committee size and how many samples it dropped

    def to_dict(self) -> dict:
        return {"ranker": self.ranker, "epochs": [dict(e) for e in self.epochs],
                "selected_epoch": self.selected_epoch, "train_accuracy": self.train_accuracy,
                "valid_accuracy": self.valid_accuracy, "chance": self.chance,
                "transfer": self.transfer, "warning": self.warning, **self.info}


def diagnose(ranking: Ranking, config: RunConfig, valid_labels: np.ndarray) -> Diagnostics:
    """The scoring model's per-epoch accuracies, and a warning when it looks unbiased."""
    history = ranking.training.history
    epochs = tuple({"epoch": h.epoch, "train_loss": h.train_loss,
                    "train_accuracy": h.train_accuracy, "valid_accuracy": h.valid_accuracy}
                   for h in history)
    chosen = history[ranking.training.best_epoch - 1]
    train, valid = chosen.train_accuracy, chosen.valid_accuracy
    chance = (float(np.bincount(valid_labels).max() / len(valid_labels))
              if len(valid_labels) else None)
    transfer = None
    if valid is not None and chance is not None and train > chance:
        transfer = float(np.clip((valid - chance) / (train - chance), 0.0, 1.0))
    warning = None
    if transfer is not None and transfer >= TRANSFER_WARNING:
        spec = getattr(ranking.training.model, "spec", None)
        warning = _unbiased_warning(config, getattr(spec, "arch", config.arch), train, valid,
                                    transfer)
    return Diagnostics(config.ranker, epochs, chosen.epoch, train, valid, chance, transfer,
                       warning, dict(ranking.info))


def _unbiased_warning(config: RunConfig, arch: str, train: float, valid: float,
                      transfer: float) -> str:
    tries = [f"fewer biased_epochs (now {config.biased_epochs})"]
    if config.ranker != "erm-early":
        tries.append(f"a larger gce_q (now {config.gce_q:g}, at most 1)")
    if arch == "small-cnn":  # a smaller model has room for the shortcut, less for the classes
        tries.append(f"a smaller biased_width (now {config.biased_width})")
    if config.ranker != "committee":
        tries.append("the committee ranker")
    if config.biased_selection != "train-valid-gap":
        tries.append("biased_selection train-valid-gap with more epochs")
    return (f"The biased model may not be biased: {valid:.0%} validation accuracy against "
            f"{train:.0%} on train ({transfer:.0%} of its fit above chance carries over), so "
            "it has learnt much of the classes, not only a shortcut, and its highest losses "
            "will include many bias-aligned samples. Try " + ", ".join(tries[:-1])
            + f" or {tries[-1]}. (If the validation split is as biased as train, e.g. a "
            "random split of the same images, high validation accuracy is expected and this "
            "check cannot tell.)")


def rank_samples(data: PreparedDataset, config: RunConfig, *,
                 progress: ProgressFn | None = None) -> Ranking:
    """Every training sample's CE loss under the scoring model of `config.ranker`."""
    if config.ranker not in _RANKERS:
        raise ValueError(f"unknown ranker {config.ranker!r}; expected one of "
                         f"{', '.join(RANKERS)}")
    return _RANKERS[config.ranker](data, config, progress)


def train_and_score(data: PreparedDataset, config: RunConfig, *, loss: str, epochs: int,
                    desc: str, selection: str = "last", train: ImageSource | None = None,
                    validate: bool = True,
                    progress: ProgressFn | None = None) -> tuple[TrainResult, np.ndarray]:
    """Trains the run's seeded initialisation, `biased_width` wide, with `loss` ("ce" or "gce")
    on `train` (default: the training split), measured each epoch on the validation split
    unless `validate` is False, then scores every sample of the training split. JTT's
    identification model is this with CE."""
    _, train_split = data.split("train")
    _, valid = data.split("valid")
    model = new_classifier(data, replace(config, width=config.biased_width))
    training = train_classifier(model,
                                train if train is not None else train_split,
                                valid=valid if validate else None,
                                config=train_config(config, epochs=epochs, loss=loss,
                                                    gce_q=config.gce_q, selection=selection),
                                progress=part(progress, 0.0, 0.9), desc=desc)
    losses = score_samples(training.model, train_split, device=config.resolved_device(),
                           progress=part(progress, 0.9, 1.0))
    return training, losses


def _gce(data: PreparedDataset, config: RunConfig, progress: ProgressFn | None) -> Ranking:
    training, losses = train_and_score(data, config, loss="gce", epochs=config.biased_epochs,
                                       selection=_SELECTIONS[config.biased_selection],
                                       desc="biased model (GCE)", progress=progress)
    return Ranking(training, losses, info={"loss": "gce", "gce_q": config.gce_q})


def _erm_early(data: PreparedDataset, config: RunConfig, progress: ProgressFn | None) -> Ranking:
    training, losses = train_and_score(data, config, loss="ce", epochs=config.biased_epochs,
                                       selection=_SELECTIONS[config.biased_selection],
                                       desc="early ERM (CE)", progress=progress)
    return Ranking(training, losses, info={"loss": "ce"})


def _committee(data: PreparedDataset, config: RunConfig, progress: ProgressFn | None) -> Ranking:
    """BiasEnsemble: members vote on which samples they fit; the amplified model trains on
    the samples a majority fits and scores them all."""
    _, train = data.split("train")
    n = len(train)
    members = config.committee_size
    agreement = members // 2 + 1
    fits = np.zeros(n, dtype=np.int64)  # members that fit each sample confidently
    rng = np.random.default_rng(config.seed)
    share = 0.8 / members
    for i in range(members):
        member_config = replace(config, seed=int(rng.integers(2**31)))
        resample = np.sort(rng.integers(0, n, size=n))  # bootstrap: n draws with replacement
        _, losses = train_and_score(data, member_config, loss="gce",
                                    epochs=config.biased_epochs, train=subset(train, resample),
                                    validate=False, desc=f"committee member {i + 1}/{members}",
                                    progress=part(progress, i * share, (i + 1) * share))
        fits += np.exp(-losses.astype(np.float64)) > COMMITTEE_CONFIDENCE  # p(label) = e^-CE
    dropped = fits < agreement
    labels = train.labels.numpy()
    kept = np.flatnonzero(~dropped)
    if not len(kept) or len(np.unique(labels[kept])) < len(np.unique(labels)):
        # a class the committee drops whole cannot be scored by a model that never saw it:
        # the members learnt too little (too few epochs, too small a model) to vote
        raise ValueError(
            f"the committee ranker left out every sample of a class ({int(dropped.sum()):,} of "
            f"{n:,} dropped: its {members} members fit too little in {config.biased_epochs} "
            "epochs); raise biased_epochs or use the gce ranker")
    training, losses = train_and_score(data, config, loss="gce", epochs=config.biased_epochs,
                                       selection=_SELECTIONS[config.biased_selection],
                                       train=subset(train, kept),
                                       desc="bias-amplified model (GCE)",
                                       progress=part(progress, 0.8, 1.0))
    return Ranking(training, losses, dropped,
                   info={"loss": "gce", "gce_q": config.gce_q, "committee_size": members,
                         "agreement": agreement, "confidence": COMMITTEE_CONFIDENCE,
                         "n_dropped": int(dropped.sum()), "n_trained": int(len(kept)),
                         "fits_histogram": np.bincount(fits, minlength=members + 1).tolist()})


def subset(source: ImageSource, local: np.ndarray) -> InMemoryImages | StreamingImages:
    """The samples of `source` at `local` (positions into it, repeats allowed), as a source."""
    index = torch.from_numpy(np.asarray(local, dtype=np.int64))
    if isinstance(source, InMemoryImages):
        return InMemoryImages(source.images[index], source.labels[index])
    if isinstance(source, StreamingImages):
        return StreamingImages(source.ds, source.positions[index.numpy()], source.size,
                               source.num_workers)
    raise ValueError(f"cannot take a subset of a {type(source).__name__}; expected "
                     "InMemoryImages or StreamingImages")


_RANKERS: dict[str, Callable[[PreparedDataset, RunConfig, ProgressFn | None], Ranking]] = {
    "gce": _gce, "erm-early": _erm_early, "committee": _committee}
assert tuple(_RANKERS) == RANKERS, "diffubias.config.RANKERS names what this module implements"
