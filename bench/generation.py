"""Batched vs one-at-a-time: diffusion generation and model captioning, side by side in one run.

Usage: python bench/generation.py [--prompts 16] [--images-per-prompt 4] [--batch 16] [--threads 1]
Writes the `generation` and `captioning` sections of docs/BENCHMARKS.md.

Generation: the same tiny random Stable Diffusion pipeline (tests/tiny_models.py, 32 px), the
same prompts and the same per-image seeds, called one prompt per call (the reference code's
loop) and in batches of `--batch`; both go through DiffusersGenerator, so only the batch size
differs, and the images are compared. Captioning: a tiny random BLIP on the same images, one
image per generate() call vs `--batch` images per call, 3 sampled captions each. Each timing is
the best of `--repeats` interleaved runs after a warm-up, so other load on the machine inflates
neither side more than the other.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests"), str(ROOT)]
from markdown import machine_line, write_section  # noqa: E402
from tiny_models import build_tiny_blip, build_tiny_sd, write_tiny_dataset  # noqa: E402

from diffubias.backends import make_captioner  # noqa: E402
from diffubias.dataset_sources import load_dataset  # noqa: E402
from diffubias.diffusion import (DiffusersGenerator, DiffusionSettings,  # noqa: E402
                                 load_diffusers_generator)
from diffubias.generation import plan_images  # noqa: E402
from diffubias.hf_captioners import CaptionSettings, ModelCaptioner  # noqa: E402
from diffubias.text_filter import Prompt  # noqa: E402

COMMAND = "python bench/generation.py"
WORDS = ("red", "green", "blue", "small", "large", "striped")


def best_of(repeats: int, runs: dict) -> dict[str, float]:
    """Best wall time of each named callable, runs interleaved."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_generation(work: Path, args) -> str:
    batched = load_diffusers_generator(str(build_tiny_sd(work / "sd")), device="cpu",
                                       settings=DiffusionSettings(steps=args.steps,
                                                                  batch_size=args.batch))
    loop = DiffusersGenerator(batched.pipe, batched.model,
                              DiffusionSettings(steps=args.steps, batch_size=1))
    prompts = [Prompt(f"a {WORDS[i % len(WORDS)]} {'cat' if i % 2 else 'dog'} number {i}",
                      i % 2, i, ()) for i in range(args.prompts)]
    n = args.prompts * args.images_per_prompt
    out = {}

    def draw(generator, some, per_prompt):
        items = plan_images(some, images_per_prompt=per_prompt, seed=0)
        return [image for _, image in generator.generate_items(items)]

    def run(name, generator):
        def go():
            out[name] = draw(generator, prompts, args.images_per_prompt)
        return go

    draw(loop, prompts[:1], 1)  # warm-up, both shapes
    draw(batched, prompts[:1], args.batch)
    t = best_of(args.repeats, {"loop": run("loop", loop), "batched": run("batched", batched)})
    diff = max(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b)).max()
               for a, b in zip(out["loop"], out["batched"]))
    return "\n".join([
        "## Generation: batched vs one prompt per call (CPU, tiny pipeline)", "",
        f"Measured by `{COMMAND}` on {machine_line()}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads. Tiny random Stable Diffusion pipeline "
        f"(tests/tiny_models.py: UNet and VAE 16/32 wide, 32 px), DPM-Solver, {args.steps} steps, "
        f"{args.prompts} prompts x {args.images_per_prompt} images = {n} images, one seeded "
        f"CPU generator per image; best of {args.repeats} interleaved runs after a warm-up.", "",
        "| mode | images per call | calls | seconds | images/s |", "|---|---|---|---|---|",
        f"| one prompt per call (reference loop) | 1 | {n} | {t['loop']:.2f} | "
        f"{n / t['loop']:.1f} |",
        f"| batched | {args.batch} | {-(-n // args.batch)} | {t['batched']:.2f} | "
        f"{n / t['batched']:.1f} |", "",
        f"**Speed-up: {t['loop'] / t['batched']:.1f}x** images/s (goal: at least 3x). Same seeds, "
        f"same images: largest pixel difference between the two runs {diff}/255 (float "
        "rounding in batched kernels).", "",
        "A real pipeline on a GPU is compute-bound per image, so the gain there is smaller and "
        "comes from filling the GPU; `bench/gpu_check.sh` measures it on a lent GPU."])


def bench_captioning(work: Path, args) -> str:
    ds = load_dataset(str(write_tiny_dataset(work / "data", n_train=args.caption_images // 2 - 4)),
                      cache_dir=work / "cache")
    positions = list(range(len(ds.paths)))
    base = make_captioner(str(build_tiny_blip(work / "blip")), per_image=3, batch_size=args.batch,
                          max_new_tokens=20, device="cpu")
    one = ModelCaptioner(base.model, base.processor, base.model_name, base.kind,
                         CaptionSettings(per_image=3, batch_size=1, max_new_tokens=20))
    base.caption(ds, positions[:args.batch])  # warm-up
    one.caption(ds, positions[:1])
    t = best_of(args.repeats, {"loop": lambda: one.caption(ds, positions),
                               "batched": lambda: base.caption(ds, positions)})
    n = len(positions)
    return "\n".join([
        "## Captioning: batched vs one image per call (CPU, tiny BLIP)", "",
        f"Measured by `{COMMAND}` on {machine_line()}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads. Tiny random BLIP (tests/tiny_models.py: 16 wide, "
        f"2 layers, 32 px), {n} images, 3 sampled captions each (num_return_sequences=3), up to "
        f"20 new tokens; best of {args.repeats} interleaved runs after a warm-up.", "",
        "| mode | images per call | calls | seconds | images/s |", "|---|---|---|---|---|",
        f"| one image per call | 1 | {n} | {t['loop']:.2f} | {n / t['loop']:.1f} |",
        f"| batched | {args.batch} | {-(-n // args.batch)} | {t['batched']:.2f} | "
        f"{n / t['batched']:.1f} |", "",
        f"**Speed-up: {t['loop'] / t['batched']:.1f}x** images/s (goal: at least 3x). Sampled "
        "captions depend on the batch's random draws, so the two runs' texts differ; counts "
        "and order do not."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--caption-images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine, OpenMP "
                             "threads spin-waiting on busy cores make timings erratic)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_section("generation", bench_generation(work, args))
        path = write_section("captioning", bench_captioning(work, args))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
