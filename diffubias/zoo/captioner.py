"""A small BLIP captioner pretrained on a built-in domain's corpus, loadable like any BLIP.

`build_blip` makes a `BlipForConditionalGeneration` from a `BlipConfig` with a tiny ViT and a
tiny text decoder, and a `BlipProcessor` whose tokenizer is word-level over the corpus
vocabulary. `train_captioner` teaches it to caption the corpus images (next-token cross-entropy,
`diffubias.zoo.loop` for checkpoints and resuming); `save_pretrained` writes a folder that
`diffubias.backends.make_captioner(<folder>)` loads and samples from unchanged.

It learns only from captions that name both the class and the attribute: the corpus also holds
captions that omit one (they teach a text-to-image model to fill a gap), but a captioner asked to
describe an image should say everything it sees. Knows: BLIP's parts and its training step.
Does not know: files beyond its output folder, the CLI, the judge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffubias.zoo.augment import random_shift
from diffubias.zoo.corpus import Corpus, corpus_vocabulary
from diffubias.zoo.loop import BatchOrder, LoopResult, train_steps

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")  # BERT's + BLIP's [DEC]
RECIPE_VERSION = 3  # in the checkpoint fingerprint: a checkpoint of an older recipe is refused
MAX_POSITIONS = 64  # > the loader's default max_new_tokens (40) + [DEC], so sampling never overruns


@dataclass(frozen=True)
class CaptionerSpec:
    """Architecture and training settings; saved in the model card and the checkpoint."""

    hidden: int = 96  # ViT and text width; 96 keeps the saved weights near 3 MB
    vision_layers: int = 4
    text_layers: int = 3
    heads: int = 4
    patch: int = 4  # 28 px digits: 7 x 7 patches, each ~1.5 source pixels of the 8x8 digit
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 200
    per_cell: int = 200  # corpus: 10 x 10 x 200 digits, each train source digit ~18 times
    # Auxiliary heads: class and attribute read from the ViT's CLS token, trained with the caption
    # loss and dropped on saving. BLIP's image encoder learns from image-text objectives (ITC,
    # ITM) besides captioning; from scratch, the caption loss alone lets colour carry the whole
    # loss drop while digit identity stays at chance for a thousand steps. 0 turns them off.
    aux_weight: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


# Per domain: 64 px scenes take 8 px patches (8 x 8 of them), as many tokens as the digits' 7 x 7.
DOMAIN_SPECS = {"colored-digits": CaptionerSpec(),
                "shape-scenes": CaptionerSpec(patch=8, per_cell=300)}


@dataclass(frozen=True, eq=False)
class TrainedCaptioner:
    model: Any  # BlipForConditionalGeneration, in eval mode
    processor: Any  # BlipProcessor
    loop: LoopResult


def build_blip(vocabulary: list[str], *, image_size: int, spec: CaptionerSpec,
               seed: int) -> tuple[Any, Any]:
    """A freshly initialised (BlipForConditionalGeneration, BlipProcessor) for `vocabulary`
    (lower-case words) at `image_size`; the same seed gives the same weights."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                              BlipImageProcessor, BlipProcessor)

    tokens = list(SPECIAL_TOKENS) + [w for w in vocabulary if w not in SPECIAL_TOKENS]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=MAX_POSITIONS)
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = dict(vocab_size=len(vocab), hidden_size=spec.hidden, encoder_hidden_size=spec.hidden,
                intermediate_size=2 * spec.hidden, num_hidden_layers=spec.text_layers,
                num_attention_heads=spec.heads, max_position_embeddings=MAX_POSITIONS,
                bos_token_id=vocab["[DEC]"], eos_token_id=vocab["[SEP]"],
                sep_token_id=vocab["[SEP]"], pad_token_id=vocab["[PAD]"])
    # BlipVisionConfig initialises position and class embeddings with std 1e-10 (its weights are
    # always loaded); from scratch that leaves the ViT blind to where a patch is, and it never
    # tells digits apart (class naming stayed at chance for 1,750 steps). ViT's usual 0.02 fixes it.
    vision = dict(hidden_size=spec.hidden, intermediate_size=2 * spec.hidden,
                  num_hidden_layers=spec.vision_layers, num_attention_heads=spec.heads,
                  image_size=image_size, patch_size=spec.patch, initializer_range=0.02)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=spec.hidden,
                        image_text_hidden_size=spec.hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config)
    model.generation_config.pad_token_id = vocab["[PAD]"]
    return model, processor


