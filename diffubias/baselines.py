"""Debiasing methods side by side: vanilla (ERM), LfF, JTT, oversampled top-K candidates, and
DiffuBias with and without its text filter.

Every method takes a `PreparedDataset` and a `RunConfig`, trains through the one training loop
(`train_classifier`: the run's seeded initialisation, `debias_epochs` of Adam, checkpoint chosen on
the validation split, never on test), is evaluated by `test_accuracy`, and returns a
`MethodResult`. Stages that several methods need (the GCE detection, JTT's ERM identification
model, the captions, the training on generated images) are computed at most once in a
`SharedStages`, and each result still counts the time of every stage it used.
It knows nothing of files, plots, or where results are stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffubias.backends import captioner_for, generator_for
from diffubias.captions import Caption, Captioner
from diffubias.config import RunConfig
from diffubias.decoding import read_images
from diffubias.evaluation import GroupAccuracy, predict
from diffubias.generation import Generator
from diffubias.images import stack_images
from diffubias.prepared import (
    PreparedDataset,
    new_classifier,
    test_accuracy,
    train_config,
    train_evaluated,
)
from diffubias.progress import ProgressFn, part
from diffubias.scoring import score_samples
from diffubias.stages.detect import Detection, detect_bias
from diffubias.stages.generate import MemorySink, generate_images, prompts_to_generate
from diffubias.stages.prompts import filter_prompts
from diffubias.text_filter import Prompt
from diffubias.training import TrainResult, gce_loss, train_classifier


@dataclass(frozen=True)
class BaselineOptions:
    """Knobs of the baselines; everything they share with DiffuBias comes from `RunConfig`."""

    lff_ema: float = 0.7  # LfF's EMA factor for the per-sample losses
    jtt_epochs: int = 0  # T, epochs of JTT's ERM identification model; 0: config.biased_epochs
    # lambda, the error set's loss weight. JTT sweeps 20/50/100; 20 already makes 1 % conflicts
    # about a sixth of the weighted data, and larger values overfit the few conflicts here.
    jtt_upweight: float = 20.0
    # copies of each top-K candidate; 0: captions_per_image x images_per_prompt, the most images
    # DiffuBias generates from one candidate, so the two methods add data of the same size.
    oversample_copies: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.lff_ema < 1:
            raise ValueError(f"lff_ema must be in [0, 1), got {self.lff_ema}")
        if self.jtt_epochs < 0:
            raise ValueError(f"jtt_epochs must not be negative, got {self.jtt_epochs}")
        if not self.jtt_upweight >= 1:
            raise ValueError(f"jtt_upweight must be at least 1, got {self.jtt_upweight}")
        if self.oversample_copies < 0:
            raise ValueError(f"oversample_copies must not be negative, "
                             f"got {self.oversample_copies}")


@dataclass(frozen=True, eq=False)
class MethodResult:
    """One trained model of one method, with the metrics every method reports."""

    method: str
    training: TrainResult = field(repr=False)
    test: GroupAccuracy
    n_train: int  # samples per epoch: the training split plus any added copies or images
    seconds: float  # wall time of everything the method needed, shared stages included
    info: Mapping[str, object]  # JSON-able, method-specific figures
    # per training-split sample, the loss weight the method ended with (JTT: 1 or lambda; LfF:
    # the last relative-difficulty weights); None when every sample weighs the same
    weights: np.ndarray | None = field(default=None, repr=False)
    # dataset position of the real sample behind each added training sample (oversampling: the
    # repeated candidate; DiffuBias: the sample whose caption became the prompt)
    added_from: np.ndarray | None = field(default=None, repr=False)

    @property
    def model(self) -> nn.Module:
        return self.training.model

    def to_dict(self) -> dict:
        return {"method": self.method, "test": self.test.to_dict(),
                "valid_accuracy": self.training.valid_accuracy,
                "best_epoch": self.training.best_epoch, "n_train": self.n_train,
                "seconds": self.seconds, "info": dict(self.info)}


@dataclass(frozen=True, eq=False)
class ErrorSet:
    """JTT's identification stage: an ERM model trained for T epochs, the CE loss of every
    training sample under it (higher: more likely bias-conflicting), and its mistakes."""

    training: TrainResult = field(repr=False)
    positions: np.ndarray  # dataset positions of the train samples, in source order
    losses: np.ndarray  # float32, CE under the ERM model, aligned with positions
    errors: np.ndarray  # bool, misclassified by the ERM model, aligned with positions


@dataclass(frozen=True, eq=False)
class AugmentedTraining:
    """A model trained on the training split plus generated images."""

    training: TrainResult = field(repr=False)
    prompts: tuple[Prompt, ...]
    added_from: np.ndarray  # dataset position of each generated image's source sample
    generation_seconds: float


DEFAULT_OPTIONS = BaselineOptions()


@dataclass(eq=False)
class SharedStages:
    """Stages more than one method uses, each computed at most once for one dataset and config.

    `captioner` and `generator` default to the ones `config` names; tests, and hosts that have
    already loaded a model, pass their own. `candidates` (dataset positions) replaces the GCE
    detection's top-K where a person has reviewed it (the app: candidates not excluded), so the
    oversampling and DiffuBias baselines start from the same samples as the user's run.
    `seconds` holds each computed stage's wall time.
    """

    data: PreparedDataset
    config: RunConfig
    options: BaselineOptions = DEFAULT_OPTIONS
    captioner: Captioner | None = None
    generator: Generator | None = None
    candidates: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    _done: dict[object, object] = field(default_factory=dict, repr=False)

    def _once(self, key: object, name: str, compute: Callable[[], object]) -> object:
        if key not in self._done:
            start = time.perf_counter()
            self._done[key] = compute()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return self._done[key]

    def detection(self, progress: ProgressFn | None = None) -> Detection:
        """Stages 1-3 of DiffuBias: GCE model, CE scores, top-K candidates per class."""
        return self._once("detection", "detection",
                          lambda: detect_bias(self.data, self.config, progress=progress))

    def error_set(self, progress: ProgressFn | None = None) -> ErrorSet:
        return self._once("error_set", "error_set",
                          lambda: identify_errors(self.data, self.config,
                                                  epochs=self.jtt_epochs, progress=progress))

    @property
    def jtt_epochs(self) -> int:
        return self.options.jtt_epochs or self.config.biased_epochs

    def candidate_positions(self, progress: ProgressFn | None = None) -> np.ndarray:
        """The given `candidates`, else the GCE detection's top-K per class."""
        if self.candidates is not None:
            return np.asarray(self.candidates, dtype=np.int64)
        return self.detection(progress).candidates

    def candidate_info(self) -> dict:
        if self.candidates is not None:
            return {"n_candidates": len(self.candidates), "candidate_precision": None,
                    "candidates": "given"}
        return _detection_info(self.detection())

    def captions(self, progress: ProgressFn | None = None) -> tuple[Caption, ...]:
        candidates = self.candidate_positions(progress)  # outside, so it is timed on its own

        def compute() -> tuple[Caption, ...]:
            captioner = self.captioner or captioner_for(self.config)
            return tuple(captioner.caption(self.data.ds, candidates.tolist()))

        return self._once("captions", "captions", compute)

    def prompts(self, *, text_filter: bool, progress: ProgressFn | None = None
                ) -> tuple[Prompt, ...]:
        """The candidates' captions as prompts: those the text filter keeps, or all of them
        (each distinct caption of a sample once), capped as `max_images` requires."""
        cfg, ds = self.config, self.data.ds
        captions = self.captions(progress)
        result = filter_prompts(captions, ds.labels, cfg, num_classes=ds.num_classes)
        if text_filter:
            prompts = list(result.kept)
        else:
            order = {(c.position, " ".join(c.text.split()).lower()): i
                     for i, c in reversed(list(enumerate(captions)))}
            prompts = sorted((Prompt(p.text, p.label, p.source, p.matched_words)
                              for p in result.kept + result.dropped),
                             key=lambda p: order[(p.source, p.text.lower())])
        prompts = prompts_to_generate(prompts, cfg)
        if not prompts:
            raise ValueError("no prompts left to generate from: the text filter dropped every "
                             "caption; raise top_f or review the captions")
        return tuple(prompts)

    def augmented_training(self, prompts: tuple[Prompt, ...],
                           progress: ProgressFn | None = None) -> AugmentedTraining:
        """Images generated from `prompts`, and a CE model trained on train + those images.
        The same prompts give the same images and model, so they are computed once."""
        key = ("augmented", tuple((p.text, p.label, p.source) for p in prompts))
        return self._once(key, "generation_and_training",
                          lambda: self._train_augmented(prompts, progress))

    def _train_augmented(self, prompts: tuple[Prompt, ...],
                         progress: ProgressFn | None) -> AugmentedTraining:
        cfg, ds = self.config, self.data.ds
        start = time.perf_counter()
        generator = self.generator or generator_for(cfg, dataset_name=ds.name,
                                                    class_names=ds.class_names)
        sink = MemorySink()
        generate_images(generator, prompts, cfg, sink=sink)  # the app's and the CLI's images
        images = stack_images([image for _, image in sink.images], size=self.data.image_size)
        labels = torch.tensor([item.prompt.label for item, _ in sink.images], dtype=torch.int64)
        generation_seconds = time.perf_counter() - start
        training = train_evaluated(self.data, cfg, desc="DiffuBias", added=(images, labels),
                                   progress=progress)
        return AugmentedTraining(training, prompts,
                                 np.array([item.prompt.source for item, _ in sink.images],
                                          dtype=np.int64),
                                 generation_seconds)


