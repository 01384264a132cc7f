"""What every method of `diffubias.baselines` speaks: its options (`BaselineOptions`), its result
(`MethodResult`), and the stages more than one method uses, each computed at most once per
dataset and config (`SharedStages`: the GCE detection, JTT's error set, the candidates' captions
and prompts, and the model trained on images generated from them).

Every method trains through `diffubias.prepared.train_evaluated` (the run's seeded
initialisation, `debias_epochs` of Adam, checkpoint chosen on the validation split, never on
test), is evaluated by `test_accuracy`, and returns a `MethodResult` built by `method_result`;
each result still counts the time of every shared stage it used. It knows nothing of which
methods exist (the registry, `diffubias.baselines`), of files, plots, or where results are stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from diffubias.backends import captioner_for, generator_for
from diffubias.baselines.error_set import ErrorSet, identify_errors
from diffubias.captions import Caption, Captioner
from diffubias.config import RunConfig
from diffubias.decoding import read_images
from diffubias.evaluation import GroupAccuracy
from diffubias.generation import Generator
from diffubias.images import stack_images
from diffubias.prepared import PreparedDataset, test_accuracy, train_evaluated
from diffubias.progress import ProgressFn
from diffubias.shipped_models import oracle_note, resolve
from diffubias.stages.detect import Detection, detect_bias
from diffubias.stages.generate import MemorySink, capped, generate_images, prompts_to_generate
from diffubias.stages.prompts import filter_prompts
from diffubias.text_filter import Prompt
from diffubias.training import TrainResult

# the settings `SharedStages.with_settings` may change: they act after the captions
GENERATION_SETTINGS = ("prompt_template", "class_synonyms", "image_checks", "check_min_loss",
                       "check_max_hash_distance")

@dataclass(frozen=True)
class BaselineOptions:
    """Knobs of the baselines; everything they share with DiffuBias comes from `RunConfig`."""

    lff_ema: float = 0.7  # LfF's EMA factor for the per-sample losses
    jtt_epochs: int = 0  # T, epochs of JTT's ERM identification model; 0: config.biased_epochs
    # lambda, how many times each error appears in JTT's retraining set (it upsamples). JTT
    # sweeps 20/50/100; 20 already makes 1 % conflicts about a sixth of the data, and larger
    # values overfit the few conflicts here.
    jtt_upweight: int = 20
    # copies of each top-K candidate; 0: captions_per_image x images_per_prompt, the most images
    # DiffuBias generates from one candidate, so the two methods add data of the same size.
    oversample_copies: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.lff_ema < 1:
            raise ValueError(f"lff_ema must be in [0, 1), got {self.lff_ema}")
        if self.jtt_epochs < 0:
            raise ValueError(f"jtt_epochs must not be negative, got {self.jtt_epochs}")
        if not (self.jtt_upweight >= 1 and self.jtt_upweight == int(self.jtt_upweight)):
            raise ValueError(f"jtt_upweight (how many times JTT repeats each error) must be "
                             f"a whole number of at least 1, got {self.jtt_upweight}")
        if self.oversample_copies < 0:
            raise ValueError(f"oversample_copies must not be negative, "
                             f"got {self.oversample_copies}")


DEFAULT_OPTIONS = BaselineOptions()


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
class AugmentedTraining:
    """A model trained on the training split plus generated images."""

    training: TrainResult = field(repr=False)
    prompts: tuple[Prompt, ...]
    added_from: np.ndarray  # dataset position of each trained generated image's source sample
    generation_seconds: float  # generating, and checking where images failing checks are dropped
    n_generated: int  # images generated, before any were dropped by the checks


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

    def once(self, key: object, name: str, compute: Callable[[], object]) -> object:
        """`compute()` the first time `key` is asked for, its result after that; its wall time
        is added to `seconds[name]`. Methods use it for work another method repeats exactly
        (JTT's tuned variants train the same candidates)."""
        if key not in self._done:
            start = time.perf_counter()
            self._done[key] = compute()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return self._done[key]

    def detection(self, progress: ProgressFn | None = None) -> Detection:
        """Stages 1-3 of DiffuBias: GCE model, CE scores, top-K candidates per class."""
        return self.once("detection", "detection",
                          lambda: detect_bias(self.data, self.config, progress=progress))

    def with_backends(self, *, captioner: str, generator: str) -> SharedStages:
        """These stages with another captioner and generator (made once): the detection, which
        no backend touches, is shared; captions, prompts and generated images are their own."""
        def make() -> SharedStages:
            config = replace(self.config, captioner=captioner, generator=generator)
            other = SharedStages(self.data, config, self.options, candidates=self.candidates)
            if self.candidates is None:
                other._done["detection"] = self.detection()
                other.seconds["detection"] = self.seconds["detection"]
            return other

        key = ("backends", captioner, generator)
        if key not in self._done:
            self._done[key] = make()
        return self._done[key]

    def with_settings(self, **settings: object) -> SharedStages:
        """These stages under other generation-side settings (`GENERATION_SETTINGS`: the
        prompt template, the image checks), sharing everything computed so far: detection and
        captions, which these settings do not touch, and generated images, which are keyed by
        their final prompts. Training is keyed by the settings, so nothing is reused wrongly."""
        unknown = set(settings) - set(GENERATION_SETTINGS)
        if unknown:
            raise ValueError(f"with_settings takes only {GENERATION_SETTINGS}, "
                             f"not {sorted(unknown)}")
        return SharedStages(self.data, self.config.with_overrides(**settings), self.options,
                            captioner=self.captioner, generator=self.generator,
                            candidates=self.candidates, seconds=self.seconds, _done=self._done)

    def backend_names(self) -> dict:
        """The captioner and generator these stages use (an injected one's own name, else the
        config's with `auto` resolved), and whether either is an oracle: recorded with every
        generative method's result."""
        dataset = self.data.ds.name
        names = {kind: resolve(getattr(self.config, kind), dataset, kind=kind)
                 for kind in ("captioner", "generator")}
        if self.captioner is not None:
            names["captioner"] = self.captioner.backend
        if self.generator is not None:
            names["generator"] = self.generator.describe().get("model") or self.generator.backend
        return {**names, "oracle": any(oracle_note(n, dataset) for n in names.values())}

    def error_set(self, progress: ProgressFn | None = None) -> ErrorSet:
        return self.once("error_set", "error_set",
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
            captioner = self.captioner or captioner_for(self.config,
                                                        dataset_name=self.data.ds.name)
            return tuple(captioner.caption(self.data.ds, candidates.tolist()))

        return self.once("captions", "captions", compute)

    def prompts(self, *, text_filter: bool, progress: ProgressFn | None = None
                ) -> tuple[Prompt, ...]:
        """The candidates' captions as prompts: those the text filter keeps, or all of them
        (each distinct caption of a sample once), capped as `max_images` requires; not yet
        anchored to their class (generation does that, `prompts_to_generate`)."""
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
        prompts = capped(prompts, cfg)
        if not prompts:
            raise ValueError("no prompts left to generate from: the text filter dropped every "
                             "caption; raise top_f or review the captions")
        return tuple(prompts)

    def augmented_training(self, prompts: tuple[Prompt, ...],
                           progress: ProgressFn | None = None) -> AugmentedTraining:
        """Images generated from `prompts`, and a CE model trained on train + those images (all
        of them, or those passing the checks under `image_checks` 'drop'). The same prompts give
        the same images, and the same images and checks the same model: each is computed once."""
        checks = self.config.image_checks == "drop"
        key = ("augmented", self._final_key(prompts),
               checks and (self.config.check_min_loss, self.config.check_max_hash_distance))
        return self.once(key, "generation_and_training",
                          lambda: self._train_augmented(prompts, progress))

    def generated(self, prompts: tuple[Prompt, ...]) -> tuple[list, float]:
        """The (WorkItem, image) pairs generated from `prompts` (anchored and capped by
        `prompts_to_generate`, like the app's and the CLI's) and the seconds it took."""
        def compute() -> tuple[list, float]:
            start = time.perf_counter()
            ds = self.data.ds
            generator = self.generator or generator_for(self.config, dataset_name=ds.name,
                                                        class_names=ds.class_names)
            sink = MemorySink()
            generate_images(generator, prompts, self.config, class_names=ds.class_names,
                            sink=sink)
            return sink.images, time.perf_counter() - start

        return self.once(("generated", self._final_key(prompts)), "generation", compute)

    def final_prompts(self, prompts: Sequence[Prompt]) -> list[Prompt]:
        """`prompts` as this run's generator gets them: capped and anchored to their class."""
        return prompts_to_generate(prompts, self.config, class_names=self.data.ds.class_names)

    def _final_key(self, prompts: Sequence[Prompt]) -> tuple:
        return tuple((p.text, p.label, p.source) for p in self.final_prompts(prompts))

    def _train_augmented(self, prompts: tuple[Prompt, ...],
                         progress: ProgressFn | None) -> AugmentedTraining:
        cfg = self.config
        made, generation_seconds = self.generated(prompts)
        n_generated = len(made)
        if cfg.image_checks == "drop":  # as the CLI and the app do: failing images left out
            start = time.perf_counter()
            made = [pair for pair, passed in zip(made, self._passed_checks(made), strict=True)
                    if passed]
            generation_seconds += time.perf_counter() - start
            if not made:
                raise ValueError("every generated image failed the checks (image_checks "
                                 "'drop'): review the prompts or the generator, or use "
                                 "'propose'")
        images = stack_images([image for _, image in made], size=self.data.image_size)
        labels = torch.tensor([item.prompt.label for item, _ in made], dtype=torch.int64)
        training = train_evaluated(self.data, cfg, desc="DiffuBias", added=(images, labels),
                                   progress=progress)
        return AugmentedTraining(training, prompts,
                                 np.array([item.prompt.source for item, _ in made],
                                          dtype=np.int64),
                                 generation_seconds, n_generated)

    def _passed_checks(self, made: list) -> list[bool]:
        """Whether each (item, image) passes the verify stage against this run's detection."""
        from diffubias.stages.verify import check_generated

        detection = self.detection()
        result = check_generated([image for _, image in made],
                                 [item.prompt.label for item, _ in made], data=self.data,
                                 biased_model=detection.training.model,
                                 train_losses=detection.losses, train_labels=detection.labels,
                                 is_candidate=detection.is_candidate, config=self.config)
        return [check.passed for check in result.checks]


def repeated_samples(data: PreparedDataset, positions: np.ndarray, copies: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images at dataset `positions`, each repeated `copies` times in a row, and
    their labels: what oversampling and JTT's upsampling add to an epoch."""
    images = read_images(data.ds, positions, size=data.image_size)
    labels = torch.from_numpy(data.ds.labels[positions].astype(np.int64))
    return images.repeat_interleave(copies, 0), labels.repeat_interleave(copies)


# -- what every method calls -----------------------------------------------------------------------

def shared_stages_for(shared: SharedStages | None, data: PreparedDataset, config: RunConfig,
                      options: BaselineOptions) -> SharedStages:
    """`shared`, checked to belong to this (data, config, options); a fresh one if None."""
    if shared is None:
        return SharedStages(data, config, options)
    if shared.data is not data or shared.config != config or shared.options != options:
        raise ValueError("shared stages belong to another dataset, config or options; "
                         "make one SharedStages per (data, config, options)")
    return shared


def method_result(method: str, data: PreparedDataset, config: RunConfig, training: TrainResult,
                  *, seconds: float, n_added: int = 0, info: Mapping[str, object] | None = None,
                  weights: np.ndarray | None = None,
                  added_from: np.ndarray | None = None) -> MethodResult:
    """`training`'s model evaluated on the test split, as `method`'s result."""
    n_train = len(data.split("train")[0]) + n_added
    return MethodResult(method, training, test_accuracy(data, training.model, config), n_train,
                        seconds, dict(info or {}), weights, added_from)


def _detection_info(detection: Detection) -> dict:
    return {"n_candidates": int(len(detection.selected)),
            "candidate_precision": detection.metrics.get("precision_at_k")}
