"""Tab 4, Generate: new bias-conflicting images from the kept prompts, reviewed before training.

`run_generation` is a job that goes prompt by prompt: a prompt whose images were already made
with the same request (backend, model, settings, seed, images per prompt) is skipped, so a
stopped or interrupted run resumes; a prompt with images from another request gets new ones.
Each image is written atomically under workspace/generated/<job>/ and recorded with its seed,
model and parameters. Every image counts for training unless a person rejects it.
"""

from __future__ import annotations

import importlib.util
import io
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from storage import atomic_write_bytes
from storage import repository as repo
from storage.models import JobKind
from ui.datasets import project_config, save_project_config
from ui.jobs import JobOutcome, JobProgress, UiProgress
from ui.studio import Studio
from ui.thumbnails import LARGE_PX, thumbnail

PROMPTS_PER_PAGE = 12
SEED_STRIDE = 100_003  # prompt seeds: base * stride + prompt id, distinct across prompts


@dataclass(frozen=True)
class GenerationView:
    job_id: int | None
    backend: str
    model: str | None
    n_prompts: int  # kept prompts of the current table
    n_images: int
    n_accepted: int
    n_rejected: int
    tiles: list[tuple[str, str]]  # this page, prompt by prompt
    image_ids: list[int]
    columns: int  # images per prompt: one gallery row per prompt
    page: int
    n_pages: int
    params: dict[str, Any]


@dataclass(frozen=True)
class ImageDetail:
    image_id: int
    image: str
    prompt_id: int
    prompt: str
    label: str
    seed: int
    model: str
    accepted: bool | None


def generator_choices() -> list[str]:
    """`demo` (built-in datasets) plus the library's diffusion model short names."""
    names = ["demo"]
    if importlib.util.find_spec("diffubias.diffusion") is not None:
        from diffubias.diffusion import GENERATOR_MODELS

        names += list(GENERATOR_MODELS)
    return names