def identify_errors(data: PreparedDataset, config: RunConfig, *, epochs: int,
                    progress: ProgressFn | None = None) -> ErrorSet:
    """Trains ERM (plain CE) for `epochs`, keeping the last epoch (as for the biased model, the
    best on an unbiased validation split would be the least biased), and finds its mistakes."""
    positions, train = data.split("train")
    _, valid = data.split("valid")
    device = config.resolved_device()
    training = train_classifier(new_classifier(data, config), train, valid=valid,
                                config=train_config(config, epochs=epochs, loss="ce",
                                                    selection="last"),
                                progress=part(progress, 0.0, 0.9), desc="JTT ERM (CE)")
    losses = score_samples(training.model, train, device=device)
    predictions, _ = predict(training.model, train, device=device)
    return ErrorSet(training, positions, losses, predictions != train.labels.numpy())


class LfFLoss:
    """LfF's step loss for `train_classifier`: on each batch it trains the biased model with GCE
    and returns the debiased model's CE weighted by relative difficulty
    W = L_B / (L_B + L_D + 1e-8), where each L is a sample's CE smoothed by an EMA over the
    epochs and divided by the largest smoothed loss of its class. Samples the biased model gets
    wrong (bias-conflicting ones) get W near 1, the ones it finds easy W near 0.
    `weights` holds the last W of every training sample."""

    def __init__(self, biased: nn.Module, labels: torch.Tensor, *, num_classes: int, q: float,
                 ema: float, lr: float, weight_decay: float = 0.0, device: str = "cpu") -> None:
        self.biased = biased.to(device)
        self.optimizer = torch.optim.Adam(biased.parameters(), lr=lr, weight_decay=weight_decay)
        self.labels = labels.cpu()
        self.num_classes, self.q, self.ema = num_classes, q, ema
        n = len(labels)
        self.loss_b = torch.zeros(n)  # EMA of the biased model's CE per sample
        self.loss_d = torch.zeros(n)
        self.seen = torch.zeros(n)  # 1 once a sample's EMA holds a value
        self.weights = torch.ones(n)

    def _smooth(self, ema: torch.Tensor, loss: torch.Tensor, positions: torch.Tensor) -> None:
        # the first value of a sample is taken as is; later ones are averaged in
        ema[positions] = self.ema * ema[positions] + (1 - self.ema * self.seen[positions]) * loss

    def _normalised(self, ema: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        class_max = torch.zeros(self.num_classes).scatter_reduce(0, self.labels, ema, "amax")
        return ema[positions] / class_max[self.labels[positions]].clamp_min(1e-8)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor,
                 inputs: torch.Tensor) -> torch.Tensor:
        self.biased.train()
        logits_b = self.biased(inputs)
        ce_d = F.cross_entropy(logits, labels, reduction="none")
        self._smooth(self.loss_b, F.cross_entropy(logits_b, labels, reduction="none")
                     .detach().cpu(), positions)
        self._smooth(self.loss_d, ce_d.detach().cpu(), positions)
        self.seen[positions] = 1.0
        loss_b = self._normalised(self.loss_b, positions)
        loss_d = self._normalised(self.loss_d, positions)
        weight = loss_b / (loss_b + loss_d + 1e-8)  # (B,)
        self.weights[positions] = weight
        # The two models share no parameters, so stepping the biased one here, from the same
        # pre-step logits LfF uses, equals LfF's joint backward of both losses.
        self.optimizer.zero_grad(set_to_none=True)
        gce_loss(logits_b, labels, self.q).mean().backward()
        self.optimizer.step()
        return ce_d * weight.to(ce_d.device)


