"""The generate stage: one plan, one seed per (prompt, image index), resume through any sink."""

from __future__ import annotations

import pytest
from PIL import Image

from diffubias.config import RunConfig
from diffubias.generation import plan_images
from diffubias.stages.generate import ImageSink, MemorySink, generate_images, prompts_to_generate
from diffubias.text_filter import Prompt

PROMPTS = [Prompt(f"a prompt number {i}", i % 2, 10 + i, ()) for i in range(5)]
CLASSES = ("prompt", "number")  # every text names its class: anchoring leaves them as they are


class CountingGenerator:
    """Weight-free: paints each image from its seed; counts what it was asked to draw."""

    backend = "counting"

    def __init__(self):
        self.drawn = []

    def describe(self):
        return {"backend": self.backend, "model": None, "params": {}}

    def generate_items(self, items, *, progress=None):
        for item in items:
            self.drawn.append(item.key)
            yield item, Image.new("RGB", (4, 4), (item.seed % 256, 0, 0))


class DictSink(ImageSink):
    """Holds images by key and records when it was committed."""

    def __init__(self, held=()):
        self.held, self.pending, self.commits, self.plan = dict.fromkeys(held), [], [], None

    def existing(self, items):
        self.plan = [item.key for item in items]
        return [key for key in self.held if key in self.plan]

    def add(self, item, image):
        self.pending.append(item.key)

    def commit(self):
        self.commits.append(len(self.pending))
        self.held.update(dict.fromkeys(self.pending))
        self.pending = []


def test_the_plan_decides_seeds_and_a_sink_that_holds_images_is_not_redrawn():
    config = RunConfig(images_per_prompt=2, seed=4)
    first = DictSink()
    result = generate_images(CountingGenerator(), PROMPTS, config, class_names=CLASSES,
                             sink=first, commit_every=3)
    planned = plan_images(PROMPTS, images_per_prompt=2, seed=4)
    assert result.keys == [item.key for item in planned] == first.plan
    assert (result.n_new, result.n_existing, result.n_blocked) == (10, 0, 0)
    assert first.commits == [3, 3, 3, 1]  # every commit_every images, then the rest
    again = CountingGenerator()
    resumed = generate_images(again, PROMPTS, config, class_names=CLASSES, sink=first)
    assert (resumed.n_new, resumed.n_existing) == (0, 10) and again.drawn == []


def test_more_images_per_prompt_keep_the_existing_seeds():
    sink = DictSink()
    generate_images(CountingGenerator(), PROMPTS, RunConfig(images_per_prompt=1),
                    class_names=CLASSES, sink=sink)
    more = CountingGenerator()
    result = generate_images(more, PROMPTS, RunConfig(images_per_prompt=3), class_names=CLASSES,
                             sink=sink)
    assert (result.n_existing, result.n_new) == (5, 10)
    assert all(key not in sink.plan[::3] for key in more.drawn)  # index 0 of each is kept


def test_max_images_caps_the_prompts_and_share_keeps_a_part():
    config = RunConfig(images_per_prompt=2, max_images=4)
    assert prompts_to_generate(PROMPTS, config, class_names=CLASSES) == PROMPTS[:2]
    sink = MemorySink()
    result = generate_images(CountingGenerator(), PROMPTS, config, class_names=CLASSES, sink=sink,
                             share=lambda todo: todo[:1])
    assert len(result.items) == 4 and result.n_new == 1 and len(sink.images) == 1


def test_same_prompts_same_images_in_any_sink():
    config = RunConfig(images_per_prompt=2, seed=9)
    a, b = MemorySink(), MemorySink()
    generate_images(CountingGenerator(), PROMPTS, config, class_names=CLASSES, sink=a)
    generate_images(CountingGenerator(), list(reversed(PROMPTS)), config, class_names=CLASSES,
                    sink=b)
    by_key = {item.key: image.tobytes() for item, image in b.images}
    assert {item.key: image.tobytes() for item, image in a.images} == by_key


def test_no_prompts_is_refused():
    with pytest.raises(ValueError, match="no prompts"):
        generate_images(CountingGenerator(), [], RunConfig(), class_names=CLASSES,
                        sink=MemorySink())


def test_a_prompt_without_its_class_is_anchored_and_the_plan_records_the_final_text():
    """The generator gets the class through the template; the item (so the manifest and the
    database) records that final text; a prompt naming its class is left alone."""
    prompts = [Prompt("a red digit on a black background", 0, 1, ()),
               Prompt("a blue 8 on black", 1, 2, ()), Prompt("a green seven", 0, 3, ())]
    config = RunConfig(images_per_prompt=1, class_synonyms="eight: 8")
    sink = MemorySink()
    generate_images(CountingGenerator(), prompts, config, class_names=("seven", "eight"),
                    sink=sink)
    assert [item.prompt.text for item, _ in sink.images] == [
        "a red digit on a black background, a seven", "a blue 8 on black", "a green seven"]
    final = prompts_to_generate(prompts, config, class_names=("seven", "eight"))
    assert prompts_to_generate(final, config, class_names=("seven", "eight")) == final
    off = prompts_to_generate(prompts, RunConfig(prompt_template=""),
                              class_names=("seven", "eight"))
    assert off == prompts
    with pytest.raises(ValueError, match="unknown classes: nine;"):
        prompts_to_generate(prompts, RunConfig(class_synonyms="nine: 9"),
                            class_names=("seven", "eight"))
