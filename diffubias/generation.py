"""Generation's shared vocabulary: the plan of work items, the Generator protocol, and the
oracle renderer.

Every generated image is one `WorkItem`: a prompt, the prompt's stable id (a hash of its text,
source sample and label), the image's index under that prompt, and its seed. The seed depends on
nothing but (run seed, prompt id, image index), so the command line and the app draw the same
image for the same prompt, a resumed run redraws nothing that exists, and editing one prompt
changes no other prompt's images. A generator turns items into images: real text-to-image
pipelines (diffusers, `diffubias.diffusion`, including the project's own `builtin-ldm`) and the
`oracle-renderer`, an UPPER BOUND for the built-in datasets that draws with the dataset's own
generator and, where a prompt names no class, the sample's label: what no model could know.

Knows nothing of where images are written (`diffubias.stages.generate` and its sinks do that).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image
from tqdm.auto import tqdm

from diffubias.progress import ProgressFn, report
from diffubias.text_filter import Prompt
from diffubias.text_safety import check_prompt_text


@dataclass(frozen=True)
class WorkItem:
    """One output image: which prompt, which of its images, and the seed that draws it."""

    prompt: Prompt
    prompt_id: str
    image_index: int  # 0 .. images_per_prompt - 1
    seed: int

    @property
    def key(self) -> str:
        """The image's name in every store: unique per (prompt, seed)."""
        return f"{self.prompt_id}_s{self.seed}"


def prompt_id(prompt: Prompt) -> str:
    """A stable id of (text, source sample, label): editing other prompts never changes it."""
    key = f"{prompt.label}\x1f{prompt.source}\x1f{prompt.text}".encode()
    return hashlib.sha1(key).hexdigest()[:12]


def item_seed(base_seed: int, pid: str, image_index: int) -> int:
    """The seed of image `image_index` of prompt `pid`: a hash of the run seed, the prompt id and
    the index, so it is stable when prompts are added, removed, reordered or given more images."""
    digest = hashlib.sha256(f"{base_seed}:{pid}:{image_index}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFF_FFFF


def check_generation_inputs(prompts: Sequence[Prompt], images_per_prompt: int) -> None:
    if not prompts:
        raise ValueError("no prompts to generate from: keep at least one prompt")
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be at least 1, got {images_per_prompt}")
    for i, prompt in enumerate(prompts):
        check_prompt_text(prompt.text, where=f"prompt {i + 1}")


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


class Generator(Protocol):
    """Draws the image of each work item with the item's seed alone."""

    backend: str

    def describe(self) -> dict:
        """{"backend", "model", "params"}: what produced an image, recorded with every image."""
        ...

    def generate_items(self, items: Sequence[WorkItem], *, progress: ProgressFn | None = None
                       ) -> Iterator[tuple[WorkItem, Image.Image | None]]:
        """(item, image) per item, in order; None where a safety checker blacked it out."""
        ...


@dataclass(frozen=True)
class OracleRenderer:
    """Renders prompts for a built-in dataset with its own generator, reading the sample's label
    where the prompt names no class: an oracle (upper bound), not a model."""

    dataset: str  # built-in name, e.g. "colored-digits"
    class_names: tuple[str, ...]
    backend: str = "oracle-renderer"

    def describe(self) -> dict:
        return {"backend": self.backend, "model": f"builtin:{self.dataset}", "params": {}}

    def generate_items(self, items: Sequence[WorkItem], *, progress: ProgressFn | None = None
                       ) -> Iterator[tuple[WorkItem, Image.Image | None]]:
        from diffubias.builtin import get_renderer

        renderer = get_renderer(self.dataset)
        for i, item in enumerate(tqdm(items, desc="generate", leave=False)):
            yield item, renderer.render(item.prompt.text,
                                        label_name=self.class_names[item.prompt.label],
                                        seed=item.seed)
            report(progress, (i + 1) / len(items), "generating images")


def encode_png(image: Image.Image) -> bytes:
    """The one PNG encoding of a generated image, so every store holds the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
