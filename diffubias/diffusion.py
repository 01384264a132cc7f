"""Text-to-image generation with diffusers, written image by image so a run resumes.

Three parts:
- `load_diffusers_generator` is the one function that loads: any AutoPipelineForText2Image
  checkpoint (SD 1.x, SDXL, SD 3.x) by hub id or local folder, dtype for the machine,
  DPM-Solver on UNet pipelines, optional model CPU offload and torch.compile.
- `DiffusersGenerator` calls the loaded pipeline on batches of prompts with one seeded CPU
  generator per image, halves the batch on CUDA out-of-memory, and drops safety-checker
  blackouts (counted).
- `generate_to_folder` plans one work item per (prompt id, seed), skips items already on disk,
  splits the rest over `accelerate launch` processes, writes each PNG (temp + rename) and its
  manifest row (one small JSON) as it goes, and merges the rows into manifest.csv: the format
  `diffubias.generation.load_generated` reads (which resizes to the training resolution; the
  originals stay on disk). It serves the demo generator too, so there is one writer.

Knows nothing of runs, the CLI or the dataset beyond class names.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from diffubias.files import atomic_path, atomic_write_text
from diffubias.generation import (
    MANIFEST_FIELDS,
    GeneratedImage,
    check_generation_inputs,
)
from diffubias.text_filter import Prompt
from diffubias.text_safety import csv_cell
from diffubias.training import ProgressFn

Log = Callable[[str], None]

# Short names for the pipelines the paper and the reference code use.
GENERATOR_MODELS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd35": "stabilityai/stable-diffusion-3.5-large",  # gated: needs `hf auth login`
}
OFFLOAD = ("none", "model", "sequential")
SCHEDULERS = ("dpm", "default")
ROW_FIELDS = (*MANIFEST_FIELDS, "prompt_id", "image_index", "width", "height")
SETTINGS_FILE = "generation.json"


def _quiet(msg: str) -> None:
    pass


@dataclass(frozen=True)
class DiffusionSettings:
    steps: int = 25  # DPM-Solver needs 20-25 on SD 1.x/SDXL; SD 3.x's own scheduler ~28
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    width: int = 0  # 0: the pipeline's default size
    height: int = 0
    batch_size: int = 8  # images per pipeline call; halved on CUDA out-of-memory
    scheduler: str = "dpm"  # dpm: DPM-Solver++ (Karras sigmas) on UNet pipelines; default: keep

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 0 or value % 8:
                raise ValueError(f"{name} must be 0 (model default) or a positive multiple of 8, "
                                 f"got {value}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must not be negative, got {self.guidance_scale}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; expected one of {SCHEDULERS}")


# -- work items: one per output image, keyed by (prompt id, seed) ------------------------------

def prompt_id(prompt: Prompt) -> str:
    """A stable id of (text, source sample, label): editing other prompts never changes it."""
    key = f"{prompt.label}\x1f{prompt.source}\x1f{prompt.text}".encode()
    return hashlib.sha1(key).hexdigest()[:12]


def item_seed(base_seed: int, pid: str, image_index: int) -> int:
    """Seed of one image, from the run seed and the prompt id: stable when prompts are added,
    removed or reordered, so a resumed run regenerates nothing that exists."""
    digest = hashlib.sha256(f"{base_seed}:{pid}:{image_index}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFF_FFFF


@dataclass(frozen=True)
class WorkItem:
    prompt: Prompt
    prompt_id: str
    image_index: int  # 0 .. images_per_prompt - 1
    seed: int

    @property
    def key(self) -> str:
        return f"{self.prompt_id}_s{self.seed}"


def plan_images(prompts: Sequence[Prompt], *, images_per_prompt: int, seed: int
                ) -> list[WorkItem]:
    """One item per output image, prompt-major; a prompt repeated verbatim is planned once."""
    check_generation_inputs(prompts, images_per_prompt)
    items, seen = [], set()
    for prompt in prompts:
        pid = prompt_id(prompt)
        if pid in seen:
            continue
        seen.add(pid)
        items += [WorkItem(prompt, pid, j, item_seed(seed, pid, j))
                  for j in range(images_per_prompt)]
    return items


# -- the diffusers backend ---------------------------------------------------------------------

@dataclass(eq=False)
class DiffusersGenerator:
    """A loaded text-to-image pipeline; `generate` follows the Generator protocol."""

    pipe: Any = field(repr=False)
    model: str  # hub id or folder, recorded with every image
    settings: DiffusionSettings = DiffusionSettings()
    log: Log = field(default=_quiet, repr=False)
    backend: str = "diffusers"

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

    def generate(self, prompts: Sequence[Prompt], *, images_per_prompt: int = 1, seed: int = 0,
                 progress: ProgressFn | None = None) -> list[GeneratedImage]:
        """In memory, for small sets; `generate_to_folder` is the resumable path."""
        items = plan_images(prompts, images_per_prompt=images_per_prompt, seed=seed)
        params = self.params()
        return [GeneratedImage(image, it.prompt.text, it.prompt.source, it.prompt.label, it.seed,
                               self.backend, self.model, params)
                for it, image in self.generate_items(items, progress=progress)
                if image is not None]

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


# -- the resumable folder writer ---------------------------------------------------------------

@dataclass(frozen=True)
class GenerationOutput:
    manifest: Path
    backend: str
    model: str | None
    n_images: int  # rows in the manifest (every process's images; main process only)
    n_new: int  # images generated by this call (all processes)
    n_existing: int  # planned images found on disk and skipped
    n_blocked: int  # safety-checker blackouts dropped (this call and earlier ones)
    params: dict
    is_main_process: bool = True  # False: another process merged the manifest


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, sort_keys=True))


@dataclass(frozen=True)
class _Folder:
    """out_dir/<class>/<key>.png + out_dir/rows/<key>.json; the row is written after the PNG,
    so a row on disk means a complete image."""

    root: Path
    class_names: tuple[str, ...]

    def row_path(self, key: str) -> Path:
        return self.root / "rows" / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.row_path(key).exists()

    def write(self, key: str, prompt: Prompt, pid: str, image_index: int, seed: int,
              image: Image.Image | None, *, backend: str, model: str | None, params: dict) -> None:
        name = self.class_names[prompt.label]
        row = {"prompt": prompt.text, "source": prompt.source, "label": prompt.label,
               "label_name": name, "seed": seed, "backend": backend, "model": model or "",
               "params": json.dumps(params, sort_keys=True), "prompt_id": pid,
               "image_index": image_index}
        if image is None:
            row.update(file="", width="", height="", blocked=True)
        else:
            rel = f"{name}/{key}.png"
            (self.root / name).mkdir(parents=True, exist_ok=True)
            _save_png(image, self.root / rel)
            row.update(file=rel, width=image.width, height=image.height, blocked=False)
        _write_json(self.row_path(key), row)

    def merge(self, keys: Sequence[str]) -> tuple[Path, int, int]:
        """manifest.csv from the rows of `keys`, in that order; (path, images, blocked)."""
        rows, blocked = [], 0
        for key in keys:
            if not self.has(key):
                continue
            row = json.loads(self.row_path(key).read_text(encoding="utf-8"))
            if row.pop("blocked"):
                blocked += 1
            else:
                rows.append(row)
        path = self.root / "manifest.csv"
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=ROW_FIELDS)
            writer.writeheader()
            # prompts are text from models and users: no cell runs as a spreadsheet formula
            writer.writerows({k: csv_cell(v) if isinstance(v, str) else v for k, v in row.items()}
                             for row in rows)
        return path, len(rows), blocked


def _process_state() -> Any:
    """accelerate's PartialState under `accelerate launch` (or torchrun) with several processes,
    else None (a plain run imports no accelerate). Without CUDA, or with ACCELERATE_USE_CPU set,
    the processes talk over gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    cpu = (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
           or not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def _prepare_folder(root: Path, description: dict, log: Log) -> None:
    """Keeps the folder when it was made with the same backend, model and parameters (resume);
    otherwise starts it afresh, so no image from other settings is mixed in."""
    settings = root / SETTINGS_FILE
    if root.exists():
        previous = json.loads(settings.read_text()) if settings.exists() else None
        if previous == description:
            return
        log(f"{root}: made with other generation settings; starting it afresh")
        shutil.rmtree(root)
    (root / "rows").mkdir(parents=True)
    _write_json(settings, description)


def generate_to_folder(generator: Any, prompts: Sequence[Prompt], out_dir: Path, *,
                       images_per_prompt: int, seed: int, class_names: Sequence[str],
                       log: Log | None = None, progress: ProgressFn | None = None
                       ) -> GenerationOutput:
    """Generates every (prompt, image index) not yet in `out_dir` and writes manifest.csv.

    Each image is written as soon as it exists, so an interrupted run resumes where it stopped
    and never duplicates an image. Under `accelerate launch` with N processes a
    `DiffusersGenerator` splits the missing items over the processes and the main process merges
    the manifest; other generators (the demo) run on the main process only.
    """
    log = log or _quiet
    out_dir = Path(out_dir)
    folder = _Folder(out_dir, tuple(class_names))
    state = _process_state()
    main = state is None or state.is_main_process
    is_items = isinstance(generator, DiffusersGenerator)
    description = (generator.describe() if is_items else
                   {"backend": generator.backend, "generator": repr(generator)})
    if main:
        _prepare_folder(out_dir, description, log)
    if state is not None:
        state.wait_for_everyone()

    if is_items:
        items = plan_images(prompts, images_per_prompt=images_per_prompt, seed=seed)
        keys = [it.key for it in items]
        todo = [it for it in items if not folder.has(it.key)]
        if state is not None:
            state.wait_for_everyone()  # every process lists the same todo before anyone writes
        n_new = _write_items(generator, todo, folder, state, progress, log)
        model, params = generator.model, generator.params()
    else:
        keys, n_new, model, params = _write_in_memory(generator, prompts, folder, main,
                                                      images_per_prompt, seed, progress)
    if state is not None:
        state.wait_for_everyone()
    n_existing = len(keys) - n_new
    if not main:
        return GenerationOutput(out_dir / "manifest.csv", generator.backend, model, 0, n_new,
                                n_existing, 0, params, is_main_process=False)
    manifest, n_images, n_blocked = folder.merge(keys)
    return GenerationOutput(manifest, generator.backend, model, n_images, n_new, n_existing,
                            n_blocked, params)


def _write_items(generator: DiffusersGenerator, todo: list[WorkItem], folder: _Folder,
                 state: Any, progress: ProgressFn | None, log: Log) -> int:
    """Generates and writes this process's share of `todo`; returns the count over processes."""
    params = generator.params()

    def run(mine: Sequence[WorkItem]) -> int:
        for it, image in generator.generate_items(mine, progress=progress):
            folder.write(it.key, it.prompt, it.prompt_id, it.image_index, it.seed, image,
                         backend=generator.backend, model=generator.model, params=params)
        return len(mine)

    if state is None:
        return run(todo)
    from accelerate.utils import gather_object

    with state.split_between_processes(todo) as mine:  # contiguous shares, no padding
        log(f"process {state.process_index}/{state.num_processes}: {len(mine)} of "
            f"{len(todo)} images")
        done = run(mine)
    return sum(gather_object([done]))


def _write_in_memory(generator: Any, prompts: Sequence[Prompt], folder: _Folder, main: bool,
                     images_per_prompt: int, seed: int, progress: ProgressFn | None
                     ) -> tuple[list[str], int, str | None, dict]:
    """For protocol-only generators (the demo): generate everything on the main process, write
    what is not on disk yet. Keys are (prompt id, the generator's own seed)."""
    if not main:
        return [], 0, None, {}
    images = generator.generate(prompts, images_per_prompt=images_per_prompt, seed=seed,
                                progress=progress)
    keys, n_new, index_of = [], 0, {}
    for g in images:
        prompt = Prompt(g.prompt, g.label, g.source, ())
        pid = prompt_id(prompt)
        j = index_of[pid] = index_of.get(pid, -1) + 1
        key = f"{pid}_s{g.seed}"
        keys.append(key)
        if not folder.has(key):
            folder.write(key, prompt, pid, j, g.seed, g.image, backend=g.backend, model=g.model,
                         params=dict(g.params))
            n_new += 1
    model = images[0].model if images else None
    params = dict(images[0].params) if images else {}
    return keys, n_new, model, params