def run_generation(studio: Studio, project_id: int, changes: Mapping[str, Any], *,
                   model_id: str = "", ui: UiProgress | None = None) -> GenerationView:
    """Generate images for the kept prompts.

    `changes`: {RunConfig field: value} (generator, gen_steps, guidance_scale,
    images_per_prompt, seed, max_images, ...); None keeps the project's last setting.
    `model_id`, a diffusers hub id or local folder, replaces the `generator` choice."""
    if (model_id or "").strip():
        changes = {**changes, "generator": model_id.strip()}
    with studio.store.sessions() as session:
        project = repo.get_project(session, project_id)
        filter_job = repo.latest_job(session, project_id, JobKind.FILTER)
        if filter_job is None:
            raise ValueError("no prompts yet: caption the candidates in tab 3 first")
        prompts = [p for p in repo.list_prompts(session, project_id, job_id=filter_job.id,
                                                kept_only=True) if p.text.strip()]
        samples = repo.samples_by_ids(session, {p.sample_id for p in prompts if p.sample_id})
        settings = project.settings
    if not prompts:
        raise ValueError("no prompt is kept: tick keep on some prompts in tab 3")
    config = project_config(studio.store.workspace, settings).with_changes(changes)
    save_project_config(studio.store, project_id, config)
    if config.max_images:
        prompts = prompts[: max(1, config.max_images // config.images_per_prompt)]
    params = {"generator": config.generator, "steps": config.gen_steps,
              "guidance_scale": config.guidance_scale, "seed": config.seed,
              "images_per_prompt": config.images_per_prompt, "max_images": config.max_images,
              "filter_job_id": filter_job.id, "n_prompts": len(prompts)}
    positions = {p.id: samples[p.sample_id].position if p.sample_id in samples else -1
                 for p in prompts}

    def work(progress: JobProgress) -> JobOutcome:
        return _generate(studio, project_id, config, prompts, positions, progress)

    studio.jobs.run(project_id, JobKind.GENERATE, params, work, ui=ui)
    return generation_view(studio, project_id)


def _generate(studio: Studio, project_id: int, config, prompts, positions: dict[int, int],
              progress: JobProgress) -> JobOutcome:
    from diffubias.diffusion import DiffusionSettings
    from diffubias.generation import make_generator
    from diffubias.text_filter import Prompt

    data = studio.datasets.get(project_id)
    class_names = data.ds.class_names
    start = time.perf_counter()
    progress(0.0, f"loading generator {config.generator}")
    settings = DiffusionSettings(steps=config.gen_steps, guidance_scale=config.guidance_scale,
                                 negative_prompt=config.negative_prompt,
                                 batch_size=config.gen_batch_size, width=config.gen_width,
                                 height=config.gen_height)
    generator = make_generator(config.generator, dataset_name=data.ds.name,
                               class_names=class_names, settings=settings, device=config.device,
                               dtype=config.model_dtype, offload=config.offload,
                               compile_mode=config.compile_mode)
    loaded = time.perf_counter()
    request = {"generator": config.generator, "seed": config.seed,
               "images_per_prompt": config.images_per_prompt,
               **({} if config.generator == "demo" else asdict(settings))}
    request.pop("batch_size", None)  # speed only
    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        existing: dict[int, list] = {}
        for image in repo.list_generated_images(session, prompt_ids=[p.id for p in prompts]):
            existing.setdefault(image.prompt_id, []).append(image)
    n_new = n_kept = 0
    pending: list[tuple[int, list, list[tuple[Any, Any]]]] = []  # written, not yet stored
    for i, prompt in enumerate(prompts):
        before = existing.get(prompt.id, [])
        if (len(before) == config.images_per_prompt
                and all(img.params.get("request") == request for img in before)):
            n_kept += len(before)
        else:
            prompt_seed = config.seed * SEED_STRIDE + prompt.id
            images = generator.generate(
                [Prompt(prompt.text, prompt.label, positions[prompt.id], ())],
                images_per_prompt=config.images_per_prompt, seed=prompt_seed)
            written = []
            for image in images:
                path = workspace.path_for("generated", progress.job_id, class_names[prompt.label],
                                          f"p{prompt.id}_s{image.seed}.png")
                atomic_write_bytes(path, _png(image.image))
                written.append((path, image))
            pending.append((prompt.id, before, written))
            n_new += len(written)
        if len(pending) >= 32 or i == len(prompts) - 1:
            progress.check()
            _store_images(studio, progress.job_id, request, pending)
            pending = []
        progress((i + 1) / len(prompts), f"prompt {i + 1}/{len(prompts)}: {n_new} new images")
    result = {"backend": generator.backend, "model": getattr(generator, "model", None)
              or f"builtin:{getattr(generator, 'dataset', '')}", "n_prompts": len(prompts),
              "n_new": n_new, "n_kept": n_kept, "n_images": n_new + n_kept, "request": request}
    return JobOutcome(result, {"load_generator": loaded - start,
                               "generation": time.perf_counter() - loaded})


def _store_images(studio: Studio, job_id: int, request: dict,
                  pending: list[tuple[int, list, list[tuple[Any, Any]]]]) -> None:
    """One transaction: drop each prompt's images from another request, record the new ones;
    then delete the dropped images' files (after the commit: a crash in between leaves files
    no row points at, which the next start removes, never a row without its file)."""
    workspace = studio.store.workspace
    with studio.store.sessions.begin() as session:
        for prompt_id, replaced, written in pending:
            repo.delete_generated_images(session, [image.id for image in replaced])
            for path, image in written:
                repo.add_generated_image(
                    session, job_id=job_id, prompt_id=prompt_id, path=workspace.relative(path),
                    seed=int(image.seed), model=image.model or image.backend,
                    params={"request": request, "backend": image.backend, **dict(image.params)})
    for _, replaced, _ in pending:
        for image in replaced:
            workspace.resolve(image.path).unlink(missing_ok=True)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def current_images(session, project_id: int):
    """(kept prompts of the current table, their images) - what training would use."""
    filter_job = repo.latest_job(session, project_id, JobKind.FILTER)
    if filter_job is None:
        return [], []
    prompts = repo.list_prompts(session, project_id, job_id=filter_job.id, kept_only=True)
    images = repo.list_generated_images(session, prompt_ids=[p.id for p in prompts])
    return prompts, images


def generation_view(studio: Studio, project_id: int | None, *, page: int = 1,
                    prompts_per_page: int = PROMPTS_PER_PAGE) -> GenerationView:
    empty = GenerationView(None, "", None, 0, 0, 0, 0, [], [], 4, 1, 1, {})
    if project_id is None:
        return empty
    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        project = repo.get_project(session, int(project_id))
        if project is None:
            return empty
        job = repo.latest_job(session, project.id, JobKind.GENERATE)
        prompts, images = current_images(session, project.id)
    by_prompt: dict[int, list] = {}
    for image in images:
        by_prompt.setdefault(image.prompt_id, []).append(image)
    shown = [p for p in prompts if p.id in by_prompt]
    n_pages = max(1, math.ceil(len(shown) / prompts_per_page))
    page = min(max(1, int(page)), n_pages)
    columns = max((len(v) for v in by_prompt.values()), default=4)
    tiles, ids = [], []
    for prompt in shown[(page - 1) * prompts_per_page: page * prompts_per_page]:
        for j, image in enumerate(sorted(by_prompt[prompt.id], key=lambda im: im.seed)):
            mark = {True: "✓ ", False: "✗ rejected · ", None: ""}[image.accepted]
            text = f"#{prompt.id} {project.class_names[prompt.label]}: {prompt.text}"
            tiles.append((str(thumbnail(workspace, workspace.resolve(image.path), "generated",
                                        image.id)), mark + (text if j == 0 else f"#{prompt.id}")))
            ids.append(image.id)
    return GenerationView(
        job.id if job else None, job.result.get("backend", "") if job else "",
        job.result.get("model") if job else None, len(prompts), len(images),
        sum(1 for im in images if im.accepted is True),
        sum(1 for im in images if im.accepted is False), tiles, ids, columns, page, n_pages,
        dict(job.params) if job else {})


def image_detail(studio: Studio, project_id: int, image_id: int) -> ImageDetail:
    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        image = repo.get_generated_image(session, int(image_id))
        prompt = repo.get_prompt(session, image.prompt_id) if image else None
        if image is None or prompt is None or prompt.project_id != int(project_id):
            raise ValueError(f"generated image {image_id} is not in this project")
        project = repo.get_project(session, int(project_id))
    large = thumbnail(workspace, workspace.resolve(image.path), "generated", "large", image.id,
                      size=LARGE_PX, fmt="png")
    return ImageDetail(image.id, str(large), prompt.id, prompt.text,
                       project.class_names[prompt.label], image.seed, image.model,
                       image.accepted)


def review_images(studio: Studio, project_id: int, image_ids: list[int],
                  accepted: bool | None) -> int:
    """Accept (True), reject (False) or un-review (None) images of this project."""
    with studio.store.sessions.begin() as session:
        _, images = current_images(session, int(project_id))
        known = {im.id for im in images}
        unknown = [i for i in image_ids if int(i) not in known]
        if unknown:
            raise ValueError(f"image(s) {unknown} are not among this project's current images")
        return repo.set_images_accepted(session, [int(i) for i in image_ids], accepted)


def review_prompt(studio: Studio, project_id: int, image_id: int, accepted: bool | None) -> int:
    """Review every image of the prompt that `image_id` came from."""
    with studio.store.sessions() as session:
        image = repo.get_generated_image(session, int(image_id))
        if image is None:
            raise ValueError(f"generated image {image_id} does not exist")
        siblings = [im.id for im in repo.list_generated_images(session,
                                                               prompt_ids=[image.prompt_id])]
    return review_images(studio, project_id, siblings, accepted)