# -- the methods ----------------------------------------------------------------------------------
# Each: (data, config, *, options, shared, progress) -> MethodResult. `shared` lets methods of one
# run reuse each other's stages; pass the same SharedStages to all of them.

def vanilla(data: PreparedDataset, config: RunConfig, *,
            options: BaselineOptions = DEFAULT_OPTIONS, shared: SharedStages | None = None,
            progress: ProgressFn | None = None) -> MethodResult:
    """ERM: plain cross entropy on the training split."""
    _check_shared(shared, data, config, options)
    training = train_evaluated(data, config, desc="vanilla", progress=progress)
    return _result("vanilla", data, config, training, seconds=training.seconds)


def lff(data: PreparedDataset, config: RunConfig, *, options: BaselineOptions = DEFAULT_OPTIONS,
        shared: SharedStages | None = None, progress: ProgressFn | None = None) -> MethodResult:
    """Learning from Failure: biased (GCE) and debiased (CE, relative-difficulty weights)
    models trained jointly; the debiased one is evaluated."""
    _check_shared(shared, data, config, options)
    _, train = data.split("train")
    weighting = LfFLoss(new_classifier(data, config), train.labels,
                        num_classes=data.ds.num_classes, q=config.gce_q, ema=options.lff_ema,
                        lr=config.lr, device=config.resolved_device())
    training = train_evaluated(data, config, desc="LfF", progress=progress, step_loss=weighting)
    return _result("lff", data, config, training, seconds=training.seconds,
                   info={"ema": options.lff_ema, "gce_q": config.gce_q},
                   weights=weighting.weights.numpy())


