"""An independent judge: a two-headed image classifier (class, attribute) for a built-in domain.

Benchmarks ask it what a generated image shows: does the "red three" look like a three, and is
it red? It is the project's small CNN (`diffubias.models`) with one output per class and one per
attribute, read as two softmax heads, trained on the held-out judge corpus only (sources no
shipped model trains on, never model outputs), and measured on the check corpus (sources it never
saw either). Knows: its two heads, training, saving. Does not know: captioners, generators.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffubias.models import Classifier, ModelSpec, build_classifier
from diffubias.zoo.augment import random_shift
from diffubias.zoo.corpus import Corpus
from diffubias.zoo.loop import BatchOrder, LoopResult, train_steps

WEIGHTS_NAME = "judge.safetensors"


@dataclass(frozen=True)
class JudgeSpec:
    width: int = 32  # the small CNN's first-stage channels
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    per_cell: int = 30  # judge corpus size: classes x attributes x per_cell images
    check_per_cell: int = 10  # check corpus (the judge's own test) size per cell

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class JudgeScores:
    class_probs: np.ndarray  # float32 (N, classes)
    attribute_probs: np.ndarray  # float32 (N, attributes)

    @property
    def classes(self) -> np.ndarray:
        return self.class_probs.argmax(1)

    @property
    def attributes(self) -> np.ndarray:
        return self.attribute_probs.argmax(1)

    def agreement(self, labels: np.ndarray, attributes: np.ndarray) -> dict[str, float]:
        """Shares of images the judge sees as the intended class, attribute, and both (e.g. of
        generated images and the class and attribute their prompts asked for)."""
        right_class = self.classes == np.asarray(labels)
        right_attribute = self.attributes == np.asarray(attributes)
        return {"class": float(right_class.mean()), "attribute": float(right_attribute.mean()),
                "both": float((right_class & right_attribute).mean())}


@dataclass(frozen=True, eq=False)
class Judge:
    classifier: Classifier  # outputs: class logits, then attribute logits
    class_names: tuple[str, ...]
    attribute_names: tuple[str, ...]

    @property
    def image_size(self) -> int:
        return self.classifier.spec.image_size

    def logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits (B, C), attribute logits (B, A)) for float (B, 3, S, S) in [0, 1]."""
        out = self.classifier(images)
        return out[:, :len(self.class_names)], out[:, len(self.class_names):]

    @torch.inference_mode()
    def score(self, images: np.ndarray | torch.Tensor, *, batch_size: int = 256) -> JudgeScores:
        """Both heads' probabilities for uint8 (N, 3, S, S) images at the judge's size."""
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] != self.image_size:
            raise ValueError(f"images must be (N, 3, {self.image_size}, {self.image_size}); got "
                             f"{tuple(images.shape)}")
        self.classifier.eval()
        parts = [self.logits(images[i:i + batch_size].float() / 255)
                 for i in range(0, len(images), batch_size)]
        return JudgeScores(torch.cat([c for c, _ in parts]).softmax(1).numpy(),
                           torch.cat([a for _, a in parts]).softmax(1).numpy())


@dataclass(frozen=True)
class JudgeQuality:
    images: int
    class_accuracy: float
    attribute_accuracy: float

    def summary(self) -> str:
        return (f"class {self.class_accuracy:.1%}, attribute {self.attribute_accuracy:.1%} "
                f"on {self.images} check-corpus images")


def judge_quality(judge: Judge, corpus: Corpus) -> JudgeQuality:
    """Accuracy of both heads on `corpus` (use the check corpus: images the judge never saw)."""
    scores = judge.score(corpus.images)
    return JudgeQuality(len(corpus), float((scores.classes == corpus.labels).mean()),
                        float((scores.attributes == corpus.attributes).mean()))


