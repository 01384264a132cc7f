"""What `python -m diffubias.zoo train <model>` does for each model: build the corpus, train
(resuming from DIR/checkpoint/), save the model into DIR, measure it on held-out images and write
its model card.

Each recipe takes `(domain, out, *, steps, seed, checkpoint_every, show_progress, log)` and returns
the folder it wrote. Knows: which corpora, settings and measurements make each model's card.
Does not know: argument parsing (`zoo.cli`), the models' internals.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffubias.files import atomic_write_text
from diffubias.zoo.card import ModelCard, describe_corpus
from diffubias.zoo.corpus import make_corpus

Log = Callable[[str], None]

CAPTIONER_STEPS = 4000  # colored-digits: class naming on held-out digits passes 90 % near 2,250
JUDGE_STEPS = 1500
EVAL_PER_CELL = {"colored-digits": 2, "shape-scenes": 6}  # 200 / 216 held-out judge-corpus images
QUICK_EVAL_IMAGES = 100  # at each checkpoint: enough to see the trend, a few seconds to caption


def train_captioner_folder(domain: str, out: Path, *, steps: int | None = None, seed: int = 0,
                           checkpoint_every: int = 250, show_progress: bool = True,
                           log: Log = print) -> Path:
    """The small BLIP captioner of built-in `domain` in `out` (save_pretrained) + its card."""
    from diffubias.zoo.captioner import (DOMAIN_SPECS, as_captioner, save_captioner,
                                         train_captioner)
    from diffubias.zoo.quality import caption_quality

    _check_domain(domain, DOMAIN_SPECS)
    spec, steps, out = DOMAIN_SPECS[domain], steps or CAPTIONER_STEPS, Path(out)
    corpus = make_corpus(domain, role="pretrain", per_cell=spec.per_cell, seed=seed)
    held_out = make_corpus(domain, role="judge", per_cell=EVAL_PER_CELL[domain], seed=seed)
    history = out / "checkpoint" / "quality.jsonl"

    def check(step: int, model: Any, processor: Any) -> None:
        quality = caption_quality(as_captioner(model, processor, name=str(out)), held_out,
                                  images=QUICK_EVAL_IMAGES)
        model.train()  # captioning switched it to eval; the loop trains on
        previous = history.read_text() if history.is_file() else ""
        atomic_write_text(history, previous + json.dumps({"step": step, **quality.to_dict()})
                          + "\n")
        log(f"step {step}: {quality.summary()}")

    trained = train_captioner(corpus, out / "checkpoint", spec=spec, steps=steps, seed=seed,
                              checkpoint_every=checkpoint_every, show_progress=show_progress,
                              on_checkpoint=check)
    save_captioner(trained, out)
    captioner = as_captioner(trained.model, trained.processor, name=str(out))
    quality = caption_quality(captioner, held_out)
    # bias-conflicting: attribute i is the one each built-in aligns with class i in train
    conflicting = caption_quality(captioner, held_out.subset(
        np.flatnonzero(held_out.attributes != held_out.labels)))
    log(f"held-out quality: {quality.summary()}; bias-conflicting: {conflicting.summary()}")
    evaluated = (f"`make_corpus({domain!r}, role='judge', per_cell={EVAL_PER_CELL[domain]}, "
                 f"seed={seed})`")
    ModelCard(
        title=f"{domain} captioner (small BLIP, pretrained here)",
        summary=(f"A `BlipForConditionalGeneration` pretrained from scratch on a balanced "
                 f"{domain} corpus, so that it can describe bias-conflicting images the audited "
                 "dataset hardly contains. It captions with the class word and the attribute "
                 "word, as the examples below show."),
        usage=("from diffubias.backends import make_captioner\n\n"
               f"captioner = make_captioner({str(out)!r}, per_image=3)  # offline, CPU is fine\n"
               "captions = captioner.caption(dataset, positions)"),
        corpus=(describe_corpus(corpus, per_cell=spec.per_cell) + " Trained on the "
                f"{int(corpus.complete().sum())} captions that name both the class and the "
                "attribute (the others omit one on purpose, for text-to-image training)."),
        architecture={"vocabulary": f"{len(trained.processor.tokenizer)} word-level tokens",
                      "parameters": f"{sum(p.numel() for p in trained.model.parameters()):,}",
                      **spec.to_dict()},
        steps=trained.loop.steps, wall_seconds=trained.loop.wall_seconds,
        hardware=f"CPU, {torch.get_num_threads()} torch thread(s)",
        quality=[f"all held-out images: {quality.summary()}",
                 f"bias-conflicting ones only (attribute not the class's aligned one): "
                 f"{conflicting.summary()}",
                 f"held-out images: {evaluated}, sources the captioner never saw; 3 sampled "
                 "captions per image (top_p 0.9, the loader's defaults); the shipped model is "
                 "the last step's, not one picked on these numbers",
                 f"class share along the way ({QUICK_EVAL_IMAGES} of those images): "
                 + _history_line(history)],
        retrain=["python", "-m", "diffubias.zoo", "train", "captioner", "--domain", domain,
                 "--out", str(out), "--steps", str(steps), "--seed", str(seed)],
        examples=quality.examples,
        notes=_captioner_notes(quality.class_share, spec.aux_weight),
    ).write(out)
    return out


def train_judge_folder(domain: str, out: Path, *, steps: int | None = None, seed: int = 0,
                       checkpoint_every: int = 250, show_progress: bool = True,
                       log: Log = print) -> Path:
    """The judge of built-in `domain`: `out`/judge.safetensors + its card."""
    from diffubias.zoo.judge import (DOMAIN_SPECS, WEIGHTS_NAME, judge_quality, save_judge,
                                     train_judge)

    _check_domain(domain, DOMAIN_SPECS)
    spec, steps, out = DOMAIN_SPECS[domain], steps or JUDGE_STEPS, Path(out)
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
               "scores = judge.score(images)  # uint8 (N, 3, S, S) -> class and attribute probs\n"
               "scores.agreement(intended_labels, intended_attributes)  # shares of hits"),
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


TARGET_SHARE = 0.9  # captions of held-out images should name the class this often


def _captioner_notes(class_share: float, aux_weight: float) -> list[str]:
    notes = ["BLIP's vision config initialises position and class embeddings with std 1e-10 "
             "(pretrained weights always replace them); from scratch, on colored-digits, class "
             "naming stayed at chance for 1,750 steps with it, so `build_blip` uses 0.02.",
             f"Auxiliary class and attribute heads on the ViT's CLS token (weight {aux_weight}) "
             "train with the caption loss and are not saved: on colored-digits, with the "
             "initialisation fixed but no heads, colour carried the loss drop and class naming "
             "was still at chance after 750 steps (that run was stopped)."]
    if class_share < TARGET_SHARE:
        notes.append(f"Below the {TARGET_SHARE:.0%} target for naming the class: training was "
                     "stopped for time, and the class share was still rising (see the history "
                     "above). Rerunning the command with a larger `--steps` continues from the "
                     "checkpoint.")
    return notes


def _check_domain(domain: str, specs: dict) -> None:
    if domain not in specs:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(specs)}")


def _history_line(history: Path) -> str:
    """"step 250: 11%, step 500: 18%, ..." from the checkpoints' quality log."""
    if not history.is_file():
        return "not recorded"
    rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    return ", ".join(f"{r['step']}: {r['class_share']:.0%}" for r in rows)
