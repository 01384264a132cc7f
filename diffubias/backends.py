"""The captioner and generator factories: the one place a backend is built from its name.

`captioner_for(config)` and `generator_for(config, ...)` build what a `RunConfig` names; both
front ends and the baselines call them, so a model is loaded with the same options everywhere.
`make_captioner` and `make_generator` take the options one by one (tests, benchmarks).

Captioners: `builtin-blip` (the small BLIP this project pretrains for the built-in datasets, the
default), `metadata` (captions shipped with the dataset; on the built-ins an oracle, see
`shipped_models.oracle_note`) or any transformers captioner (`blip`, `llava`, a hub id or a local
folder). Generators: `builtin-ldm` (the project's own latent diffusion model, the default),
`oracle-renderer` (the built-ins' own renderer: an upper bound, not a model) or any diffusers
pipeline (`sd15`, `sdxl`, `sd35`, a hub id or a local folder). Model modules are imported only
when a model is asked for, so listing names and building `metadata`/`oracle-renderer` never
imports transformers or diffusers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from diffubias.captions import Captioner, MetadataCaptioner
from diffubias.config import RunConfig
from diffubias.generation import Generator, OracleRenderer
from diffubias.shipped_models import (AUTO, BASE_CAPTIONERS, BASE_GENERATORS, BUILTIN_CAPTIONER,
                                      BUILTIN_GENERATOR, resolve, shipped_folder)

Log = Callable[[str], None]


def captioner_names() -> list[str]:
    """`auto`, the shipped captioner, `metadata` and the short names of the model captioners."""
    from diffubias.hf_captioners import CAPTION_MODELS

    return [*BASE_CAPTIONERS, *CAPTION_MODELS]


def generator_names() -> list[str]:
    """`auto`, the shipped generator, the oracle renderer and the short names of the diffusion
    pipelines."""
    from diffubias.diffusion import GENERATOR_MODELS

    return [*BASE_GENERATORS, *GENERATOR_MODELS]


def make_captioner(name: str, *, dataset_name: str = "", per_image: int = 3,
                   instruction: str | None = None, batch_size: int = 16,
                   max_new_tokens: int = 40, seed: int = 0, device: str = "auto",
                   dtype: str = "auto") -> Captioner:
    """A captioner by name: `auto` (see shipped_models.resolve), `builtin-blip` (built-in
    datasets; `dataset_name` picks the domain), `metadata`, or a BLIP / image-text-to-text VLM
    by hub id, local folder or short name (blip, blip-base, llava, llava-llama3); see
    diffubias.hf_captioners.

    `instruction` is the VLM prompt (None: the default); the other options apply to models only.
    """
    name = resolve(name, dataset_name, kind="captioner")
    if name == "metadata":
        return MetadataCaptioner(per_image=per_image)
    from diffubias.hf_captioners import CaptionSettings, load_captioner

    if name == BUILTIN_CAPTIONER:
        name = str(shipped_folder(name, dataset_name))
    settings = CaptionSettings(per_image=per_image, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, seed=seed,
                               **({"instruction": instruction} if instruction else {}))
    return load_captioner(name, settings=settings, device=device, dtype=dtype)


def make_generator(name: str, *, dataset_name: str, class_names: Sequence[str],
                   settings=None, device: str = "auto", dtype: str = "auto",
                   offload: str = "none", compile_mode: str = "",
                   log: Log | None = None) -> Generator:
    """A generator by name: `auto` (see shipped_models.resolve), `builtin-ldm` (built-in
    datasets), `oracle-renderer` (built-in datasets; an upper bound, not a model), or any diffusers text-to-image pipeline by hub id,
    local folder or short name (sd15, sdxl, sd35); `settings` (a
    `diffubias.diffusion.DiffusionSettings`) and the keyword options apply to diffusers only."""
    name = resolve(name, dataset_name, kind="generator")
    if name == AUTO:
        raise ValueError(
            f"choose a generator for {dataset_name!r}: a diffusers text-to-image model id or "
            "local folder (e.g. --generator sd15, with its weights in the Hugging Face cache "
            "when offline); the shipped builtin-ldm draws only the built-in datasets")
    if name == "oracle-renderer":
        if not dataset_name.startswith("builtin:"):
            raise ValueError(
                f"the oracle renderer draws only the built-in datasets, not {dataset_name!r}; "
                "use a diffusion model generator, or run `detect` for detection only")
        return OracleRenderer(dataset_name.removeprefix("builtin:"), tuple(class_names))
    from diffubias.diffusion import load_diffusers_generator

    if name == BUILTIN_GENERATOR:
        name = str(shipped_folder(name, dataset_name))

    return load_diffusers_generator(name, settings=settings, device=device, dtype=dtype,
                                    offload=offload, compile_mode=compile_mode, log=log)


def captioner_for(config: RunConfig, *, dataset_name: str) -> Captioner:
    """The captioner `config.captioner` names, with the run's caption settings."""
    return make_captioner(config.captioner, dataset_name=dataset_name,
                          per_image=config.captions_per_image,
                          instruction=config.caption_instruction,
                          batch_size=config.caption_batch_size,
                          max_new_tokens=config.caption_max_new_tokens, seed=config.seed,
                          device=config.device, dtype=config.model_dtype)


def generator_for(config: RunConfig, *, dataset_name: str, class_names: Sequence[str],
                  log: Log | None = None) -> Generator:
    """The generator `config.generator` names, with the run's diffusion settings."""
    name, settings = resolve(config.generator, dataset_name, kind="generator"), None
    if name != "oracle-renderer":
        from diffubias.diffusion import DiffusionSettings

        settings = DiffusionSettings(steps=config.gen_steps, guidance_scale=config.guidance_scale,
                                     negative_prompt=config.negative_prompt,
                                     batch_size=config.gen_batch_size, width=config.gen_width,
                                     height=config.gen_height)
    return make_generator(name, dataset_name=dataset_name, class_names=class_names,
                          settings=settings, device=config.device, dtype=config.model_dtype,
                          offload=config.offload, compile_mode=config.compile_mode, log=log)
