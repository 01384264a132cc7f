"""Model captioners through transformers: BLIP and any image-text-to-text VLM (LLaVA, ...).

`load_captioner(model, ...)` is the one function that loads: a hub id or local folder, BLIP or a
VLM told apart by the model's config, the device and dtype chosen for the machine (bf16/fp16 on
CUDA, fp32 on the CPU), and the loaded model kept for the next call with the same id. A
`ModelCaptioner` holds the loaded model and captions dataset samples in batches, several sampled
captions per image, seeded; each `Caption` records the model, instruction and generation
parameters. Knows nothing of runs, files or the text filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import torch
from PIL import Image

from diffubias.captions import Caption
from diffubias.dataset import ImageDataset
from diffubias.decoding import read_images

DEFAULT_INSTRUCTION = "Describe this image in one sentence."
# Short names for the models the paper and the reference code use.
CAPTION_MODELS = {
    "blip": "Salesforce/blip-image-captioning-large",
    "blip-base": "Salesforce/blip-image-captioning-base",
    "llava": "llava-hf/llava-1.5-7b-hf",
    "llava-llama3": "xtuner/llava-llama-3-8b-v1_1-transformers",  # the paper's captioner
}


@dataclass(frozen=True)
class CaptionSettings:
    per_image: int = 3  # sampled captions per image (the paper uses 3)
    batch_size: int = 16  # images per generate() call
    max_new_tokens: int = 40
    do_sample: bool = True  # False: beam search, one beam per caption
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0
    instruction: str = DEFAULT_INSTRUCTION  # VLMs only; BLIP captions unprompted

    def __post_init__(self) -> None:
        for name in ("per_image", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def generate_kwargs(self) -> dict:
        n = self.per_image
        if self.do_sample:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "top_p": self.top_p,
                    "temperature": self.temperature, "num_return_sequences": n}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": False, "num_beams": n,
                "num_return_sequences": n}


@dataclass(eq=False)
class ModelCaptioner:
    """A loaded BLIP or VLM and its processor; `caption` follows the Captioner protocol."""

    model: Any = field(repr=False)  # BlipForConditionalGeneration or an ImageTextToText model
    processor: Any = field(repr=False)
    model_name: str  # the hub id or folder it was loaded from, recorded with every caption
    kind: str  # "blip" or "vlm"
    settings: CaptionSettings = CaptionSettings()

    @property
    def backend(self) -> str:
        return self.kind

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def params(self) -> dict:
        """What produced a caption: generation parameters (+ the instruction for VLMs)."""
        p = asdict(self.settings)
        p.pop("batch_size")  # changes speed, not what a caption means
        if self.kind == "blip":
            p.pop("instruction")
        p["dtype"] = str(self.dtype).removeprefix("torch.")
        return p

    def caption(self, ds: ImageDataset, positions: Sequence[int]) -> list[Caption]:
        """`settings.per_image` captions per position, in position order."""
        positions = [int(p) for p in positions]
        params = self.params()
        out: list[Caption] = []
        size = decode_size(self.processor)
        step = self.settings.batch_size
        for start in range(0, len(positions), step):
            chunk = positions[start:start + step]
            images = read_images(ds, chunk, size=size)  # uint8 (B, 3, H, W)
            pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]  # -> HWC
            texts = self.caption_images(pil, batch_seed=self.settings.seed + start)
            out += [Caption(p, t, self.backend, self.model_name, params)
                    for p, per_image in zip(chunk, texts) for t in per_image]
        return out

    @torch.inference_mode()
    def caption_images(self, images: Sequence[Image.Image], *, batch_seed: int | None = None
                       ) -> list[list[str]]:
        """One generate() call for all `images`: `per_image` captions each, whitespace-tidied.

        Sampling draws from torch's global generator, so it is seeded here (`batch_seed`, default
        settings.seed) inside a forked RNG state that leaves the caller's untouched.
        """
        if not images:
            return []
        n = self.settings.per_image
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.settings.seed if batch_seed is None else batch_seed)
            if self.kind == "blip":
                inputs = self.processor(images=list(images), return_tensors="pt")
                inputs = _to(inputs, self.device, self.dtype)
                ids = self.model.generate(**inputs, **self.settings.generate_kwargs())
            else:
                prompt = vlm_prompt(self.processor, self.settings.instruction)
                inputs = self.processor(images=list(images), text=[prompt] * len(images),
                                        padding=True, return_tensors="pt")
                inputs = _to(inputs, self.device, self.dtype)
                ids = self.model.generate(**inputs, **self.settings.generate_kwargs())
                ids = ids[:, inputs["input_ids"].shape[1]:]  # (B * n, new tokens): drop the prompt
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        texts = [" ".join(t.split()) for t in texts]
        return [texts[i * n:(i + 1) * n] for i in range(len(images))]  # image-major order


def vlm_prompt(processor: Any, instruction: str) -> str:
    """The chat-formatted prompt for one image and `instruction`: the processor's chat template
    (structured image + text content), else the tokenizer's with the image token written into
    the text (checkpoints such as xtuner's LLaVA-Llama-3 ship only a tokenizer template)."""
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"},
                                          {"type": "text", "text": instruction}]}],
            add_generation_prompt=True)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        image_token = getattr(processor, "image_token", None) or "<image>"
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{image_token}\n{instruction}"}], tokenize=False,
            add_generation_prompt=True)
    raise ValueError("the VLM's processor and tokenizer have no chat template; expected an "
                     f"instruction-tuned VLM such as {CAPTION_MODELS['llava']}")


