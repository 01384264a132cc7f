"""The run configuration: every knob of a DiffuBias run in one frozen dataclass.

It is written to `config.json` in the run folder, so single-stage commands re-read exactly what
the run used. It knows nothing of how stages use it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

# the baselines the `debias` stage can train next to vanilla and DiffuBias; diffubias.baselines
# implements them (a test checks the two lists agree)
BASELINES = ("lff", "jtt", "oversample-topk", "diffubias-no-filter")


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
    # stage 2: biased model
    biased_epochs: int = 3
    gce_q: float = 0.7
    # stage 3: candidates; a number >= 1 is a count per class, in (0, 1) a fraction of the class
    top_k: float = 0.02
    # stages 4-5: captions and text filter
    captioner: str = "metadata"
    captions_per_image: int = 3
    top_f: int = 0  # 0: 2 x number of classes, as in the paper
    extra_stop_words: tuple[str, ...] = ()
    # stage 6: generation
    generator: str = "demo"
    images_per_prompt: int = 6
    max_images: int = 0  # 0: no cap
    # stage 7: debiased and vanilla models
    debias_epochs: int = 12
    # baselines trained and reported next to vanilla and DiffuBias (names of
    # diffubias.baselines.METHODS: lff, jtt, oversample-topk, diffubias-no-filter)
    baselines: tuple[str, ...] = ()
    # stage 9: Grad-CAM
    cam_method: str = "gradcam"
    cam_samples: int = 200  # test samples whose CAM mass is measured
    cam_sheet_rows: int = 12
    # model captioners, diffusion generation, bias keywords (the model ids go in `captioner` and
    # `generator`); validated where they are used (diffubias.hf_captioners, diffubias.diffusion)
    caption_instruction: str = "Describe this image in one sentence."  # VLM captioners only
    caption_batch_size: int = 16  # images per generate() call
    caption_max_new_tokens: int = 40
    keywords_top_n: int = 10  # bias keywords per class; 0: no keywords, no aligned captions
    gen_steps: int = 25  # DPM-Solver on UNet pipelines; SD 3.x's own scheduler wants ~28
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    gen_batch_size: int = 8  # images per pipeline call; halved on CUDA out-of-memory
    gen_width: int = 0  # 0: the pipeline's default size
    gen_height: int = 0
    model_dtype: str = "auto"  # auto: bf16 on CUDA (fp16 without bf16 support), fp32 on CPU
    offload: str = "none"  # none, model (enable_model_cpu_offload) or sequential; CUDA only
    compile_mode: str = ""  # "": no torch.compile; else a mode, e.g. default, max-autotune

    def __post_init__(self) -> None:
        if not 0 < self.conflict_ratio < 1:
            raise ValueError(f"conflict_ratio must be in (0, 1), got {self.conflict_ratio}")
        for name in ("biased_epochs", "debias_epochs", "batch_size", "captions_per_image",
                     "images_per_prompt", "cam_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("image_size", "top_f", "max_images", "cam_sheet_rows"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not self.top_k > 0:
            raise ValueError(f"top_k must be positive, got {self.top_k}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baselines {unknown}; choose from {', '.join(BASELINES)}")

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
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def with_overrides(self, **changes) -> RunConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