def jtt(data: PreparedDataset, config: RunConfig, *, options: BaselineOptions = DEFAULT_OPTIONS,
        shared: SharedStages | None = None, progress: ProgressFn | None = None) -> MethodResult:
    """Just Train Twice: ERM for T epochs, then retrain with its error set's loss weighted by
    lambda (the expectation of repeating each error lambda times, at the cost of one epoch)."""
    shared = _check_shared(shared, data, config, options)
    errors = shared.error_set(part(progress, 0.0, 0.3))
    weights = torch.ones(len(errors.errors))
    weights[torch.from_numpy(errors.errors)] = options.jtt_upweight
    training = train_evaluated(data, config, desc="JTT", progress=part(progress, 0.3, 1.0),
                         sample_weights=weights)
    return _result("jtt", data, config, training,
                   seconds=training.seconds + shared.seconds["error_set"],
                   info={"epochs_T": shared.jtt_epochs, "upweight": options.jtt_upweight,
                         "error_set_size": int(errors.errors.sum())},
                   weights=weights.numpy())


def oversample_top_k(data: PreparedDataset, config: RunConfig, *,
                     options: BaselineOptions = DEFAULT_OPTIONS, shared: SharedStages | None = None,
                     progress: ProgressFn | None = None) -> MethodResult:
    """DiffuBias's top-K candidates repeated instead of generated: what is left of DiffuBias
    without generation. Each candidate gets the same number of copies."""
    shared = _check_shared(shared, data, config, options)
    candidates = shared.candidate_positions(part(progress, 0.0, 0.3))
    copies = options.oversample_copies or config.captions_per_image * config.images_per_prompt
    if config.max_images:
        copies = max(1, min(copies, config.max_images // max(len(candidates), 1)))
    images = read_images(data.ds, candidates, size=data.image_size).repeat_interleave(copies, 0)
    labels = torch.from_numpy(data.ds.labels[candidates].astype(np.int64)).repeat_interleave(copies)
    training = train_evaluated(data, config, desc="oversampled top-K", added=(images, labels),
                               progress=part(progress, 0.3, 1.0))
    return _result("oversample-topk", data, config, training,
                   seconds=training.seconds + shared.seconds.get("detection", 0.0),
                   n_added=len(labels),
                   info={"copies_per_candidate": copies, **shared.candidate_info()},
                   added_from=np.repeat(candidates, copies))


def diffubias(data: PreparedDataset, config: RunConfig, *,
              options: BaselineOptions = DEFAULT_OPTIONS, shared: SharedStages | None = None,
              progress: ProgressFn | None = None) -> MethodResult:
    """The method: GCE detection, captions, text filter, generation, CE on train + generated."""
    return _diffubias("diffubias", data, config, options, shared, progress, text_filter=True)


def diffubias_no_filter(data: PreparedDataset, config: RunConfig, *,
                        options: BaselineOptions = DEFAULT_OPTIONS,
                        shared: SharedStages | None = None,
                        progress: ProgressFn | None = None) -> MethodResult:
    """The paper's ablation: every caption of every candidate becomes a prompt."""
    return _diffubias("diffubias-no-filter", data, config, options, shared, progress,
                      text_filter=False)


def _diffubias(name: str, data: PreparedDataset, config: RunConfig, options: BaselineOptions,
               shared: SharedStages | None, progress: ProgressFn | None, *,
               text_filter: bool) -> MethodResult:
    shared = _check_shared(shared, data, config, options)
    prompts = shared.prompts(text_filter=text_filter, progress=part(progress, 0.0, 0.3))
    augmented = shared.augmented_training(prompts, progress=part(progress, 0.3, 1.0))
    n_captions = len(shared.captions())
    seconds = (shared.seconds.get("detection", 0.0) + shared.seconds["captions"]
               + augmented.generation_seconds + augmented.training.seconds)
    return _result(name, data, config, augmented.training, seconds=seconds,
                   n_added=len(augmented.added_from),
                   info={"text_filter": text_filter, "n_captions": n_captions,
                         "n_prompts": len(prompts), "n_generated": len(augmented.added_from),
                         **shared.candidate_info()},
                   added_from=augmented.added_from)


MethodFn = Callable[..., MethodResult]


@dataclass(frozen=True)
class Method:
    name: str
    run: MethodFn = field(repr=False)
    summary: str
    generates: bool  # needs a captioner and a generator (DiffuBias variants)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("vanilla", vanilla, "ERM: plain cross entropy", False),
    Method("lff", lff, "LfF: GCE and CE models trained jointly, relative-difficulty weights",
           False),
    Method("jtt", jtt, "JTT: ERM for T epochs, retrain with its errors up-weighted", False),
    Method("oversample-topk", oversample_top_k, "the top-K candidates repeated, not generated",
           False),
    Method("diffubias", diffubias, "DiffuBias: images generated from the filtered captions",
           True),
    Method("diffubias-no-filter", diffubias_no_filter,
           "DiffuBias without the text filter: every caption becomes a prompt", True),
)}