def _to(inputs: Any, device: torch.device, dtype: torch.dtype) -> dict:
    """Moves processor outputs to the model's device; floating tensors (pixels) to its dtype."""
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
            if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def decode_size(processor: Any) -> int:
    """Side at which to decode dataset images for this processor: its crop or resize size."""
    image_processor = getattr(processor, "image_processor", None)
    for attr in ("crop_size", "size"):
        size = getattr(image_processor, attr, None)
        if isinstance(size, dict) and size:
            return int(max(v for v in size.values() if isinstance(v, int)))
        if hasattr(size, "height") and size.height:  # SizeDict
            return int(max(size.height, size.width or 0))
        if hasattr(size, "shortest_edge") and size.shortest_edge:
            return int(size.shortest_edge)
    return 384


def load_captioner(model: str, *, settings: CaptionSettings | None = None, device: str = "auto",
                   dtype: str = "auto") -> ModelCaptioner:
    """A captioner for a hub id, a local folder or a short name in CAPTION_MODELS.

    BLIP checkpoints get BlipForConditionalGeneration; any other model whose config
    AutoModelForImageTextToText knows is captioned through its chat template with
    `settings.instruction`. The model is loaded once per (model, device, dtype) and reused.
    """
    from diffubias.hf_loading import pick_device, pick_dtype

    settings = settings or CaptionSettings()
    model_name = CAPTION_MODELS.get(model, model)
    resolved_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, resolved_device)
    kind, loaded, processor = _load(model_name, resolved_device, torch_dtype)
    return ModelCaptioner(loaded, processor, model_name, kind, settings)


@lru_cache(maxsize=1)  # one captioner in memory at a time: 7-8B VLMs are large
def _load(model: str, device: str, dtype: torch.dtype) -> tuple[str, Any, Any]:
    from transformers import (AutoConfig, AutoModelForImageTextToText, AutoProcessor,
                              BlipForConditionalGeneration)

    from diffubias.hf_loading import from_pretrained

    config = from_pretrained(AutoConfig, model)
    if config.model_type == "blip":
        kind, cls = "blip", BlipForConditionalGeneration
    else:
        kind, cls = "vlm", AutoModelForImageTextToText
    try:
        loaded = from_pretrained(cls, model, dtype=dtype)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        raise ValueError(f"model {model!r} (model_type {config.model_type!r}) is not a BLIP "
                         "captioner or an image-text-to-text model; expected e.g. "
                         f"{CAPTION_MODELS['blip']} or {CAPTION_MODELS['llava']}") from None
    processor = from_pretrained(AutoProcessor, model)
    if kind == "vlm":
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only: pad before the prompt, not after
        vlm_prompt(processor, DEFAULT_INSTRUCTION)  # no chat template: fail at load, not later
    return kind, loaded.to(device).eval(), processor
