"""The run configuration: every knob of a DiffuBias run in one frozen dataclass.

It is written to `config.json` in the run folder, so single-stage commands re-read exactly what
the run used. It knows nothing of how stages use it.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from diffubias.anchoring import DEFAULT_TEMPLATE, check_template, parse_synonyms
from diffubias.baselines import baseline_names
from diffubias.shipped_models import current_name

# Names a setting may take, kept here as plain tuples so that checking a config imports no torch.
# baselines: what the `debias` stage can train next to vanilla and DiffuBias, as registered in
# diffubias.baselines when this module was imported; validation asks the registry again, so a
# method registered later is accepted too
BASELINES = baseline_names()
ARCHITECTURES = ("auto", "small-cnn", "resnet18")  # diffubias.models builds each
CAM_METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam",
               "eigencam")  # diffubias.gradcam maps each to a pytorch-grad-cam class
# what the explain stage can explain (diffubias.stages.explain.cam_positions), with its label
CAM_SAMPLE_SETS = {
    "conflicting": "bias-conflicting test samples",
    "all": "random test samples",
    "candidates": "top-K candidates (train)",
}
# what happens to generated images that fail a check (diffubias.stages.verify): no checks; checked
# and proposed for rejection to the person reviewing; checked and left out of training
IMAGE_CHECKS = ("off", "propose", "drop")
# the model the debiased one is compared with in Grad-CAM: the vanilla model, trained on the same
# data with the same schedule (the fair "before"), or the GCE model built to be biased
CAM_BEFORE = ("vanilla", "biased")
# how the training samples are ranked (diffubias.rankers implements each): the GCE biased model
# (the method's), early-stopped ERM (JTT's identification model), or a bias-amplified committee
# (BiasEnsemble: the samples a committee of GCE models does not fit are left out of the scoring
# model's training)
RANKERS = ("gce", "erm-early", "committee")
# which epoch of the scoring model ranks: the last, or the one whose train accuracy most exceeds
# its validation accuracy (fits the training set, generalises worst: the most biased one when the
# validation split is less biased than train; no bias label is read)
BIASED_SELECTIONS = ("last", "train-valid-gap")
CHOICES = {"arch": ARCHITECTURES, "cam_method": CAM_METHODS,
           "image_checks": IMAGE_CHECKS, "cam_before": CAM_BEFORE, "ranker": RANKERS,
           "biased_selection": BIASED_SELECTIONS}  # field: the names it may take


# Caps on the settings: past them a run would never finish or would exhaust memory, so the
# value is a typing mistake. Counts are per run; sizes in pixels.
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 4096
MAX_IMAGE_SIZE = 1024  # the classifier input; datasets are stretched to it
MAX_WIDTH = 512  # small CNN channels; 16 is the default, ResNet-18 ends at 512
MAX_IMAGES_PER_PROMPT = 64  # the paper uses a handful per caption
MAX_CAPTIONS_PER_IMAGE = 20
MAX_GENERATED_IMAGES = 1_000_000
MAX_CAM_SAMPLES = 100_000
MAX_GEN_STEPS = 1000
MAX_GEN_SIDE = 4096
MAX_COMMITTEE = 32  # models of the committee ranker, each as costly as the biased model
MAX_TOP_K = 1_000_000  # a larger count per class still takes each class whole
MAX_TEXT_CHARS = 1000  # negative prompt, caption instruction (diffubias.text_safety's prompt cap)
MAX_SEED = 2**32 - 1  # numpy and torch both take it

INT_RANGES = {  # field: (lowest, highest)
    "seed": (0, MAX_SEED),
    "image_size": (0, MAX_IMAGE_SIZE),
    "width": (1, MAX_WIDTH),
    "biased_width": (1, MAX_WIDTH),
    "batch_size": (1, MAX_BATCH_SIZE),
    "biased_epochs": (1, MAX_EPOCHS),
    "debias_epochs": (1, MAX_EPOCHS),
    "committee_size": (2, MAX_COMMITTEE),
    "captions_per_image": (1, MAX_CAPTIONS_PER_IMAGE),
    "top_f": (0, 100_000),
    "images_per_prompt": (1, MAX_IMAGES_PER_PROMPT),
    "max_images": (0, MAX_GENERATED_IMAGES),
    "cam_samples": (1, MAX_CAM_SAMPLES),
    "cam_sheet_rows": (0, 1000),
    "caption_batch_size": (1, MAX_BATCH_SIZE),
    "caption_max_new_tokens": (1, 4096),
    "keywords_top_n": (0, 10_000),
    "gen_steps": (0, MAX_GEN_STEPS),
    "gen_batch_size": (0, MAX_BATCH_SIZE),
    "gen_width": (0, MAX_GEN_SIDE),
    "gen_height": (0, MAX_GEN_SIDE),
    "check_max_hash_distance": (0, 192),  # bits of the 3 x 64-bit perceptual hash
}
FLOAT_RANGES = {  # field: (low, high, low included); high is always included
    "lr": (0.0, 10.0, False),
    "gce_q": (0.0, 1.0, False),
    "guidance_scale": (0.0, 100.0, True),
    "check_min_loss": (0.0, 100.0, True),
}


def _as_int(value) -> int | None:
    """`value` as an int if it is a whole number (an int, or a float such as 3.0); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _as_float(value) -> float | None:
    """`value` as a finite float; None for NaN, infinities, booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _words(value) -> tuple[str, ...] | None:
    """Words from a comma- or line-separated string (a form field) or a list or tuple of
    strings, stripped and lower-cased, empty ones dropped; None for anything else."""
    if isinstance(value, str):
        value = value.replace("\n", ",").split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(w, str) for w in value):
        return None
    return tuple(w.strip().lower() for w in value if w.strip())


def default_cache_dir() -> Path:
    """Where built-in datasets and extracted uploads are cached ($DIFFUBIAS_CACHE to change)."""
    return Path(os.environ.get("DIFFUBIAS_CACHE", Path.home() / ".cache" / "diffubias"))


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "builtin:colored-digits"
    conflict_ratio: float = 0.01  # built-in datasets only: share of bias-conflicting train samples
    seed: int = 0
    cache_dir: str = ""  # empty: default_cache_dir()
    device: str = "auto"  # auto: cuda when available, else cpu
    # classifier
    image_size: int = 0  # 0: the dataset's own size (capped at 224)
    arch: str = "auto"  # small CNN up to 64 px, ResNet-18 above
    width: int = 16  # small CNN: channels of the first stage, doubled per stage
    init_weights: str = ""  # optional local ResNet-18 weights file
    batch_size: int = 64
    lr: float = 2e-3
    # stage 2: biased model; ranker: gce, erm-early or committee (diffubias.rankers).
    # biased_epochs: epochs of the model that scores, whichever ranker (and of each committee
    # member); with biased_selection train-valid-gap, the most it may train.
    # biased_width: the small CNN's width for the model that scores (ResNet-18 has none): a
    # narrow model has room for the shortcut and little for the classes, as the weak learners
    # of Sanh et al. (ICLR 2021) and Clark et al. (EMNLP 2020). GCE at width 4 for 6 epochs
    # ranks best on average over every built-in severity, and fastest (bench/detection.py,
    # 5 seeds; docs/guide/metrics.md#is-the-biased-model-biased) (issue 17)
    ranker: str = "gce"
    biased_epochs: int = 6
    biased_width: int = 4
    gce_q: float = 0.7
    biased_selection: str = "last"
    committee_size: int = 5  # BiasEnsemble's: 5 models, a sample dropped unless 3 fit it
    # stage 3: candidates; a number >= 1 is a count per class, in (0, 1) a fraction of the class
    top_k: float = 0.02
    # stages 4-5: captions and text filter
    # auto: builtin-blip (the captioner this project pretrains, models/) on the built-in
    # datasets, else metadata (the dataset's own captions; an oracle on the built-ins); or a
    # model id / folder (diffubias.shipped_models.resolve)
    captioner: str = "auto"
    captions_per_image: int = 3
    top_f: int = 0  # 0: 2 x number of classes, as in the paper
    extra_stop_words: tuple[str, ...] = ()
    # a prompt that does not name its class gets it through this template before generation
    # ("" turns it off); class_synonyms: other words that name a class, "three: 3; circle: ring"
    # (diffubias.anchoring)
    prompt_template: str = DEFAULT_TEMPLATE
    class_synonyms: str = ""
    # stage 6: generation
    # auto: builtin-ldm (the project's own latent diffusion model, models/) on the built-in
    # datasets, else the user must choose; oracle-renderer: the built-ins' own generator (an
    # upper bound); or a diffusers id / folder
    generator: str = "auto"
    images_per_prompt: int = 6
    max_images: int = 0  # 0: no cap
    # stage 6b: checks of every generated image (diffubias.stages.verify): does its caption name
    # its class, is the biased model's loss on it at least check_min_loss (0: at least the lowest
    # loss among its class's top-K candidates), is it further than check_max_hash_distance bits
    # from every training image. image_checks: off, propose (a person decides) or drop (left out)
    image_checks: str = "propose"
    check_min_loss: float = 0.0
    check_max_hash_distance: int = 8
    # stage 7: debiased and vanilla models
    debias_epochs: int = 12
    # baselines trained and reported next to vanilla and DiffuBias (names of the methods
    # diffubias.baselines registers as baselines: lff, jtt, oversample-topk, ...)
    baselines: tuple[str, ...] = ()
    # stage 9: Grad-CAM
    cam_method: str = "gradcam"
    cam_before: str = "vanilla"  # compared with the debiased model: vanilla or biased
    cam_samples: int = 200  # test samples whose CAM mass is measured
    cam_sheet_rows: int = 12
    # model captioners, diffusion generation, bias keywords (the model ids go in `captioner` and
    # `generator`); validated where they are used (diffubias.hf_captioners, diffubias.diffusion)
    caption_instruction: str = "Describe this image in one sentence."  # VLM captioners only
    caption_batch_size: int = 16  # images per generate() call
    caption_max_new_tokens: int = 40
    keywords_top_n: int = 10  # bias keywords per class; 0: no keywords, no aligned captions
    gen_steps: int = 0  # 0: auto, 25 on Stable Diffusion (DPM-Solver), 15 on small models such
    # as builtin-ldm (diffubias.diffusion.auto_settings); SD 3.x's own scheduler wants ~28
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    gen_batch_size: int = 0  # images per pipeline call, 0: auto (128 for small models such as
    # builtin-ldm, 8 for Stable Diffusion); halved on CUDA out-of-memory
    gen_width: int = 0  # 0: the pipeline's default size
    gen_height: int = 0
    model_dtype: str = "auto"  # auto: bf16 on CUDA (fp16 without bf16 support), fp32 on CPU
    offload: str = "none"  # none, model (enable_model_cpu_offload) or sequential; CUDA only
    compile_mode: str = ""  # "": no torch.compile; else a mode, e.g. default, max-autotune

    def __post_init__(self) -> None:
        """Refuse settings no run can use, naming the setting, the allowed range and the value.

        Whole-number floats (3.0 from a form) become ints; NaN, infinities, booleans and
        fractions where a count is expected are refused. The caps are the named constants above.
        Word lists (extra_stop_words, baselines) may come as a comma- or line-separated string.
        """
        for name, (low, high) in INT_RANGES.items():
            value = getattr(self, name)
            whole = _as_int(value)
            if whole is None or not low <= whole <= high:
                raise ValueError(f"{name} must be an integer from {low:,} to {high:,}; "
                                 f"got {value!r}")
            object.__setattr__(self, name, whole)
        for name in ("gen_width", "gen_height"):
            if getattr(self, name) % 8:
                raise ValueError(f"{name} must be a multiple of 8 (0: the model's default); "
                                 f"got {getattr(self, name)}")
        for name, (low, high, closed_low) in FLOAT_RANGES.items():
            value = getattr(self, name)
            number = _as_float(value)
            if number is None or not (low <= number if closed_low else low < number) \
                    or not number <= high:
                low_bracket = "[" if closed_low else "("
                raise ValueError(f"{name} must be a number in {low_bracket}{low:g}, {high:g}]; "
                                 f"got {value!r}")
        if not 0 < self.conflict_ratio < 1:  # open at both ends
            raise ValueError(f"conflict_ratio must be in (0, 1), got {self.conflict_ratio}")
        self._check_top_k()
        for name in ("captioner", "generator"):  # the model behind a name is checked on loading
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must name a backend, a model id or a local folder; "
                                 f"got {value!r}")
            object.__setattr__(self, name, current_name(value))
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; "
                                 f"got {getattr(self, name)!r}")
        for name in ("extra_stop_words", "baselines"):
            words = _words(getattr(self, name))
            if words is None:
                raise ValueError(f"{name} must be words separated by commas; "
                                 f"got {getattr(self, name)!r}")
            object.__setattr__(self, name, words)
        for name in ("negative_prompt", "caption_instruction"):
            if len(getattr(self, name)) > MAX_TEXT_CHARS:
                raise ValueError(f"{name} is {len(getattr(self, name)):,} characters long; keep "
                                 f"it under {MAX_TEXT_CHARS:,}")
        object.__setattr__(self, "prompt_template", check_template(self.prompt_template))
        parse_synonyms(self.class_synonyms)  # the classes are checked against the dataset's
        known = baseline_names()
        unknown = [b for b in self.baselines if b not in known]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; choose from {', '.join(known)}")

    def _check_top_k(self) -> None:
        # a count larger than a class is fine: the class is taken whole (scoring.k_for_classes)
        k = _as_float(self.top_k)
        if k is None or not 0 < k <= MAX_TOP_K or (k >= 1 and not k.is_integer()):
            raise ValueError(
                "top_k must be a fraction of each class in (0, 1) or a whole number of samples "
                f"per class from 1 to {MAX_TOP_K:,}; got {self.top_k!r}")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["extra_stop_words"] = list(self.extra_stop_words)
        d["baselines"] = list(self.baselines)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        d = dict(d)
        for name in ("extra_stop_words", "baselines"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)

    def save(self, path: Path) -> None:
        from diffubias.files import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def with_changes(self, changes: Mapping[str, Any]) -> RunConfig:
        """This config with `changes` ({field name: value}) applied and checked. A None value
        keeps the current setting (an empty form field); a name that is not a field is refused.
        """
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown settings {', '.join(map(repr, unknown))}: not fields of "
                             "the run configuration")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def with_overrides(self, **changes) -> RunConfig:
        return self.with_changes(changes)
