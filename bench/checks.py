"""Do the checks of generated images catch the bad ones? Precision and recall of the verify
stage's proposed rejections against an independent judge, on the built-in datasets with the
project's own models.

Usage: python bench/checks.py [--images-per-prompt 2] [--no-write]
(writes the `checks` section of docs/BENCHMARKS.md)

For each built-in at 1 % conflicts, seed 0: the GCE detection, builtin-blip captions of the
top-K candidates, the text filter, class-anchored prompts, builtin-ldm images, then the verify
stage (`diffubias.stages.verify.check_generated`, the product's defaults). The zoo judge of the
domain (`models/<domain>-judge`, trained on held-out renders no product model saw) says what
each image shows. An image is *bad* when the judge sees another class than its label, or the
bias attribute its class is aligned with (it would teach the shortcut again). A rejection is
right when the image is bad.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from markdown import machine_line, write_section  # noqa: E402

from diffubias.backends import captioner_for, generator_for  # noqa: E402
from diffubias.config import RunConfig  # noqa: E402
from diffubias.prepared import PreparedDataset  # noqa: E402
from diffubias.shipped_models import models_root  # noqa: E402
from diffubias.stages.caption import ScoredSamples, caption_candidates  # noqa: E402
from diffubias.stages.detect import detect_bias  # noqa: E402
from diffubias.stages.generate import MemorySink, generate_images, prompts_to_generate  # noqa
from diffubias.stages.prompts import filter_prompts  # noqa: E402
from diffubias.stages.verify import check_generated  # noqa: E402

DOMAINS = ("colored-digits", "shape-scenes")


def measure(domain: str, *, images_per_prompt: int, seed: int = 0, top_k: float = 0.02
            ) -> dict:
    from diffubias.zoo.judge import load_judge
    from diffubias.zoo.ldm_probe import fit_size

    start = time.perf_counter()
    cfg = RunConfig(dataset=f"builtin:{domain}", conflict_ratio=0.01, seed=seed, device="cpu",
                    width=8, images_per_prompt=images_per_prompt, top_k=top_k)
    data = PreparedDataset.load(cfg)
    ds = data.ds
    detection = detect_bias(data, cfg)
    is_candidate = detection.is_candidate
    scores = ScoredSamples(detection.positions, detection.losses, is_candidate)
    captions = caption_candidates(ds, cfg, scores, captioner=captioner_for(
        cfg, dataset_name=ds.name)).captions
    kept = filter_prompts(captions, ds.labels, cfg, num_classes=ds.num_classes).kept
    prompts = prompts_to_generate(kept, cfg, class_names=ds.class_names)
    n_anchored = sum(p.text != k.text for p, k in zip(prompts, kept, strict=True))
    sink = MemorySink()
    generate_images(generator_for(cfg, dataset_name=ds.name, class_names=ds.class_names),
                    prompts, cfg, class_names=ds.class_names, sink=sink)
    images = [image for _, image in sink.images]
    labels = np.array([item.prompt.label for item, _ in sink.images])
    result = check_generated(images, labels, data=data, biased_model=detection.training.model,
                             train_losses=detection.losses, train_labels=detection.labels,
                             is_candidate=is_candidate, config=cfg)
    judge = load_judge(models_root() / f"{domain}-judge")
    pixels = np.stack([np.asarray(im.convert("RGB")).transpose(2, 0, 1) for im in images])
    seen = judge.score(fit_size(pixels, judge.image_size))
    # the judge's indices -> the dataset's, by name
    class_of = np.array([list(ds.class_names).index(judge.class_names[c])
                         for c in seen.classes])
    attribute_name = [judge.attribute_names[a] for a in seen.attributes]
    aligned = [ds.bias_names[data.aligned[int(y)]] for y in labels]
    wrong_class = class_of != labels
    shows_aligned = np.array([a == b for a, b in zip(attribute_name, aligned, strict=True)])
    bad = wrong_class | shows_aligned
    rejected = np.array([not c.passed for c in result.checks])
    class_flag = np.array([c.shows_class is False for c in result.checks])
    aligned_flag = np.array([not c.conflicting for c in result.checks])
    copies = int(sum(c.copy for c in result.checks))

    def pr(flag: np.ndarray, truth: np.ndarray) -> dict:
        hits = int((flag & truth).sum())
        return {"flagged": int(flag.sum()), "truth": int(truth.sum()), "hits": hits,
                "precision": hits / flag.sum() if flag.any() else None,
                "recall": hits / truth.sum() if truth.any() else None}

    good = ~bad
    return {"domain": domain, "n_prompts": len(prompts), "n_anchored": n_anchored,
            "n_images": len(images), "copies": copies,
            "rejections": pr(rejected, bad), "class_check": pr(class_flag, wrong_class),
            "bias_check": pr(aligned_flag, shows_aligned),
            "good_share_before": float(good.mean()),
            "good_share_after": float(good[~rejected].mean()) if (~rejected).any() else None,
            "kept": int((~rejected).sum()), "seconds": time.perf_counter() - start,
            "summary": result.summary()}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def render(results: list[dict], command: str) -> str:
    lines = ["## Checks of generated images (`bench/checks.py`)", "",
             f"Measured by `{command}` on {machine_line()}; load average at the end "
             f"{os.getloadavg()[0]:.1f}. Each built-in at 1 % conflicts, seed 0: builtin-blip "
             "captions of the top-K candidates, the text filter, class-anchored prompts, "
             "builtin-ldm images, then the verify stage with the product's defaults. The judge "
             "is the domain's zoo judge (held-out renders, never a product model). An image is "
             "*bad* when the judge sees another class than its label, or the bias attribute "
             "its class is aligned with; a rejection is right when the image is bad.", "",
             "| dataset | images | bad (judge) | rejected | precision | recall | good share "
             "before → after | kept |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rej = r["rejections"]
        lines.append(f"| {r['domain']} | {r['n_images']} | {rej['truth']} | {rej['flagged']} | "
                     f"{_pct(rej['precision'])} | {_pct(rej['recall'])} | "
                     f"{_pct(r['good_share_before'])} → {_pct(r['good_share_after'])} | "
                     f"{r['kept']} |")
    lines += ["", "Each check against its own truth:", "",
              "| dataset | check | flagged | truth (judge) | precision | recall |",
              "|---|---|---|---|---|---|"]
    for r in results:
        for name, key in (("caption names the class", "class_check"),
                          ("hard for the biased model", "bias_check")):
            c = r[key]
            truth = "other class" if key == "class_check" else "aligned attribute"
            lines.append(f"| {r['domain']} | {name} (vs {truth}) | {c['flagged']} | "
                         f"{c['truth']} | {_pct(c['precision'])} | {_pct(c['recall'])} |")
    lines += ["", "; ".join(
        f"{r['domain']}: {r['n_prompts']} prompts ({r['n_anchored']} class-anchored), "
        f"{r['copies']} near-copies of training images, {r['seconds']:.0f} s in all"
        for r in results) + ".", "",
        "Whether the checks pay for themselves in unbiased accuracy is the debias grid's "
        "question (an ablation with `image_checks=drop`); until it is measured the default is "
        "`propose`: a person decides."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="2 candidates per class, colored-digits only; prints, writes nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.smoke:
        print(render([measure(DOMAINS[0], images_per_prompt=1, top_k=2)], "smoke"))
        return
    results = [measure(d, images_per_prompt=args.images_per_prompt) for d in DOMAINS]
    body = render(results, "python bench/checks.py" + (
        f" --images-per-prompt {args.images_per_prompt}" if args.images_per_prompt != 2 else ""))
    print(body)
    if not args.no_write:
        print(f"wrote {write_section('checks', body)}")


if __name__ == "__main__":
    main()
