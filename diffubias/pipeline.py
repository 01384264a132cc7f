"""The DiffuBias pipeline: every stage of the method over one run folder.

Each stage reads what earlier stages wrote into the run folder, writes its own artifacts there and
records its part of `report.json`, so the CLI can run the whole method or a single stage, and a
person can edit `prompts.csv` between the filter and generation stages. Stages:

  detect   1-3  biased classifier (GCE), per-sample CE scores, top-K candidates per class
  caption  4    captions of the candidates
  filter   5    text filter -> prompts.csv (editable: keep, text)
  generate 6    images from the kept prompts, with a manifest
  debias   7-8  vanilla and debiased classifiers; test accuracies of all three models
  gradcam  9    Grad-CAM of the biased vs debiased model, CAM mass inside object masks
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from diffubias import __version__
from diffubias.captions import Caption, make_captioner
from diffubias.config import RunConfig
from diffubias.dataset import ImageDataset, infer_image_size, load_dataset, read_images, read_masks
from diffubias.evaluation import aligned_bias_per_class, conflict_mask, evaluate
from diffubias.generation import load_generated, make_generator, write_generated
from diffubias.images import ImageSource, InMemoryImages, concat_sources, open_images
from diffubias.models import build_classifier, load_classifier, save_classifier
from diffubias.scoring import detection_metrics, score_samples, top_k_per_class
from diffubias.text_filter import Prompt, filter_captions
from diffubias.training import TrainConfig, train_classifier

STAGES = ("detect", "caption", "filter", "generate", "debias", "gradcam")
Log = Callable[[str], None]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "diffubias": __version__}
    for name in ("torch", "torchvision", "numpy", "scikit-learn", "grad-cam", "plotly",
                 "diffusers", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class Run:
    """One run folder: its config, dataset, and report, loaded lazily and saved per stage."""

    out_dir: Path
    config: RunConfig
    log: Log = field(default=lambda msg: None)

    @classmethod
    def create(cls, out_dir: Path, config: RunConfig, log: Log | None = None) -> Run:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(out_dir / "config.json")
        return cls(out_dir, config, log or (lambda msg: None))

    @classmethod
    def open(cls, out_dir: Path, log: Log | None = None) -> Run:
        path = Path(out_dir) / "config.json"
        if not path.exists():
            raise ValueError(f"{out_dir} is not a run folder (no config.json); "
                             "start one with `python -m diffubias run` or `detect`")
        return cls(Path(out_dir), RunConfig.load(path), log or (lambda msg: None))

    # -- shared state ---------------------------------------------------------------------
    @cached_property
    def dataset(self) -> ImageDataset:
        ds = load_dataset(self.config.dataset, cache_dir=self.config.cache_path,
                          seed=self.config.seed, conflict_ratio=self.config.conflict_ratio)
        for skipped in ds.skipped:
            self.log(f"skipped {skipped.path}: {skipped.reason}")
        return ds

    @cached_property
    def device(self) -> str:
        return self.config.resolved_device()

    @cached_property
    def image_size(self) -> int:
        return self.config.image_size or infer_image_size(self.dataset)

    @cached_property
    def aligned(self) -> dict[int, int] | None:
        ds = self.dataset
        if ds.bias is None:
            return None
        train = ds.indices("train")
        return aligned_bias_per_class(ds.labels[train], ds.bias[train])

    def images(self, split: str) -> tuple[np.ndarray, ImageSource]:
        positions = self.dataset.indices(split)
        return positions, open_images(self.dataset, positions, size=self.image_size)

    def bias_of(self, positions: np.ndarray) -> np.ndarray | None:
        return None if self.dataset.bias is None else self.dataset.bias[positions]

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.json"

    def read_report(self) -> dict:
        if self.report_path.exists():
            return json.loads(self.report_path.read_text())
        return {}

    def update_report(self, **parts) -> dict:
        report = self.read_report()
        report.update(config=self.config.to_dict(), seed=self.config.seed,
                      versions=library_versions())
        for key, value in parts.items():
            if key in ("models", "timings_s"):
                report.setdefault(key, {}).update(value)
            else:
                report[key] = value
        _atomic_write_text(self.report_path, json.dumps(report, indent=2, sort_keys=True))
        return report

    def require(self, name: str, stage: str) -> Path:
        path = self.out_dir / name
        if not path.exists():
            raise ValueError(f"{path} is missing: run the `{stage}` stage first")
        return path

    def new_classifier(self):
        return build_classifier(num_classes=self.dataset.num_classes, image_size=self.image_size,
                                arch=self.config.arch, width=self.config.width,
                                seed=self.config.seed,
                                init_weights=Path(self.config.init_weights)
                                if self.config.init_weights else None)

    def train_config(self, **changes) -> TrainConfig:
        return TrainConfig(batch_size=self.config.batch_size, lr=self.config.lr,
                           seed=self.config.seed, device=self.device, **changes)

    def test_accuracy(self, model) -> dict:
        positions, source = self.images("test")
        if len(positions) == 0:
            positions, source = self.images("valid")
        return evaluate(model, source, bias=self.bias_of(positions), aligned=self.aligned,
                        device=self.device).to_dict()


# -- stages -------------------------------------------------------------------------------------

def stage_detect(run: Run) -> dict:
    """Stages 1-3: train the biased model with GCE, score every train sample, pick top-K."""
    from diffubias.plots import contact_sheet, loss_histogram, save_png, write_html

    cfg, ds = run.config, run.dataset
    train_pos, train_src = run.images("train")
    valid_pos, valid_src = run.images("valid")
    run.log(f"dataset {ds.name}: {len(train_pos)} train, {len(valid_pos)} valid, "
            f"{len(ds.indices('test'))} test, {ds.num_classes} classes, {run.image_size} px")
    t0 = time.perf_counter()
    biased = train_classifier(run.new_classifier(), train_src, valid=valid_src,
                              config=run.train_config(epochs=cfg.biased_epochs, loss="gce",
                                                      gce_q=cfg.gce_q, selection="last"),
                              desc="biased model (GCE)")
    save_classifier(biased.model, run.out_dir / "biased.safetensors")
    t1 = time.perf_counter()
    losses = score_samples(biased.model, train_src, device=run.device)
    labels = ds.labels[train_pos]
    selected = top_k_per_class(losses, labels, k=cfg.top_k)
    t2 = time.perf_counter()

    train_bias = run.bias_of(train_pos)
    is_conflict = (conflict_mask(labels, train_bias, run.aligned)
                   if train_bias is not None else None)
    candidate = np.zeros(len(train_pos), dtype=bool)
    candidate[selected] = True
    _write_scores(run.out_dir / "scores.csv", ds, train_pos, losses, candidate, is_conflict)
    threshold = float(losses[selected].min()) if len(selected) else None
    write_html(loss_histogram(losses, is_conflict=is_conflict, threshold=threshold),
               run.out_dir / "loss_histogram.html")
    shown = selected[: min(len(selected), 100)]
    sheet = contact_sheet(read_images(ds, train_pos[shown], size=run.image_size),
                          captions=[f"{ds.class_names[labels[i]]} {losses[i]:.2f}" for i in shown],
                          title=f"top-K highest-loss training samples ({len(selected)} in all)")
    save_png(sheet, run.out_dir / "topk_gallery.png")

    detection = {"k_per_class": None, "n_candidates": int(len(selected)),
                 "precision_at_k": None, "recall_at_k": None, "r_precision": None, "auroc": None}
    if is_conflict is not None:
        detection.update(detection_metrics(losses, labels, is_conflict, k=cfg.top_k).to_dict())
    else:
        detection["k_per_class"] = {str(c): int((labels[selected] == c).sum())
                                    for c in range(ds.num_classes)}
    run.log("detection: " + ", ".join(f"{k}={v:.3f}" for k, v in detection.items()
                                     if isinstance(v, float)))
    return run.update_report(
        dataset=_dataset_summary(ds, run.image_size),
        detection=detection,
        models={"biased": {"test": run.test_accuracy(biased.model),
                           "valid_accuracy": biased.valid_accuracy,
                           "epochs": cfg.biased_epochs, "arch": biased.model.spec.arch}},
        timings_s={"biased_training": t1 - t0, "scoring": t2 - t1})


def _dataset_summary(ds: ImageDataset, image_size: int) -> dict:
    return {"name": ds.name, "root": str(ds.root), "image_size": image_size,
            "class_names": list(ds.class_names), "bias_names": list(ds.bias_names),
            "split_sizes": {s: int(len(ds.indices(s))) for s in ("train", "valid", "test")},
            "skipped": [{"path": s.path, "reason": s.reason} for s in ds.skipped]}


def _write_scores(path: Path, ds: ImageDataset, positions: np.ndarray, losses: np.ndarray,
                  candidate: np.ndarray, is_conflict: np.ndarray | None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["position", "path", "label", "loss", "candidate", "conflict"])
        for i, p in enumerate(positions):
            w.writerow([int(p), ds.paths[p], ds.class_names[ds.labels[p]], f"{losses[i]:.6g}",
                        int(candidate[i]), "" if is_conflict is None else int(is_conflict[i])])
    os.replace(tmp, path)


def read_candidates(run: Run) -> list[int]:
    """Dataset positions of the top-K candidates, from scores.csv."""
    with open(run.require("scores.csv", "detect"), newline="", encoding="utf-8") as f:
        return [int(r["position"]) for r in csv.DictReader(f) if r["candidate"] == "1"]


def stage_caption(run: Run) -> dict:
    """Stage 4: caption every candidate."""
    cfg = run.config
    positions = read_candidates(run)
    t0 = time.perf_counter()
    captioner = make_captioner(cfg.captioner, per_image=cfg.captions_per_image)
    captions = captioner.caption(run.dataset, positions)
    tmp = run.out_dir / "captions.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["position", "path", "text", "backend", "model"])
        for c in captions:
            w.writerow([c.position, run.dataset.paths[c.position], c.text, c.backend,
                        c.model or ""])
    os.replace(tmp, run.out_dir / "captions.csv")
    run.log(f"captions: {len(captions)} for {len(positions)} candidates ({captioner.backend})")
    return run.update_report(
        captions={"backend": captioner.backend, "model": None, "n_captions": len(captions),
                  "n_images": len(positions)},
        timings_s={"captioning": time.perf_counter() - t0})


def read_captions(run: Run) -> list[Caption]:
    with open(run.require("captions.csv", "caption"), newline="", encoding="utf-8") as f:
        return [Caption(int(r["position"]), r["text"], r["backend"], r["model"] or None)
                for r in csv.DictReader(f)]


PROMPT_FIELDS = ("keep", "label", "text", "source", "source_path", "matched_words")


def stage_filter(run: Run) -> dict:
    """Stage 5: the text filter; writes prompts.csv, which a person may edit before generation."""
    cfg, ds = run.config, run.dataset
    top_f = cfg.top_f or 2 * ds.num_classes
    result = filter_captions(read_captions(run), ds.labels, top_f=top_f,
                             extra_stop_words=cfg.extra_stop_words)
    tmp = run.out_dir / "prompts.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(PROMPT_FIELDS)
        for p in result.kept + result.dropped:
            w.writerow([int(p.keep), ds.class_names[p.label], p.text, p.source,
                        ds.paths[p.source], " ".join(p.matched_words)])
    os.replace(tmp, run.out_dir / "prompts.csv")
    run.log(f"filter: kept {len(result.kept)} of {len(result.kept) + len(result.dropped)} "
            f"captions; top words: {', '.join(w for w, _ in result.top_words)}")
    return run.update_report(filter={
        "top_f": top_f, "top_words": [[w, c] for w, c in result.top_words],
        "n_kept": len(result.kept), "n_dropped": len(result.dropped)})


def read_prompts(run: Run) -> list[Prompt]:
    """The kept prompts from prompts.csv, as a person may have edited them."""
    ds = run.dataset
    index = {name: i for i, name in enumerate(ds.class_names)}
    prompts = []
    with open(run.require("prompts.csv", "filter"), newline="", encoding="utf-8") as f:
        for line, r in enumerate(csv.DictReader(f), start=2):
            if r["keep"].strip().lower() not in ("1", "true", "yes"):
                continue
            if r["label"] not in index:
                raise ValueError(f"prompts.csv line {line}: unknown class {r['label']!r}; "
                                 f"expected one of {list(ds.class_names)}")
            if r["text"].strip():
                prompts.append(Prompt(r["text"].strip(), index[r["label"]], int(r["source"]),
                                      tuple(r["matched_words"].split())))
    return prompts


def stage_generate(run: Run) -> dict:
    """Stage 6: images from the kept prompts, each labelled with its source sample's class."""
    from diffubias.plots import contact_sheet, save_png

    cfg, ds = run.config, run.dataset
    prompts = read_prompts(run)
    if cfg.max_images:
        prompts = prompts[: max(1, cfg.max_images // cfg.images_per_prompt)]
    t0 = time.perf_counter()
    generator = make_generator(cfg.generator, dataset_name=ds.name, class_names=ds.class_names)
    images = generator.generate(prompts, images_per_prompt=cfg.images_per_prompt, seed=cfg.seed)
    manifest = write_generated(images, run.out_dir / "generated", class_names=ds.class_names)
    shown = images[:60]
    tiles, _ = load_generated(manifest, size=run.image_size)
    save_png(contact_sheet(tiles[: len(shown)], captions=[g.prompt for g in shown], columns=6,
                           tile=128, title="generated samples (prompt under each)"),
             run.out_dir / "generated_samples.png")
    run.log(f"generated {len(images)} images from {len(prompts)} prompts ({generator.backend})")
    return run.update_report(
        generation={"backend": generator.backend, "model": images[0].model if images else None,
                    "n_prompts": len(prompts), "n_images": len(images),
                    "manifest": str(manifest.relative_to(run.out_dir))},
        timings_s={"generation": time.perf_counter() - t0})


def stage_debias(run: Run) -> dict:
    """Stages 7-8: vanilla (train only) and debiased (train + generated) models, same init and
    schedule; then the test accuracies of all three models."""
    cfg = run.config
    manifest = run.require("generated/manifest.csv", "generate")
    _, train_src = run.images("train")
    _, valid_src = run.images("valid")
    gen_images, gen_labels = load_generated(manifest, size=run.image_size)
    augmented = concat_sources(train_src, InMemoryImages(gen_images, gen_labels))
    train_cfg = run.train_config(epochs=cfg.debias_epochs, loss="ce")
    t0 = time.perf_counter()
    vanilla = train_classifier(run.new_classifier(), train_src, valid=valid_src, config=train_cfg,
                               desc="vanilla model")
    t1 = time.perf_counter()
    debiased = train_classifier(run.new_classifier(), augmented, valid=valid_src,
                                config=train_cfg, desc="debiased model")
    t2 = time.perf_counter()
    save_classifier(vanilla.model, run.out_dir / "vanilla.safetensors")
    save_classifier(debiased.model, run.out_dir / "debiased.safetensors")
    biased = load_classifier(run.require("biased.safetensors", "detect"))
    models = {}
    for role, model, result in (("biased", biased, None), ("vanilla", vanilla.model, vanilla),
                                ("debiased", debiased.model, debiased)):
        entry = {"test": run.test_accuracy(model)}
        if result is not None:
            entry.update(valid_accuracy=result.valid_accuracy, best_epoch=result.best_epoch,
                         epochs=cfg.debias_epochs, n_train=len(augmented if role == "debiased"
                                                              else train_src))
        models[role] = entry
        t = entry["test"]
        run.log(f"{role:>8}: overall {t['overall']:.3f}"
                + (f", unbiased {t['unbiased']:.3f}, conflicting {t['conflicting']:.3f}"
                   if t["unbiased"] is not None else ""))
    return run.update_report(models=models, timings_s={"vanilla_training": t1 - t0,
                                                       "debiased_training": t2 - t1})


def stage_gradcam(run: Run) -> dict:
    """Stage 9: Grad-CAM of the biased and debiased models on the same test images."""
    from diffubias.gradcam import compare_models, comparison_sheet
    from diffubias.plots import save_png

    cfg, ds = run.config, run.dataset
    biased = load_classifier(run.require("biased.safetensors", "detect"))
    debiased = load_classifier(run.require("debiased.safetensors", "debias"))
    positions = ds.indices("test")
    if len(positions) == 0:
        positions = ds.indices("valid")
    bias = run.bias_of(positions)
    if bias is not None:  # by default explain the samples the biased model is meant to fail on
        conflicting = positions[conflict_mask(ds.labels[positions], bias, run.aligned)]
        positions = conflicting if len(conflicting) else positions
    rng = np.random.default_rng(cfg.seed)
    positions = np.sort(rng.permutation(positions)[: cfg.cam_samples])
    t0 = time.perf_counter()
    images = read_images(ds, positions, size=run.image_size)
    masks = (read_masks(ds, positions, size=run.image_size)
             if ds.mask_paths is not None else None)
    comparison = compare_models(biased, debiased, images, masks=masks,
                                labels=ds.labels[positions].tolist(), method=cfg.cam_method,
                                device=run.device)
    rows = min(cfg.cam_sheet_rows, len(positions))
    save_png(comparison_sheet(comparison, images, class_names=ds.class_names,
                              labels=ds.labels[positions].tolist(), max_rows=rows),
             run.out_dir / "gradcam.png")
    mass = {"object_mass_before": None, "object_mass_after": None}
    if masks is not None:
        mass = {"object_mass_before": float(np.nanmean(comparison.object_mass_before)),
                "object_mass_after": float(np.nanmean(comparison.object_mass_after)),
                "object_area": float(masks.mean())}
        run.log(f"Grad-CAM mass inside the object: biased {mass['object_mass_before']:.3f}, "
                f"debiased {mass['object_mass_after']:.3f} (object area {mass['object_area']:.3f})")
    return run.update_report(
        gradcam={"method": cfg.cam_method, "n_samples": int(len(positions)), **mass,
                 "image": "gradcam.png"},
        timings_s={"gradcam": time.perf_counter() - t0})


STAGE_FUNCTIONS = {"detect": stage_detect, "caption": stage_caption, "filter": stage_filter,
                   "generate": stage_generate, "debias": stage_debias, "gradcam": stage_gradcam}


def run_stages(run: Run, stages: tuple[str, ...] = STAGES) -> dict:
    """Runs `stages` in order on `run`; returns the final report."""
    unknown = [s for s in stages if s not in STAGE_FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; expected some of {STAGES}")
    torch.manual_seed(run.config.seed)
    report = {}
    start = time.perf_counter()
    for stage in stages:
        run.log(f"== {stage}")
        report = STAGE_FUNCTIONS[stage](run)
    if len(stages) == len(STAGES):
        report = run.update_report(timings_s={"total": time.perf_counter() - start})
    return report
