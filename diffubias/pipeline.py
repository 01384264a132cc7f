"""The DiffuBias pipeline over one run folder: every stage of the method, or one at a time.

Each stage computes with `diffubias.method`, writes its artifacts into the run folder and
records its part of `report.json`, so the CLI can run the whole method or a single stage, and a
person can edit `prompts.csv` between the filter and generation stages. Stages:

  detect   1-3  biased classifier (GCE), per-sample CE scores, top-K candidates per class
  caption  4    captions of the candidates
  filter   5    text filter -> prompts.csv (editable: keep, text)
  generate 6    images from the kept prompts, with a manifest
  debias   7-8  vanilla and debiased classifiers (and any `baselines`); test accuracies
  gradcam  9    Grad-CAM of the biased vs debiased model, CAM mass inside object masks
"""

from __future__ import annotations

import csv
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from diffubias import __version__
from diffubias.captions import Caption, Captioner, make_captioner
from diffubias.config import BASELINES, RunConfig
from diffubias.dataset import SPLITS, ImageDataset
from diffubias.decoding import read_images
from diffubias.files import atomic_path, atomic_write_text
from diffubias.generation import load_generated, make_generator, read_manifest
from diffubias.method import (
    Detection,
    PreparedDataset,
    cam_positions,
    detect_bias,
    gradcam_comparison,
    test_accuracy,
    train_debiased,
)
from diffubias.models import load_classifier, save_classifier
from diffubias.text_filter import Prompt, filter_captions
from diffubias.text_safety import csv_row, from_csv_cell

STAGES = ("detect", "caption", "filter", "generate", "debias", "gradcam")
Log = Callable[[str], None]


def library_versions() -> dict[str, str | None]:
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
    """One run folder: its config, dataset and report, loaded lazily and saved per stage."""

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

    @cached_property
    def data(self) -> PreparedDataset:
        data = PreparedDataset.load(self.config)
        for skipped in data.ds.skipped:
            self.log(f"skipped {skipped.path}: {skipped.reason}")
        return data

    @property
    def report_path(self) -> Path:
        return self.out_dir / "report.json"

    def read_report(self) -> dict:
        return json.loads(self.report_path.read_text()) if self.report_path.exists() else {}

    def update_report(self, *, drop_models: tuple[str, ...] = (), **parts) -> dict:
        """Merges `parts` into report.json (`models` and `timings_s` key by key); `drop_models`
        removes entries of `models` that a stage no longer produces."""
        report = self.read_report()
        for name in drop_models:
            report.get("models", {}).pop(name, None)
        report.update(config=self.config.to_dict(), seed=self.config.seed,
                      versions=library_versions())
        for key, value in parts.items():
            if key in ("models", "timings_s"):
                report.setdefault(key, {}).update(value)
            else:
                report[key] = value
        atomic_write_text(self.report_path, json.dumps(report, indent=2, sort_keys=True))
        return report

    def require(self, name: str, stage: str) -> Path:
        path = self.out_dir / name
        if not path.exists():
            raise ValueError(f"{path} is missing: run the `{stage}` stage first")
        return path


# -- stages -------------------------------------------------------------------------------------

def stage_detect(run: Run) -> dict:
    """Stages 1-3: train the biased model with GCE, score every train sample, pick top-K."""
    from diffubias.plots import contact_sheet, loss_histogram, save_png, write_html

    cfg, data, ds = run.config, run.data, run.data.ds
    run.log(f"dataset {ds.name}: " + ", ".join(f"{len(ds.indices(s))} {s}" for s in SPLITS)
            + f", {ds.num_classes} classes, {data.image_size} px")
    t0 = time.perf_counter()
    det = detect_bias(data, cfg)
    t1 = time.perf_counter()
    save_classifier(det.training.model, run.out_dir / "biased.safetensors")
    _write_scores(run.out_dir / "scores.csv", det, ds)
    write_html(loss_histogram(det.losses, is_conflict=det.is_conflict, threshold=det.threshold,
                              n_selected=len(det.selected)),
               run.out_dir / "loss_histogram.html")
    shown = det.selected[:100]
    sheet = contact_sheet(
        read_images(ds, det.positions[shown], size=data.image_size),
        captions=[f"{ds.class_names[ds.labels[det.positions[i]]]} {det.losses[i]:.2f}"
                  for i in shown],
        title=f"top-K highest-loss training samples ({len(det.selected)} in all)")
    save_png(sheet, run.out_dir / "topk_gallery.png")
    run.log("detection: " + ", ".join(f"{k}={v:.3f}" for k, v in det.metrics.items()
                                     if isinstance(v, float)))
    return run.update_report(
        dataset=_dataset_summary(ds, data.image_size),
        detection=det.metrics,
        models={"biased": {"test": test_accuracy(data, det.training.model, cfg).to_dict(),
                           "epochs": cfg.biased_epochs, "arch": det.training.model.spec.arch}},
        timings_s={"biased_model_and_scoring": t1 - t0})