def pixel_values(images: np.ndarray | torch.Tensor, processor: Any) -> torch.Tensor:
    """float32 (B, 3, S, S): uint8 (B, 3, S, S) images at the processor's size, rescaled and
    normalised as the processor does (no resize needed; a test checks they agree)."""
    image_processor = processor.image_processor
    x = torch.as_tensor(images).float() * float(image_processor.rescale_factor)
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


def encode_captions(captions: list[str] | tuple[str, ...],
                    processor: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels), each int64 (N, L): `[DEC] words [SEP] [PAD]...`
    as BLIP's decoder reads them, labels -100 on padding (ignored by the loss)."""
    tokenizer = processor.tokenizer
    encoded = tokenizer(list(captions), padding="longest", truncation=True,
                        max_length=MAX_POSITIONS, return_tensors="pt")
    input_ids = encoded["input_ids"].clone()
    input_ids[:, 0] = tokenizer.convert_tokens_to_ids("[DEC]")  # BLIP decodes from [DEC], not [CLS]
    mask = encoded["attention_mask"]
    labels = input_ids.masked_fill(mask == 0, -100)
    return input_ids, mask, labels


def train_captioner(corpus: Corpus, checkpoint_dir: Path, *, spec: CaptionerSpec, steps: int,
                    seed: int, checkpoint_every: int = 250, show_progress: bool = True,
                    on_checkpoint: Callable[[int, Any, Any], None] | None = None
                    ) -> TrainedCaptioner:
    """A BLIP trained `steps` steps on `corpus`'s complete captions, resuming from
    `checkpoint_dir`; `on_checkpoint(step, model, processor)` runs after each checkpoint."""
    keep = np.flatnonzero(corpus.complete())
    if len(keep) < spec.batch_size:
        raise ValueError(f"the corpus has {len(keep)} captions naming class and attribute; "
                         f"expected at least a batch ({spec.batch_size})")
    model, processor = build_blip(corpus_vocabulary(corpus.domain), image_size=corpus.image_size,
                                  spec=spec, seed=seed)
    images = torch.from_numpy(corpus.images[keep])  # uint8 (N, 3, S, S), normalised per batch
    input_ids, mask, labels = encode_captions([corpus.captions[i] for i in keep], processor)
    classes = torch.from_numpy(corpus.labels[keep])
    attributes = torch.from_numpy(corpus.attributes[keep])
    num_classes = len(corpus.class_names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        heads = torch.nn.Linear(spec.hidden, num_classes + len(corpus.attribute_names))
    trained = torch.nn.ModuleDict({"blip": model, "heads": heads})  # what the checkpoint holds
    batches = BatchOrder(len(keep), spec.batch_size, seed)

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.from_numpy(batches.at(step))
        shifted = random_shift(images[idx], np.random.default_rng([seed, 2, step]))
        out = model(pixel_values=pixel_values(shifted, processor), input_ids=input_ids[idx],
                    attention_mask=mask[idx], labels=labels[idx])
        if not spec.aux_weight:
            return out.loss
        logits = heads(out.image_embeds[:, 0])  # (B, hidden) CLS token -> (B, C + A)
        aux = (F.cross_entropy(logits[:, :num_classes], classes[idx])
               + F.cross_entropy(logits[:, num_classes:], attributes[idx]))
        return out.loss + spec.aux_weight * aux

    optimizer = torch.optim.AdamW(trained.parameters(), lr=spec.learning_rate,
                                  weight_decay=spec.weight_decay)
    fingerprint = {"model": "blip-captioner", "recipe": RECIPE_VERSION, "domain": corpus.domain,
                   "seed": seed, "corpus_seed": corpus.seed, "corpus_size": len(corpus),
                   **spec.to_dict()}
    hook = None if on_checkpoint is None else (lambda step: on_checkpoint(step, model, processor))
    loop = train_steps(model=trained, optimizer=optimizer, loss_at=loss_at, steps=steps,
                       checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                       fingerprint=fingerprint, learning_rate=spec.learning_rate,
                       warmup=min(spec.warmup, steps // 10), desc=f"captioner {corpus.domain}",
                       show_progress=show_progress, on_checkpoint=hook)
    return TrainedCaptioner(model.eval(), processor, loop)


def save_captioner(trained: TrainedCaptioner, out_dir: Path) -> Path:
    """The model and processor in `out_dir` (save_pretrained), as the BLIP loader expects."""
    out_dir = Path(out_dir)
    trained.model.save_pretrained(out_dir)
    trained.processor.save_pretrained(out_dir)
    return out_dir


def as_captioner(model: Any, processor: Any, *, name: str, per_image: int = 3, seed: int = 0):
    """A `ModelCaptioner` over an in-memory model, with the loader's default sampling."""
    from diffubias.hf_captioners import CaptionSettings, ModelCaptioner

    return ModelCaptioner(model.eval(), processor, name, "blip",
                          CaptionSettings(per_image=per_image, batch_size=64, seed=seed))


# ---------------------------------------------------------------------------------------------
# The recipe behind `python -m diffubias.zoo train captioner`

DEFAULT_STEPS = 3000
EVAL_PER_CELL = {"colored-digits": 2, "shape-scenes": 6}  # 200 / 216 held-out judge-corpus images
QUICK_EVAL_IMAGES = 100  # at each checkpoint: enough to see the trend, a few seconds to caption


def train_to_folder(domain: str, out: Path, *, steps: int | None = None, seed: int = 0,
                    checkpoint_every: int = 250, show_progress: bool = True,
                    log: Callable[[str], None] = print) -> Path:
    """Pretrain the captioner of built-in `domain` into `out` (resuming from out/checkpoint/):
    the model and processor (save_pretrained), and a model card with its measured quality."""
    import json

    from diffubias.files import atomic_write_text
    from diffubias.zoo.card import ModelCard, describe_corpus
    from diffubias.zoo.corpus import make_corpus
    from diffubias.zoo.quality import caption_quality

    if domain not in DOMAIN_SPECS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAIN_SPECS)}")
    spec, steps, out = DOMAIN_SPECS[domain], steps or DEFAULT_STEPS, Path(out)
    corpus = make_corpus(domain, role="pretrain", per_cell=spec.per_cell, seed=seed)
    held_out = make_corpus(domain, role="judge", per_cell=EVAL_PER_CELL[domain], seed=seed)
    history = out / "checkpoint" / "quality.jsonl"

    def check(step: int, model: Any, processor: Any) -> None:
        quality = caption_quality(as_captioner(model, processor, name=str(out)), held_out,
                                  images=QUICK_EVAL_IMAGES)
        model.train()  # caption_images switched it to eval; the loop trains on
        line = json.dumps({"step": step, **quality.to_dict()})
        previous = history.read_text() if history.is_file() else ""
        atomic_write_text(history, previous + line + "\n")
        log(f"step {step}: {quality.summary()}")

    trained = train_captioner(corpus, out / "checkpoint", spec=spec, steps=steps, seed=seed,
                              checkpoint_every=checkpoint_every, show_progress=show_progress,
                              on_checkpoint=check)
    save_captioner(trained, out)
    quality = caption_quality(as_captioner(trained.model, trained.processor, name=str(out)),
                              held_out)
    log(f"held-out quality: {quality.summary()}")
    ModelCard(
        title=f"{domain} captioner (small BLIP, pretrained here)",
        summary=(f"A `BlipForConditionalGeneration` pretrained from scratch on a balanced "
                 f"{domain} corpus, so that it can describe bias-conflicting images the audited "
                 "dataset hardly contains. It captions with the class word and the attribute "
                 "word (\"a handwritten three drawn in red\")."),
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
        quality=[f"{quality.summary()}: held-out judge-corpus images "
                 f"(`make_corpus({domain!r}, role='judge', per_cell={EVAL_PER_CELL[domain]}, "
                 f"seed={seed})`, sources the captioner never saw), 3 sampled captions per "
                 "image (top_p 0.9, the loader's defaults)",
                 f"history per checkpoint ({QUICK_EVAL_IMAGES} images): "
                 "`checkpoint/quality.jsonl` in the training folder (not shipped)"],
        retrain=["python", "-m", "diffubias.zoo", "train", "captioner", "--domain", domain,
                 "--out", str(out), "--steps", str(steps), "--seed", str(seed)],
        examples=quality.examples,
    ).write(out)
    return out
