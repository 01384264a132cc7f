"""The models the project trains itself (models/), measured by an independent judge.

Usage: python bench/zoo.py [--seeds 10] [--steps 25,15,10] [--threads 2] [--skip-demo]
(writes the `zoo` section of docs/BENCHMARKS.md).

For each built-in domain with shipped models:
- the judge (`models/<domain>-judge`, a classifier trained on judge-corpus images that no shipped
  model sees) is first scored on real check-corpus images: its own ceiling;
- `builtin-ldm`: for every class x attribute cell, `--seeds` check-corpus captions that name both
  are drawn through `load_diffusers_generator` (the product's path) at each number of steps in
  `--steps`; the judge says how often the image shows the prompt's class and attribute; images/s
  at the product's batch size;
- prompts that name the attribute but no class: the judge's classes should spread over the
  classes (nothing reads a label), so the row gives the share of the most frequent class and the
  share that happens to match the class of the image the caption was written for;
- `builtin-blip`: captions of held-out judge-corpus images (3 per image, sampled as the product
  samples them) naming the image's class and attribute, on all and on bias-conflicting images;
- the demo workload: `python -m diffubias` detect, caption, filter, generate on the demo project
  (builtin:colored-digits, 1 % conflicting, seed 0) with the defaults, each stage timed from
  outside (process start-up and model loading included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from markdown import machine_line, write_section  # noqa: E402

DOMAINS = ("colored-digits", "shape-scenes")
TARGETS = {"colored-digits": 0.90, "shape-scenes": 0.80}  # class and attribute, issue 12
CAPTION_TARGET = 0.90
CAPTION_PER_CELL = {"colored-digits": 2, "shape-scenes": 6}  # 200 / 216 held-out images
DEMO = ["--dataset", "builtin:colored-digits", "--conflict-ratio", "0.01", "--seed", "0"]
DEMO_TARGET_S = 120


def measure_generator(folder: Path, judge, check, *, seeds: int, steps: int) -> dict:
    from diffubias.diffusion import DiffusionSettings, load_diffusers_generator
    from diffubias.zoo.ldm_probe import draw, probe_prompts, score_images

    generator = load_diffusers_generator(str(folder), device="cpu",
                                         settings=DiffusionSettings(steps=steps))
    complete = check.subset(np.flatnonzero(check.complete()))
    prompts = probe_prompts([(c,) for c in complete.captions], complete.labels,
                            complete.attributes, per_cell=seeds, seed=1)
    images, per_second = draw(generator, prompts, seed=1, corpus_size=check.image_size)
    result = score_images(judge, images, prompts, per_second).as_dict()
    result["batch_size"] = generator.settings.batch_size
    return result


def measure_classless(folder: Path, judge, check, *, limit: int = 200) -> dict:
    """Prompts that name the attribute but no class: which classes does the judge see?"""
    from diffubias.diffusion import load_diffusers_generator
    from diffubias.zoo.ldm_probe import ProbePrompt, draw

    rows = [i for i, text in enumerate(check.captions)
            if not check.names_class(text, int(check.labels[i]))
            and check.names_attribute(text, int(check.attributes[i]))][:limit]
    prompts = [ProbePrompt(check.captions[i], int(check.labels[i]), int(check.attributes[i]))
               for i in rows]
    images, _ = draw(load_diffusers_generator(str(folder), device="cpu"), prompts, seed=2,
                     corpus_size=check.image_size)
    classes, attributes = judge.predict(images)
    counts = np.bincount(classes, minlength=len(check.class_names))
    return {"n": len(rows), "examples": [check.captions[i] for i in rows[:3]],
            "top_class_share": float(counts.max() / len(rows)),
            "matches_source_class": float((classes == check.labels[rows]).mean()),
            "chance": 1 / len(check.class_names),
            "attribute_accuracy": float((attributes == check.attributes[rows]).mean())}


def measure_captioner(domain: str, folder: Path, seed: int = 0) -> dict:
    from diffubias.backends import make_captioner
    from diffubias.zoo.corpus import make_corpus
    from diffubias.zoo.quality import caption_quality

    held_out = make_corpus(domain, role="judge", per_cell=CAPTION_PER_CELL[domain], seed=seed)
    captioner = make_captioner(str(folder), per_image=3, device="cpu")
    start = time.perf_counter()
    everything = caption_quality(captioner, held_out)
    seconds = time.perf_counter() - start
    conflicting = caption_quality(captioner, held_out.subset(
        np.flatnonzero(held_out.attributes != held_out.labels)))
    return {"all": everything.to_dict(), "conflicting": conflicting.to_dict(),
            "images_per_second": everything.images / seconds}


def measure_domain(domain: str, models: Path, *, seeds: int, steps: list[int]) -> dict:
    from diffubias.zoo.corpus import make_corpus
    from diffubias.zoo.ldm_probe import ZooJudge

    judge = ZooJudge.load(str(models / f"{domain}-judge"))
    check = make_corpus(domain, role="check", per_cell=seeds, seed=0)
    classes, attributes = judge.predict(check.images)
    out: dict = {"judge_on_real": {"class": float((classes == check.labels).mean()),
                                   "attribute": float((attributes == check.attributes).mean()),
                                   "n": len(check)}}
    ldm = models / f"{domain}-ldm"
    if ldm.is_dir():
        out["picked_by_this_judge"] = f"the judge in `models/{domain}-judge`" in (
            ldm / "README.md").read_text()  # its card names the judge of its probes
        out["generator"] = {}
        for n in steps:
            print(f"{domain}: builtin-ldm at {n} steps", flush=True)
            out["generator"][n] = measure_generator(ldm, judge, check, seeds=seeds, steps=n)
        out["classless"] = measure_classless(ldm, judge, check)
    captioner = models / f"{domain}-captioner"
    if captioner.is_dir():
        print(f"{domain}: builtin-blip", flush=True)
        out["captioner"] = measure_captioner(domain, captioner)
    return out


def demo_workload(work: Path) -> dict:
    """Each stage of the CLI on the demo project, with the defaults, timed from outside."""
    timings = {}
    for stage, extra in (("detect", DEMO), ("caption", []), ("filter", []), ("generate", [])):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "diffubias", stage, *extra, "--out", str(work)],
                       check=True, stdout=subprocess.DEVNULL)
        timings[stage] = time.perf_counter() - start
    report = json.loads((work / "report.json").read_text())
    generation = report["generation"]
    return {"timings_s": timings, "n_images": generation.get("n_images"),
            "generator": report["config"]["generator"],
            "captioner": report["config"]["captioner"]}


def render(results: dict, demo: dict | None, args: argparse.Namespace, wall: float) -> str:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = ["## The project's own models (`models/`)", "",
             f"Measured by `python bench/zoo.py --seeds {args.seeds} --steps "
             f"{','.join(map(str, args.steps))} --threads {args.threads}` on {machine_line()}; "
             f"torch on {args.threads} thread(s); load average at the end {load}; "
             f"{wall / 60:.1f} min in all.",
             "",
             "Every generated image is judged by `models/<domain>-judge`, a classifier trained on "
             "judge-corpus images (sources no shipped model trains on), never by the models under "
             "test. Prompts are check-corpus captions (held out from every model) that name the "
             "class and the attribute, every class x attribute cell, one seed per prompt, "
             "through `load_diffusers_generator` (DPM-Solver++, guidance 7.5, the product's "
             "auto batch size). Targets (issue 12): class and attribute at least 90 % on "
             "colored-digits, 80 % on shape-scenes; captions naming class and attribute 90 %.",
             "", "### builtin-ldm: does the image show what the prompt says?", "",
             "| domain | steps | images | class | attribute | both | target | images/s (CPU) "
             "| judge on real images (class / attribute) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for domain, r in results.items():
        real = r["judge_on_real"]
        for steps, g in r.get("generator", {}).items():
            ok = min(g["class_accuracy"], g["attribute_accuracy"]) >= TARGETS[domain]
            lines.append(
                f"| {domain} | {steps} | {g['n_images']} | {g['class_accuracy']:.3f} | "
                f"{g['attribute_accuracy']:.3f} | {g['both_accuracy']:.3f} | "
                f"{TARGETS[domain]:.2f} ({'met' if ok else 'NOT met'}) | "
                f"{g['images_per_second']:.1f} (batch {g['batch_size']}) | "
                f"{real['class']:.3f} / {real['attribute']:.3f} |")
        if "generator" not in r:
            lines.append(f"| {domain} | | | | | | | | not shipped yet |")
    same = [d for d, r in results.items() if r.get("picked_by_this_judge")]
    if same:
        lines += ["", f"Caveat: the shipped {', '.join(same)} model's checkpoint was picked "
                  "among its training probes by this same judge (one prompt per cell, other "
                  "prompts and seeds than these), so its row may favour it slightly; the other "
                  "models were picked by a quick judge trained during their runs (their cards "
                  "say which)."]
    lines += ["", "Per-class accuracy of the class at the first step count:", ""]
    for domain, r in results.items():
        if r.get("generator"):
            first = next(iter(r["generator"].values()))
            lines.append(f"- {domain}: " + ", ".join(f"{a:.2f}" for a in first["per_class"]))
    lines += ["", "### A prompt without a class word is not corrected", "",
              "Check-corpus captions that name the attribute and no class (e.g. "
              "\"a red digit\"). Nothing reads a label, so the drawn classes spread: the most "
              "frequent class's share, and how often the drawn class happens to be the class of "
              "the image the caption was written for (chance: 1 / classes).", "",
              "| domain | prompts | most frequent class | matches the source's class | chance "
              "| attribute right |", "|---|---|---|---|---|---|"]
    for domain, r in results.items():
        c = r.get("classless")
        if c:
            lines.append(f"| {domain} | {c['n']} | {c['top_class_share']:.3f} | "
                         f"{c['matches_source_class']:.3f} | {c['chance']:.3f} | "
                         f"{c['attribute_accuracy']:.3f} |")
    lines += ["", "### builtin-blip: do captions of held-out images name class and attribute?",
              "", "| domain | images | captions | class | attribute | both | bias-conflicting "
              "images: both | target | images/s (3 captions each) |", "|---|---|---|---|---|---|"
              "---|---|---|"]
    for domain, r in results.items():
        c = r.get("captioner")
        if c:
            a, k = c["all"], c["conflicting"]
            ok = min(a["class_share"], a["attribute_share"]) >= CAPTION_TARGET
            lines.append(f"| {domain} | {a['images']} | {a['captions']} | {a['class_share']:.3f} "
                         f"| {a['attribute_share']:.3f} | {a['both_share']:.3f} | "
                         f"{k['both_share']:.3f} | {CAPTION_TARGET:.2f} "
                         f"({'met' if ok else 'NOT met'}) | {c['images_per_second']:.1f} |")
    if demo:
        t = demo["timings_s"]
        ok = t["generate"] <= DEMO_TARGET_S
        lines += ["", "### The demo workload with the default models", "",
                  f"`python -m diffubias` detect / caption / filter / generate with "
                  f"`{' '.join(DEMO)}` and the defaults (`--captioner {demo['captioner']} "
                  f"--generator {demo['generator']}`), each a fresh process timed from outside "
                  "(start-up and model loading included).", "",
                  "| stage | wall (s) |", "|---|---|"]
        lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in t.items()]
        lines += ["", f"Generation: {demo['n_images']} images in {t['generate']:.0f} s "
                  f"(target at most {DEMO_TARGET_S} s on 2 cores: "
                  f"{'met' if ok else 'NOT met'})."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="prompts per cell (one seed each)")
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")],
                        default=[25, 15, 10], help="sampler steps to compare, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS))
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    import torch

    from diffubias.shipped_models import models_root

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = {d: measure_domain(d, models_root(), seeds=args.seeds, steps=args.steps)
               for d in args.domains}
    demo = None
    if not args.skip_demo:
        with tempfile.TemporaryDirectory() as tmp:
            demo = demo_workload(Path(tmp) / "demo")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "demo": demo}, indent=1,
                                        default=str))
    print(write_section("zoo", render(results, demo, args, time.perf_counter() - start)))


if __name__ == "__main__":
    main()