def run_method(name: str, data: PreparedDataset, config: RunConfig, *,
               options: BaselineOptions | None = None, shared: SharedStages | None = None,
               progress: ProgressFn | None = None) -> MethodResult:
    """Runs one method of `METHODS` by name. Pass one `SharedStages` to every method of a run
    so the GCE detection, JTT's ERM model and generated images are computed once."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {tuple(METHODS)}")
    options = options or (shared.options if shared is not None else DEFAULT_OPTIONS)
    return METHODS[name].run(data, config, options=options, shared=shared, progress=progress)


def run_baselines(names: Sequence[str], data: PreparedDataset, config: RunConfig, *,
                  candidates: np.ndarray | None = None, progress: ProgressFn | None = None,
                  before_each: Callable[[str], None] | None = None) -> dict[str, MethodResult]:
    """Several methods of `METHODS` on one dataset, sharing their stages (one `SharedStages`,
    with `candidates` if given), each on an equal share of `progress`. `before_each(name)` runs
    before each method: a log line, or a check that the job was not stopped."""
    shared = SharedStages(data, config, candidates=candidates)
    results = {}
    for i, name in enumerate(names):
        if before_each is not None:
            before_each(name)
        span = part(progress, i / len(names), (i + 1) / len(names))
        if span is not None:
            span(0.0, f"baseline {name} ({i + 1} of {len(names)})")
        results[name] = run_method(name, data, config, shared=shared, progress=span)
    return results


# -- shared helpers -------------------------------------------------------------------------------

def _check_shared(shared: SharedStages | None, data: PreparedDataset, config: RunConfig,
                  options: BaselineOptions) -> SharedStages:
    if shared is None:
        return SharedStages(data, config, options)
    if shared.data is not data or shared.config != config or shared.options != options:
        raise ValueError("shared stages belong to another dataset, config or options; "
                         "make one SharedStages per (data, config, options)")
    return shared


def _result(method: str, data: PreparedDataset, config: RunConfig, training: TrainResult, *,
            seconds: float, n_added: int = 0, info: Mapping[str, object] | None = None,
            weights: np.ndarray | None = None,
            added_from: np.ndarray | None = None) -> MethodResult:
    n_train = len(data.split("train")[0]) + n_added
    return MethodResult(method, training, test_accuracy(data, training.model, config), n_train,
                        seconds, dict(info or {}), weights, added_from)


def _detection_info(detection: Detection) -> dict:
    return {"n_candidates": int(len(detection.selected)),
            "candidate_precision": detection.metrics.get("precision_at_k")}
