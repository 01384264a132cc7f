"""The captioner and generator factories: the one place a backend is built from its name.

`captioner_for(config)` and `generator_for(config, ...)` build what a `RunConfig` names; both
front ends and the baselines call them, so a model is loaded with the same options everywhere.
`make_captioner` and `make_generator` take the options one by one (tests, benchmarks). Names:
`metadata` (captions shipped with the dataset) or a transformers captioner (`blip`, `llava`, a hub
id or a local folder); `demo` (the built-in datasets' renderer) or a diffusers pipeline (`sd15`,
`sdxl`, `sd35`, a hub id or a local folder). Model modules are imported only when a model is
asked for, so listing names and building `metadata`/`demo` never imports transformers or
diffusers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from diffubias.captions import Captioner, MetadataCaptioner
from diffubias.config import RunConfig
from diffubias.generation import DemoGenerator, Generator

Log = Callable[[str], None]


def captioner_names() -> list[str]:
    """`metadata` plus the short names of the model captioners."""
    from diffubias.hf_captioners import CAPTION_MODELS

    return ["metadata", *CAPTION_MODELS]


def generator_names() -> list[str]:
    """`demo` plus the short names of the diffusion pipelines."""
    from diffubias.diffusion import GENERATOR_MODELS

    return ["demo", *GENERATOR_MODELS]


def make_captioner(name: str, *, per_image: int = 3, instruction: str | None = None,
                   batch_size: int = 16, max_new_tokens: int = 40, seed: int = 0,
                   device: str = "auto", dtype: str = "auto") -> Captioner:
    """A captioner by name: `metadata`, or a BLIP / image-text-to-text VLM by hub id, local
    folder or short name (blip, blip-base, llava, llava-llama3); see diffubias.hf_captioners.

    `instruction` is the VLM prompt (None: the default); the other options apply to models only.
    """
    if name == "metadata":
        return MetadataCaptioner(per_image=per_image)
    from diffubias.hf_captioners import CaptionSettings, load_captioner

    settings = CaptionSettings(per_image=per_image, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, seed=seed,
                               **({"instruction": instruction} if instruction else {}))
    return load_captioner(name, settings=settings, device=device, dtype=dtype)


def make_generator(name: str, *, dataset_name: str, class_names: Sequence[str],
                   settings=None, device: str = "auto", dtype: str = "auto",
                   offload: str = "none", compile_mode: str = "",
                   log: Log | None = None) -> Generator:
    """A generator by name: `demo` (built-in datasets only), or any diffusers text-to-image
    pipeline by hub id, local folder or short name (sd15, sdxl, sd35); `settings` (a
    `diffubias.diffusion.DiffusionSettings`) and the keyword options apply to diffusers only."""
    if name == "demo":
        if not dataset_name.startswith("builtin:"):
            raise ValueError(
                f"the demo generator renders only the built-in datasets, not {dataset_name!r}; "
                "use a diffusion model generator, or run `detect` for detection only")
        return DemoGenerator(dataset_name.removeprefix("builtin:"), tuple(class_names))
    from diffubias.diffusion import load_diffusers_generator

    return load_diffusers_generator(name, settings=settings, device=device, dtype=dtype,
                                    offload=offload, compile_mode=compile_mode, log=log)


def captioner_for(config: RunConfig) -> Captioner:
    """The captioner `config.captioner` names, with the run's caption settings."""
    return make_captioner(config.captioner, per_image=config.captions_per_image,
                          instruction=config.caption_instruction,
                          batch_size=config.caption_batch_size,
                          max_new_tokens=config.caption_max_new_tokens, seed=config.seed,
                          device=config.device, dtype=config.model_dtype)


def generator_for(config: RunConfig, *, dataset_name: str, class_names: Sequence[str],
                  log: Log | None = None) -> Generator:
    """The generator `config.generator` names, with the run's diffusion settings."""
    settings = None
    if config.generator != "demo":
        from diffubias.diffusion import DiffusionSettings

        settings = DiffusionSettings(steps=config.gen_steps, guidance_scale=config.guidance_scale,
                                     negative_prompt=config.negative_prompt,
                                     batch_size=config.gen_batch_size, width=config.gen_width,
                                     height=config.gen_height)
    return make_generator(config.generator, dataset_name=dataset_name, class_names=class_names,
                          settings=settings, device=config.device, dtype=config.model_dtype,
                          offload=config.offload, compile_mode=config.compile_mode, log=log)
