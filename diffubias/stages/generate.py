"""Stage 6, generate: images from the kept prompts, one plan, one seed scheme, one resume path.

The prompts are first made final (`prompts_to_generate`): capped by `max_images`, and anchored
to their class where they do not name it (`diffubias.anchoring`); every image records its final
prompt.

`generate_images` plans one `WorkItem` per (prompt, image index) with its seed
(`diffubias.generation.plan_images`), asks the sink which items it already holds, draws the rest
with the injected generator and hands each image to the sink as soon as it exists, committing
every `commit_every` images. A sink is where images live: a run folder
(`diffubias.generated_folder.FolderSink`), the app's store (`ui.generate_service`), or memory
(`MemorySink`, for the baselines). Because the plan and the seeds are the same for every sink,
the command line and the app produce the same images for the same prompts and seed.

Knows nothing of files, tables or processes; `share` lets a caller keep only its part of the
missing items (one process of several).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from PIL import Image

from diffubias.anchoring import anchor_all, synonyms_for
from diffubias.builtin import class_words
from diffubias.config import RunConfig
from diffubias.generation import Generator, WorkItem, plan_images
from diffubias.progress import ProgressFn, report
from diffubias.text_filter import Prompt


class ImageSink:
    """Where generated images go. Subclasses override the three methods."""

    def existing(self, items: Sequence[WorkItem]) -> Collection[str]:
        """Told the whole plan, the keys of the images it already holds (made with the same
        generator settings); a sink may drop what it holds outside the plan."""
        return ()

    def add(self, item: WorkItem, image: Image.Image | None) -> None:
        """Stores one image (None: blocked by a safety checker)."""
        raise NotImplementedError

    def commit(self) -> None:
        """Makes the images added so far durable, all or none."""


@dataclass(eq=False)
class MemorySink(ImageSink):
    """Keeps the images in memory, in plan order (blocked images are left out)."""

    images: list[tuple[WorkItem, Image.Image]] = field(default_factory=list)

    def add(self, item: WorkItem, image: Image.Image | None) -> None:
        if image is not None:
            self.images.append((item, image))


@dataclass(frozen=True)
class Generation:
    """What one call planned and did."""

    items: tuple[WorkItem, ...]  # every planned image, in plan order
    n_new: int  # drawn by this call (this process's share only)
    n_existing: int  # planned images the sink already held
    n_blocked: int  # of the new ones, blacked out by a safety checker
    description: dict  # the generator's backend, model and parameters

    @property
    def keys(self) -> list[str]:
        return [item.key for item in self.items]


def capped(prompts: Sequence, config: RunConfig) -> list:
    """The prompts (any rows) a run generates from: all, or the first ones that `max_images`
    allows."""
    if config.max_images:
        return list(prompts[: max(1, config.max_images // config.images_per_prompt)])
    return list(prompts)


def class_synonyms(config: RunConfig, class_names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Every class's other words in this run: the dataset's own (a built-in's numerals and
    plurals, `diffubias.builtin.class_words`), then the person's `class_synonyms`, whose classes
    must be among `class_names`. What anchoring and the class check count as naming a class."""
    return synonyms_for(config.class_synonyms, class_names, class_words(config.dataset))


def anchored_texts(texts_and_labels: Sequence[tuple[str, int]], config: RunConfig,
                   class_names: Sequence[str]) -> list[str]:
    """Each (text, label) as the generator gets it: anchored to its class through
    `config.prompt_template` where it does not name the class or one of `class_synonyms`."""
    return anchor_all(texts_and_labels, class_names, template=config.prompt_template,
                      synonyms_text=config.class_synonyms, known=class_words(config.dataset))


def anchored(prompts: Sequence[Prompt], config: RunConfig, class_names: Sequence[str]
             ) -> list[Prompt]:
    """`prompts` as the generator gets them (`anchored_texts`); those that name their class
    unchanged."""
    texts = anchored_texts([(p.text, p.label) for p in prompts], config, class_names)
    return [p if text == p.text else Prompt(text, p.label, p.source, p.matched_words)
            for p, text in zip(prompts, texts, strict=True)]


def prompts_to_generate(prompts: Sequence[Prompt], config: RunConfig, *,
                        class_names: Sequence[str]) -> list[Prompt]:
    """The final prompts of a run: capped by `max_images`, then class-anchored. Applying it
    again changes nothing."""
    return anchored(capped(prompts, config), config, class_names)


def generate_images(generator: Generator, prompts: Sequence[Prompt], config: RunConfig, *,
                    class_names: Sequence[str], sink: ImageSink,
                    progress: ProgressFn | None = None,
                    share: Callable[[list[WorkItem]], list[WorkItem]] | None = None,
                    commit_every: int = 64) -> Generation:
    """Draws every planned image of `prompts` that `sink` does not hold yet.

    1. plan: `images_per_prompt` items per final prompt (capped by `max_images`, anchored to
       its class, `prompts_to_generate`), seeded from `config.seed` and the prompt id;
    2. resume: drop the items the sink already holds, keep this process's `share` of the rest;
    3. draw each item and add it to the sink, committing every `commit_every` images and at the end.
    """
    items = plan_images(prompts_to_generate(prompts, config, class_names=class_names),
                        images_per_prompt=config.images_per_prompt, seed=config.seed)
    held = set(sink.existing(items))
    missing = [item for item in items if item.key not in held]
    todo = share(missing) if share is not None else missing
    n_new = n_blocked = 0
    report(progress, 0.0, f"{len(items) - len(todo)} of {len(items)} images already made")
    for item, image in generator.generate_items(todo, progress=progress):
        sink.add(item, image)
        n_new += 1
        n_blocked += image is None
        if n_new % commit_every == 0:
            sink.commit()
    sink.commit()
    return Generation(tuple(items), n_new, len(items) - len(missing), n_blocked,
                      generator.describe())