def _dataset_summary(ds: ImageDataset, image_size: int) -> dict:
    return {"name": ds.name, "root": str(ds.root), "image_size": image_size,
            "class_names": list(ds.class_names), "bias_names": list(ds.bias_names),
            "split_sizes": {s: len(ds.indices(s)) for s in SPLITS},
            "skipped": [{"path": s.path, "reason": s.reason} for s in ds.skipped]}


def _write_csv(path: Path, header: tuple[str, ...], rows) -> None:
    """Writes a CSV atomically (temp file + rename). Text cells that a spreadsheet would run as a
    formula (=, +, -, @ first) are guarded with a leading quote; `_read_csv` takes it off."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(csv_row(list(row)) for row in rows)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: from_csv_cell(v) if isinstance(v, str) else v for k, v in row.items()}
                for row in csv.DictReader(f)]


def _write_scores(path: Path, det: Detection, ds: ImageDataset) -> None:
    candidate = np.zeros(len(det.positions), dtype=bool)
    candidate[det.selected] = True
    conflict = det.is_conflict
    _write_csv(path, ("position", "path", "label", "loss", "candidate", "conflict"),
               ([int(p), ds.paths[p], ds.class_names[ds.labels[p]], f"{det.losses[i]:.6g}",
                 int(candidate[i]), "" if conflict is None else int(conflict[i])]
                for i, p in enumerate(det.positions)))


def read_candidates(run: Run) -> list[int]:
    """Dataset positions of the top-K candidates, from scores.csv."""
    rows = _read_csv(run.require("scores.csv", "detect"))
    return [int(r["position"]) for r in rows if r["candidate"] == "1"]


def stage_caption(run: Run) -> dict:
    """Stage 4: caption every candidate; then bias keywords from candidate vs aligned captions."""
    cfg, ds = run.config, run.data.ds
    positions = read_candidates(run)
    t0 = time.perf_counter()
    captioner = make_captioner(cfg.captioner, per_image=cfg.captions_per_image,
                               instruction=cfg.caption_instruction,
                               batch_size=cfg.caption_batch_size,
                               max_new_tokens=cfg.caption_max_new_tokens, seed=cfg.seed,
                               device=cfg.device, dtype=cfg.model_dtype)
    captions = captioner.caption(ds, positions)
    _write_caption_csv(run.out_dir / "captions.csv", captions, ds)
    run.log(f"captions: {len(captions)} for {len(positions)} candidates ({captioner.backend})")
    timings = {"captioning": time.perf_counter() - t0}
    keywords = None  # written as null when keyword discovery is off
    if cfg.keywords_top_n:
        t1 = time.perf_counter()
        keywords = _caption_keywords(run, captioner, captions)
        timings["keywords"] = time.perf_counter() - t1
    return run.update_report(
        captions={"backend": captioner.backend,
                  "model": captions[0].model if captions else None,
                  "n_captions": len(captions), "n_images": len(positions),
                  "params": dict(captions[0].params) if captions else {}},
        keywords=keywords, timings_s=timings)


def _write_caption_csv(path: Path, captions: list[Caption], ds: ImageDataset) -> None:
    _write_csv(path, ("position", "path", "text", "backend", "model", "params"),
               ([c.position, ds.paths[c.position], c.text, c.backend, c.model or "",
                 json.dumps(dict(c.params), sort_keys=True)] for c in captions))


def _caption_keywords(run: Run, captioner: Captioner, captions: list[Caption]) -> dict:
    """Captions the bottom-K aligned samples of each candidate class (aligned_captions.csv) and
    ranks the words that set the candidates apart: {class name: [keyword, ...]}."""
    from diffubias.keywords import aligned_counterparts, bias_keywords

    ds = run.data.ds
    rows = _read_csv(run.require("scores.csv", "detect"))
    positions = np.array([int(r["position"]) for r in rows], dtype=np.int64)
    aligned = positions[aligned_counterparts(
        np.array([float(r["loss"]) for r in rows]), ds.labels[positions],
        np.array([r["candidate"] == "1" for r in rows]))]
    aligned_captions = captioner.caption(ds, aligned.tolist())
    _write_caption_csv(run.out_dir / "aligned_captions.csv", aligned_captions, ds)
    found = bias_keywords(captions, aligned_captions, ds.labels, top_n=run.config.keywords_top_n,
                          extra_stop_words=run.config.extra_stop_words)
    for cls, keywords in found.items():
        run.log(f"bias keywords, {ds.class_names[cls]}: "
                + (", ".join(f"{k.term} ({k.n_candidates}/{k.n_aligned})" for k in keywords[:5])
                   or "none"))
    return {ds.class_names[cls]: [k.to_dict() for k in keywords] for cls, keywords in found.items()}


def read_captions(run: Run) -> list[Caption]:
    return [Caption(int(r["position"]), r["text"], r["backend"], r["model"] or None)
            for r in _read_csv(run.require("captions.csv", "caption"))]


PROMPT_FIELDS = ("keep", "label", "text", "source", "source_path", "matched_words")


def stage_filter(run: Run) -> dict:
    """Stage 5: the text filter; writes prompts.csv, which a person may edit before generation."""
    cfg, ds = run.config, run.data.ds
    top_f = cfg.top_f or 2 * ds.num_classes
    result = filter_captions(read_captions(run), ds.labels, top_f=top_f,
                             extra_stop_words=cfg.extra_stop_words)
    _write_csv(run.out_dir / "prompts.csv", PROMPT_FIELDS,
               ([int(p.keep), ds.class_names[p.label], p.text, p.source, ds.paths[p.source],
                 " ".join(p.matched_words)] for p in result.kept + result.dropped))
    run.log(f"filter: kept {len(result.kept)} of {len(result.kept) + len(result.dropped)} "
            f"captions; top words: {', '.join(w for w, _ in result.top_words)}")
    return run.update_report(filter={
        "top_f": top_f, "top_words": [[w, c] for w, c in result.top_words],
        "n_kept": len(result.kept), "n_dropped": len(result.dropped)})


def read_prompts(run: Run) -> list[Prompt]:
    """The kept prompts from prompts.csv, as a person may have edited them."""
    ds = run.data.ds
    index = {name: i for i, name in enumerate(ds.class_names)}
    prompts = []
    for line, r in enumerate(_read_csv(run.require("prompts.csv", "filter")), start=2):
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
    """Stage 6: images from the kept prompts, each labelled with its source sample's class.

    Resumable: images already in generated/ (same generator settings) are kept, not redone.
    Under `accelerate launch` each process generates its share; the main process reports.
    """
    from diffubias.diffusion import DiffusionSettings, generate_to_folder
    from diffubias.plots import contact_sheet, save_png

    cfg, data = run.config, run.data
    prompts = read_prompts(run)
    if cfg.max_images:
        prompts = prompts[: max(1, cfg.max_images // cfg.images_per_prompt)]
    t0 = time.perf_counter()
    settings = DiffusionSettings(steps=cfg.gen_steps, guidance_scale=cfg.guidance_scale,
                                 negative_prompt=cfg.negative_prompt,
                                 batch_size=cfg.gen_batch_size, width=cfg.gen_width,
                                 height=cfg.gen_height)
    generator = make_generator(cfg.generator, dataset_name=data.ds.name,
                               class_names=data.ds.class_names, settings=settings,
                               device=cfg.device, dtype=cfg.model_dtype, offload=cfg.offload,
                               compile_mode=cfg.compile_mode, log=run.log)
    out = generate_to_folder(generator, prompts, run.out_dir / "generated",
                             images_per_prompt=cfg.images_per_prompt, seed=cfg.seed,
                             class_names=data.ds.class_names, log=run.log)
    if not out.is_main_process:
        return run.read_report()
    rows = read_manifest(out.manifest)
    if rows:  # a spread over prompts, not just the first few
        shown = np.linspace(0, len(rows) - 1, num=min(60, len(rows))).round().astype(int)
        tiles, _ = load_generated(out.manifest, size=data.image_size)
        save_png(contact_sheet(tiles[shown], captions=[rows[i]["prompt"] for i in shown],
                               columns=6, tile=128, title="generated samples (prompt under each)"),
                 run.out_dir / "generated_samples.png")
    run.log(f"generated {out.n_images} images from {len(prompts)} prompts ({out.backend}; "
            f"{out.n_new} new, {out.n_existing} resumed, {out.n_blocked} blocked)")
    return run.update_report(
        generation={"backend": out.backend, "model": out.model, "n_prompts": len(prompts),
                    "n_images": out.n_images, "n_new": out.n_new, "n_existing": out.n_existing,
                    "n_blocked": out.n_blocked, "params": out.params,
                    "manifest": str(out.manifest.relative_to(run.out_dir))},
        timings_s={"generation": time.perf_counter() - t0})


def stage_debias(run: Run) -> dict:
    """Stages 7-8: vanilla and debiased models; test accuracies of all three models."""
    cfg, data = run.config, run.data
    manifest = run.require("generated/manifest.csv", "generate")
    biased = load_classifier(run.require("biased.safetensors", "detect"))
    gen_images, gen_labels = load_generated(manifest, size=data.image_size)
    t0 = time.perf_counter()
    result = train_debiased(data, cfg, gen_images, gen_labels)
    t1 = time.perf_counter()
    save_classifier(result.vanilla.model, run.out_dir / "vanilla.safetensors")
    save_classifier(result.debiased.model, run.out_dir / "debiased.safetensors")
    models = {"biased": {"test": test_accuracy(data, biased, cfg).to_dict()}}
    for role, trained, n_train in (("vanilla", result.vanilla, result.n_train),
                                   ("debiased", result.debiased,
                                    result.n_train + result.n_generated)):
        models[role] = {"test": test_accuracy(data, trained.model, cfg).to_dict(),
                        "valid_accuracy": trained.valid_accuracy,
                        "best_epoch": trained.best_epoch, "epochs": cfg.debias_epochs,
                        "n_train": n_train}
    t2 = time.perf_counter()
    models.update(_train_baselines(run))
    for role, entry in models.items():
        t = entry["test"]
        run.log(f"{role:>8}: overall {t['overall']:.3f}"
                + (f", unbiased {t['unbiased']:.3f}, conflicting {t['conflicting']:.3f}"
                   if t["unbiased"] is not None else ""))
    timings = {"vanilla_and_debiased_training": t1 - t0}
    if cfg.baselines:
        timings["baselines"] = time.perf_counter() - t2
    stale = tuple(name for name in BASELINES if name not in cfg.baselines)
    return run.update_report(models=models, timings_s=timings, drop_models=stale)


def _train_baselines(run: Run) -> dict:
    """The baselines `config.baselines` names, each run as `diffubias.baselines` runs it (from
    this run's top-K candidates, with captions from the config, not this run's edited prompts),
    with the same seeded initialisation, schedule and checkpoint selection as the debiased
    model."""
    cfg, data = run.config, run.data
    if not cfg.baselines:
        return {}
    from diffubias.baselines import run_baselines

    # the run's own top-K (scores.csv): the same the detection would recompute, without training
    results = run_baselines(cfg.baselines, data, cfg,
                            candidates=np.asarray(read_candidates(run), dtype=np.int64),
                            before_each=lambda name: run.log(f"== baseline {name}"))
    models = {}
    for name, result in results.items():
        save_classifier(result.model, run.out_dir / f"{name}.safetensors")
        models[name] = {**result.to_dict(), "epochs": cfg.debias_epochs}
    return models


def stage_gradcam(run: Run) -> dict:
    """Stage 9: Grad-CAM of the biased and debiased models on the same test images."""
    from diffubias.gradcam import comparison_sheet
    from diffubias.plots import save_png

    cfg, data = run.config, run.data
    biased = load_classifier(run.require("biased.safetensors", "detect"))
    debiased = load_classifier(run.require("debiased.safetensors", "debias"))
    t0 = time.perf_counter()
    positions = cam_positions(data, cfg)
    images, masks, comparison = gradcam_comparison(data, cfg, biased, debiased, positions)
    labels = data.ds.labels[positions].tolist()
    save_png(comparison_sheet(comparison, images, class_names=data.ds.class_names,
                              labels=labels, max_rows=min(cfg.cam_sheet_rows, len(positions))),
             run.out_dir / "gradcam.png")
    mass = {"object_mass_before": comparison.mean_object_mass_before,
            "object_mass_after": comparison.mean_object_mass_after,
            "object_area": float(masks.mean()) if masks is not None else None}
    if masks is not None:
        run.log(f"Grad-CAM mass inside the object: biased {mass['object_mass_before']:.3f}, "
                f"debiased {mass['object_mass_after']:.3f} (object area {mass['object_area']:.3f})")
    return run.update_report(
        gradcam={"method": cfg.cam_method, "n_samples": len(positions), **mass,
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
    report: dict = {}
    start = time.perf_counter()
    for stage in stages:
        run.log(f"== {stage}")
        report = STAGE_FUNCTIONS[stage](run)
    if tuple(stages) == STAGES:
        report = run.update_report(timings_s={"total": time.perf_counter() - start})
    return report
