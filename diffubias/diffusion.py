"""Text-to-image generation with diffusers: the `Generator` of any AutoPipelineForText2Image
checkpoint (SD 1.x, SDXL, SD 3.x).

- `load_diffusers_generator` is the one function that loads: hub id or local folder, dtype for
  the machine, DPM-Solver on UNet pipelines, optional model CPU offload and torch.compile.
- `DiffusersGenerator` calls the loaded pipeline on batches of work items with one seeded CPU
  generator per image (so an image depends on its seed alone, whatever the batch), halves the
  batch on CUDA out-of-memory, and reports safety-checker blackouts as None.

Knows nothing of prompts' origin, stores or runs: `diffubias.stages.generate` plans the items
and hands the images to a sink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from diffubias.generation import WorkItem
from diffubias.progress import ProgressFn

Log = Callable[[str], None]

# Short names for the pipelines the paper and the reference code use.
GENERATOR_MODELS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd35": "stabilityai/stable-diffusion-3.5-large",  # gated: needs `hf auth login`
}
OFFLOAD = ("none", "model", "sequential")
SCHEDULERS = ("dpm", "default")


def _quiet(msg: str) -> None:
    pass


@dataclass(frozen=True)
class DiffusionSettings:
    steps: int = 0  # 0: auto (see auto_settings): 25 on SD-sized models (DPM-Solver needs 20-25
    # on SD 1.x/SDXL; SD 3.x's own scheduler ~28), fewer on small ones such as builtin-ldm
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    width: int = 0  # 0: the pipeline's default size
    height: int = 0
    batch_size: int = 0  # images per pipeline call (0: auto, see auto_batch_size); halved on
    # CUDA out-of-memory
    scheduler: str = "dpm"  # dpm: DPM-Solver++ (Karras sigmas) on UNet pipelines; default: keep

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be 0 (auto) or more, got {self.steps}")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be 0 (auto) or more, got {self.batch_size}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 0 or value % 8:
                raise ValueError(f"{name} must be 0 (model default) or a positive multiple of 8, "
                                 f"got {value}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must not be negative, got {self.guidance_scale}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; expected one of {SCHEDULERS}")


# -- the diffusers backend ---------------------------------------------------------------------

@dataclass(eq=False)
class DiffusersGenerator:
    """A loaded text-to-image pipeline; `generate` follows the Generator protocol."""

    pipe: Any = field(repr=False)
    model: str  # hub id or folder, recorded with every image
    settings: DiffusionSettings = DiffusionSettings()
    log: Log = field(default=_quiet, repr=False)
    backend: str = "diffusers"

    def __post_init__(self) -> None:
        self.settings = auto_settings(self.pipe, self.settings)  # steps, batch of 0: auto

    def params(self) -> dict:
        """What produced an image (not the batch size, which changes speed only)."""
        p = asdict(self.settings)
        p.pop("batch_size")
        p["scheduler"] = type(self.pipe.scheduler).__name__
        p["pipeline"] = type(self.pipe).__name__
        p["dtype"] = str(self.pipe.dtype).removeprefix("torch.")
        return p

    def describe(self) -> dict:
        return {"backend": self.backend, "model": self.model, "params": self.params()}

    def generate_items(self, items: Sequence[WorkItem], *, progress: ProgressFn | None = None
                       ) -> Iterator[tuple[WorkItem, Image.Image | None]]:
        """(item, image) per item in order, batch by batch; None where the safety checker
        blacked the image out. On CUDA out-of-memory the batch is halved for the rest of the
        call and the batch retried."""
        batch, done = self.settings.batch_size, 0
        bar = tqdm(total=len(items), desc="generate", leave=False)
        while done < len(items):
            chunk = list(items[done:done + batch])
            try:
                images = self._call(chunk)
            except torch.cuda.OutOfMemoryError as err:
                if batch == 1:
                    raise ValueError(
                        "CUDA out of memory even with 1 image per call; try --offload model, "
                        "a smaller --gen-width/--gen-height, or a smaller model") from err
                batch = max(1, batch // 2)
                self.log(f"CUDA out of memory with {len(chunk)} images per call; "
                         f"halving the batch to {batch} and retrying")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            yield from zip(chunk, images)
            done += len(chunk)
            bar.update(len(chunk))
            if progress is not None:
                progress(done / len(items), "generating images")
        bar.close()

    def _call(self, chunk: list[WorkItem]) -> list[Image.Image | None]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "prompt": [it.prompt.text for it in chunk],
            "num_inference_steps": s.steps, "guidance_scale": s.guidance_scale,
            # one generator per image: its seed alone decides its latents, whatever the batch
            "generator": [torch.Generator("cpu").manual_seed(it.seed) for it in chunk],
            "num_images_per_prompt": 1, "output_type": "pil"}
        if s.negative_prompt:
            kwargs["negative_prompt"] = [s.negative_prompt] * len(chunk)
        if s.width:
            kwargs["width"] = s.width
        if s.height:
            kwargs["height"] = s.height
        out = self.pipe(**kwargs)
        flagged = getattr(out, "nsfw_content_detected", None) or [False] * len(chunk)
        return [None if bad else image for image, bad in zip(out.images, flagged)]


def load_diffusers_generator(model: str, *, settings: DiffusionSettings | None = None,
                             device: str = "auto", dtype: str = "auto", offload: str = "none",
                             compile_mode: str = "", log: Log | None = None
                             ) -> DiffusersGenerator:
    """A generator for any AutoPipelineForText2Image checkpoint: hub id, local folder, or a
    short name in GENERATOR_MODELS.

    `offload`: none (move the pipeline to `device`), model (enable_model_cpu_offload: one
    component on the GPU at a time) or sequential (slowest, least memory); both need CUDA.
    `compile_mode`: "" for none, else a torch.compile mode for the UNet/transformer (pays off
    only at a fixed size and batch).
    """
    from diffusers import AutoPipelineForText2Image, DPMSolverMultistepScheduler

    from diffubias.hf_loading import from_pretrained, pick_device, pick_dtype

    settings = settings or DiffusionSettings()
    if offload not in OFFLOAD:
        raise ValueError(f"unknown offload {offload!r}; expected one of {OFFLOAD}")
    device = pick_device(device)
    if offload != "none" and not device.startswith("cuda"):
        raise ValueError(f"offload={offload!r} moves components to a GPU and back; it needs a "
                         f"CUDA device, got {device!r}")
    name = GENERATOR_MODELS.get(model, model)
    pipe = from_pretrained(AutoPipelineForText2Image, name, dtype=pick_dtype(dtype, device))
    if settings.scheduler == "dpm" and hasattr(pipe, "unet"):
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config,
                                                                 use_karras_sigmas=True)
    pipe.set_progress_bar_config(disable=True)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    if device.startswith("cuda") and getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_slicing()  # decode a large batch one image at a time
    if compile_mode:
        part = "unet" if hasattr(pipe, "unet") else "transformer"
        setattr(pipe, part, torch.compile(getattr(pipe, part), mode=compile_mode))
    return DiffusersGenerator(pipe, name, settings, log or _quiet)


SMALL_DENOISER = 20_000_000  # parameters; SD 1.5's UNet has 860M, builtin-ldm's 1.7M
# (steps, images per call) when the settings leave them at 0. Small: builtin-ldm keeps its
# class and attribute accuracy at 15 DPM-Solver++ steps (docs/BENCHMARKS.md, bench/zoo.py), and
# a CPU draws a 128-image batch of it faster per image than a smaller one; large: the usual 25
# steps, and 8 images a call for memory (halved further on out-of-memory).
SMALL_AUTO, LARGE_AUTO = (15, 128), (25, 8)


def auto_settings(pipe: Any, settings: DiffusionSettings) -> DiffusionSettings:
    """`settings` with steps and batch size of 0 replaced by what suits the pipeline's size."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    size = 0 if denoiser is None else sum(p.numel() for p in denoiser.parameters())
    small = 0 < size < SMALL_DENOISER
    steps, batch = SMALL_AUTO if small else LARGE_AUTO
    return replace(settings, steps=settings.steps or steps,
                   batch_size=settings.batch_size or batch)