def train_judge(corpus: Corpus, checkpoint_dir: Path, *, spec: JudgeSpec, steps: int, seed: int,
                checkpoint_every: int = 250, show_progress: bool = True,
                on_checkpoint: Callable[[int], None] | None = None) -> tuple[Judge, LoopResult]:
    """A judge trained `steps` steps on `corpus` (the judge corpus), resuming from
    `checkpoint_dir`, with random shifts of a few pixels (`diffubias.zoo.augment`)."""
    num_classes = len(corpus.class_names)
    judge = Judge(build_classifier(num_classes=num_classes + len(corpus.attribute_names),
                                   image_size=corpus.image_size, arch="small-cnn",
                                   width=spec.width, seed=seed),
                  corpus.class_names, corpus.attribute_names)
    images = torch.from_numpy(corpus.images)
    labels, attributes = torch.from_numpy(corpus.labels), torch.from_numpy(corpus.attributes)
    batches = BatchOrder(len(corpus), spec.batch_size, seed)

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.from_numpy(batches.at(step))
        x = random_shift(images[idx], np.random.default_rng([seed, 2, step])).float() / 255
        class_logits, attribute_logits = judge.logits(x)
        return (F.cross_entropy(class_logits, labels[idx])
                + F.cross_entropy(attribute_logits, attributes[idx]))

    optimizer = torch.optim.AdamW(judge.classifier.parameters(), lr=spec.learning_rate,
                                  weight_decay=spec.weight_decay)
    fingerprint = {"model": "judge", "domain": corpus.domain, "seed": seed,
                   "corpus_seed": corpus.seed, "corpus_size": len(corpus), **spec.to_dict()}
    loop = train_steps(model=judge.classifier, optimizer=optimizer, loss_at=loss_at, steps=steps,
                       checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                       fingerprint=fingerprint, learning_rate=spec.learning_rate,
                       warmup=min(spec.warmup, steps // 10), desc=f"judge {corpus.domain}",
                       show_progress=show_progress, on_checkpoint=on_checkpoint)
    return judge, loop


def save_judge(judge: Judge, path: Path) -> Path:
    """Weights as safetensors, with the spec and both heads' names in the header, atomically."""
    from safetensors.torch import save_file

    from diffubias.files import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in judge.classifier.state_dict().items()}
    metadata = {"spec": json.dumps(judge.classifier.spec.to_dict()),
                "class_names": json.dumps(judge.class_names),
                "attribute_names": json.dumps(judge.attribute_names)}
    with atomic_path(path) as temp:
        save_file(state, temp, metadata=metadata)
    return Path(path)


def load_judge(path: Path) -> Judge:
    """A judge written by `save_judge` (a folder holding judge.safetensors, or the file)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise ValueError(f"no judge at {path}; expected a file written by save_judge")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    spec = ModelSpec(**json.loads(meta["spec"]))
    classifier = build_classifier(num_classes=spec.num_classes, image_size=spec.image_size,
                                  arch=spec.arch, width=spec.width)
    classifier.load_state_dict(load_file(str(path)))
    return Judge(classifier.eval(), tuple(json.loads(meta["class_names"])),
                 tuple(json.loads(meta["attribute_names"])))



# ---------------------------------------------------------------------------------------------
# The recipe behind `python -m diffubias.zoo train judge`

DEFAULT_STEPS = 1500
# 64 px scenes: 36 cells, so twice the images per cell for a corpus the size of the digits', and
# width 16 (four stages up to 128 channels, ~1.2 MB) to stay small enough to ship
DOMAIN_SPECS = {"colored-digits": JudgeSpec(),
                "shape-scenes": JudgeSpec(width=16, per_cell=60)}


def train_to_folder(domain: str, out: Path, *, steps: int | None = None, seed: int = 0,
                    checkpoint_every: int = 250, show_progress: bool = True,
                    log: Callable[[str], None] = print) -> Path:
    """Train the judge of built-in `domain` into `out` (resuming from out/checkpoint/):
    judge.safetensors and a model card with its accuracy on the check corpus."""
    from diffubias.zoo.card import ModelCard, describe_corpus
    from diffubias.zoo.corpus import make_corpus

    if domain not in DOMAIN_SPECS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAIN_SPECS)}")
    spec, steps, out = DOMAIN_SPECS[domain], steps or DEFAULT_STEPS, Path(out)
    corpus = make_corpus(domain, role="judge", per_cell=spec.per_cell, seed=seed)
    check = make_corpus(domain, role="check", per_cell=spec.check_per_cell, seed=seed)
    judge, loop = train_judge(corpus, out / "checkpoint", spec=spec, steps=steps, seed=seed,
                              checkpoint_every=checkpoint_every, show_progress=show_progress)
    save_judge(judge, out / WEIGHTS_NAME)
    quality = judge_quality(judge, check)
    log(f"judge quality: {quality.summary()}")
    ModelCard(
        title=f"{domain} judge (two-headed small CNN)",
        summary=("An independent classifier with a class head and an attribute head, for "
                 "benchmarks: it scores what generated images show. Trained only on the "
                 "held-out judge corpus, never on model outputs or the audited dataset."),
        usage=("from diffubias.zoo.judge import load_judge\n\n"
               f"judge = load_judge({str(out)!r})\n"
               "scores = judge.score(images)  # uint8 (N, 3, S, S) -> class and attribute probs"),
        corpus=describe_corpus(corpus, per_cell=spec.per_cell),
        architecture={"classifier": judge.classifier.spec.to_dict(), **spec.to_dict()},
        steps=loop.steps, wall_seconds=loop.wall_seconds,
        hardware=f"CPU, {torch.get_num_threads()} torch thread(s)",
        quality=[f"{quality.summary()} (`make_corpus({domain!r}, role='check', "
                 f"per_cell={spec.check_per_cell}, seed={seed})`: sources neither the judge "
                 "nor the captioner saw)"],
        retrain=["python", "-m", "diffubias.zoo", "train", "judge", "--domain", domain,
                 "--out", str(out), "--steps", str(steps), "--seed", str(seed)],
    ).write(out)
    return out
