"""The command line's adapter: every stage of the method over one run folder, or one at a time.

Each `stage_*` reads its inputs from the run folder, calls the stage function of
`diffubias.stages` (the same one the app calls), writes the artifacts and records its part of
`report.json`, so the CLI can run the whole method or a single stage, and a person can edit
`prompts.csv` between the filter and generation stages. No stage logic lives here. Stages:

  detect   1-3  biased classifier (the ranker's: GCE by default), per-sample CE scores, top-K
                candidates per class, the biased model's diagnostics (report.json: biased_model)
  caption  4    captions of the candidates
  filter   5    text filter -> prompts.csv (editable: keep, text)
  generate 6    images from the kept prompts, with a manifest
  debias   7-8  vanilla and debiased classifiers (and any `baselines`); test accuracies
  rescore  8b   what the debiased model still gets wrong -> remaining.json, next_candidates.csv
  gradcam  9    Grad-CAM of the vanilla (or biased) vs debiased model, CAM mass in object masks
  report   10   report.html: the app's self-contained report, drawn from the files above
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from diffubias.backends import captioner_for, generator_for
from diffubias.baselines import baseline_names
from diffubias.captions import Caption
from diffubias.dataset import SPLITS, ImageDataset
from diffubias.decoding import read_images
from diffubias.files import atomic_write_text
from diffubias.generated_folder import (
    generate_to_folder,
    load_generated,
    read_manifest,
    write_checks,
)
from diffubias.models import load_classifier, save_classifier
from diffubias.run_folder import PROMPT_FIELDS, Run, prompt_is_kept, read_csv, write_csv
from diffubias.stages.caption import ScoredSamples, caption_candidates
from diffubias.stages.debias import train_debiased
from diffubias.stages.detect import Detection, detect_bias
from diffubias.stages.explain import cam_positions, explain_models
from diffubias.stages.generate import anchored
from diffubias.stages.prompts import filter_prompts, resolved_top_f
from diffubias.text_filter import Prompt

STAGES = ("detect", "caption", "filter", "generate", "debias", "rescore", "gradcam", "report")


# -- stages -------------------------------------------------------------------------------------

def stage_detect(run: Run) -> dict:
    """Stages 1-3: train the ranker's biased model, score every train sample, pick top-K; its
    per-epoch accuracies and any warning that it looks unbiased go to report.json's
    `biased_model`."""
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
    diagnostics = det.diagnostics.to_dict()
    run.log(f"biased model ({cfg.ranker}), epoch {diagnostics['selected_epoch']}: train "
            f"accuracy {diagnostics['train_accuracy']:.3f}, validation "
            + (f"{diagnostics['valid_accuracy']:.3f}" if diagnostics["valid_accuracy"] is not None
               else "n/a"))
    if diagnostics["warning"]:
        run.log(f"warning: {diagnostics['warning']}")
    return run.update_report(
        dataset=data.summary(), detection=det.metrics, biased_model=diagnostics,
        models={"biased": {"test": det.test.to_dict(), "epochs": cfg.biased_epochs,
                           "ranker": cfg.ranker, "arch": det.training.model.spec.arch,
                           "width": det.training.model.spec.width}},
        timings_s={"biased_model_and_scoring": t1 - t0})


def _write_scores(path: Path, det: Detection, ds: ImageDataset) -> None:
    candidate = det.is_candidate
    conflict = det.is_conflict
    write_csv(path, ("position", "path", "label", "loss", "candidate", "conflict"),
               ([int(p), ds.paths[p], ds.class_names[ds.labels[p]], f"{det.losses[i]:.9g}",
                 int(candidate[i]), "" if conflict is None else int(conflict[i])]
                for i, p in enumerate(det.positions)))


def read_scores(run: Run) -> ScoredSamples:
    """scores.csv as the caption stage takes it."""
    rows = read_csv(run.require("scores.csv", "detect"))
    return ScoredSamples(np.array([int(r["position"]) for r in rows], dtype=np.int64),
                         np.array([float(r["loss"]) for r in rows]),
                         np.array([r["candidate"] == "1" for r in rows]))


def read_candidates(run: Run) -> list[int]:
    """Dataset positions of the top-K candidates, from scores.csv."""
    scores = read_scores(run)
    return scores.positions[scores.is_candidate].tolist()


def stage_caption(run: Run) -> dict:
    """Stage 4: caption every candidate; then bias keywords from candidate vs aligned captions."""
    cfg, ds = run.config, run.data.ds
    scores = read_scores(run)
    t0 = time.perf_counter()
    captioner = captioner_for(cfg, dataset_name=ds.name)
    result = caption_candidates(ds, cfg, scores, captioner=captioner)
    _write_caption_csv(run.out_dir / "captions.csv", result.captions, ds)
    if result.aligned_captions:
        _write_caption_csv(run.out_dir / "aligned_captions.csv", result.aligned_captions, ds)
    run.log(f"captions: {len(result.captions)} for {result.n_images} candidates "
            f"({result.backend})")
    for cls, keywords in (result.keywords or {}).items():
        run.log(f"bias keywords, {ds.class_names[cls]}: "
                + (", ".join(f"{k.term} ({k.n_candidates}/{k.n_aligned})" for k in keywords[:5])
                   or "none"))
    return run.update_report(captions=result.summary(),
                             keywords=result.keywords_by_class(ds.class_names),
                             timings_s={"captioning": time.perf_counter() - t0})


def _write_caption_csv(path: Path, captions, ds: ImageDataset) -> None:
    write_csv(path, ("position", "path", "text", "backend", "model", "params"),
               ([c.position, ds.paths[c.position], c.text, c.backend, c.model or "",
                 json.dumps(dict(c.params), sort_keys=True)] for c in captions))


def read_captions(run: Run) -> list[Caption]:
    return [Caption(int(r["position"]), r["text"], r["backend"], r["model"] or None)
            for r in read_csv(run.require("captions.csv", "caption"))]


def stage_filter(run: Run) -> dict:
    """Stage 5: the text filter; writes prompts.csv, which a person may edit before generation."""
    cfg, ds = run.config, run.data.ds
    result = filter_prompts(read_captions(run), ds.labels, cfg, num_classes=ds.num_classes)
    prompts = result.kept + result.dropped
    final = anchored(prompts, cfg, ds.class_names)
    write_csv(run.out_dir / "prompts.csv", PROMPT_FIELDS,
              ([int(p.keep), ds.class_names[p.label], p.text, p.source, ds.paths[p.source],
                " ".join(p.matched_words), f.text] for p, f in zip(prompts, final, strict=True)))
    run.log(f"filter: kept {len(result.kept)} of {len(result.kept) + len(result.dropped)} "
            f"captions; top words: {', '.join(w for w, _ in result.top_words)}")
    return run.update_report(filter={
        "top_f": resolved_top_f(cfg, ds.num_classes),
        "top_words": [[w, c] for w, c in result.top_words],
        "n_kept": len(result.kept), "n_dropped": len(result.dropped)})


def read_prompts(run: Run) -> list[Prompt]:
    """The kept prompts from prompts.csv, as a person may have edited them."""
    ds = run.data.ds
    index = {name: i for i, name in enumerate(ds.class_names)}
    prompts = []
    for line, r in enumerate(read_csv(run.require("prompts.csv", "filter")), start=2):
        if not prompt_is_kept(r["keep"]):
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
    from diffubias.plots import contact_sheet, save_png

    cfg, data = run.config, run.data
    prompts = read_prompts(run)
    t0 = time.perf_counter()
    generator = generator_for(cfg, dataset_name=data.ds.name, class_names=data.ds.class_names,
                              log=run.log)
    out = generate_to_folder(generator, prompts, run.out_dir / "generated", cfg,
                             class_names=data.ds.class_names, log=run.log)
    if not out.is_main_process:
        return run.read_report()
    rows = read_manifest(out.manifest)
    checks = _verify(run, out.manifest, rows) if cfg.image_checks != "off" and rows else None
    if rows:  # a spread over prompts, not just the first few
        shown = np.linspace(0, len(rows) - 1, num=min(60, len(rows))).round().astype(int)
        tiles, _ = load_generated(out.manifest, size=data.image_size)
        save_png(contact_sheet(tiles[shown], captions=[rows[i]["prompt"] for i in shown],
                               columns=6, tile=128, title="generated samples (prompt under each)"),
                 run.out_dir / "generated_samples.png")
    n_prompts = len({r["prompt_id"] for r in rows})
    run.log(f"generated {out.n_images} images from {n_prompts} prompts ({out.backend}; "
            f"{out.n_new} new, {out.n_existing} resumed, {out.n_blocked} blocked)")
    return run.update_report(
        generation={"backend": out.backend, "model": out.model, "n_prompts": n_prompts,
                    "n_images": out.n_images, "n_new": out.n_new, "n_existing": out.n_existing,
                    "n_blocked": out.n_blocked, "params": out.params,
                    "manifest": str(out.manifest.relative_to(run.out_dir)), "checks": checks},
        timings_s={"generation": time.perf_counter() - t0})


def _verify(run: Run, manifest: Path, rows: list[dict]) -> dict:
    """Stage 6b: every generated image checked (`diffubias.stages.verify`), the results as
    columns of manifest.csv."""
    from PIL import Image

    from diffubias.stages.verify import check_generated

    cfg, data = run.config, run.data
    if cfg.image_checks == "propose" and not all(
            (run.out_dir / name).exists() for name in ("biased.safetensors", "scores.csv")):
        run.log("checks skipped: they need the biased model and scores.csv of `detect`")
        return {"skipped": "no biased model: run the detect stage"}
    scores = read_scores(run)
    biased = load_classifier(run.require("biased.safetensors", "detect"))
    images = [Image.open(manifest.parent / r["file"]).convert("RGB") for r in rows]
    result = check_generated(images, [int(r["label"]) for r in rows], data=data,
                             biased_model=biased, train_losses=scores.losses,
                             train_labels=data.ds.labels[scores.positions],
                             is_candidate=scores.is_candidate, config=cfg)
    write_checks(manifest, result.checks)
    summary = result.summary()
    run.log(f"checks: {summary['n_passed']} of {summary['n_images']} images passed "
            f"({summary['n_wrong_class']} without their class, {summary['n_aligned']} "
            f"bias-aligned, {summary['n_copies']} near-copies); "
            + ("failing ones are left out of training" if cfg.image_checks == "drop" else
               "see proposed_reject in generated/manifest.csv")
            + (f"; the class was not checked: {summary['class_check_skipped']}"
               if summary["class_check_skipped"] else ""))
    return summary


def stage_debias(run: Run) -> dict:
    """Stages 7-8: vanilla, debiased and baseline models; test accuracies of all of them (the
    biased model's is already in report.json, from `detect`). The baselines start from this
    run's top-K (scores.csv) with captions from the config, not the edited prompts."""
    cfg, data = run.config, run.data
    manifest = run.require("generated/manifest.csv", "generate")
    run.require("biased.safetensors", "detect")
    gen_images, gen_labels = load_generated(manifest, size=data.image_size,
                                            drop_failed=cfg.image_checks == "drop")
    t0 = time.perf_counter()
    candidates = np.asarray(read_candidates(run), dtype=np.int64) if cfg.baselines else None
    result = train_debiased(data, cfg, gen_images, gen_labels, candidates=candidates,
                            before_each=lambda name: run.log(f"== {name}"))
    models = {}
    for role, trained in result.models.items():
        entry = trained.metrics(cfg)
        entry.pop("history")
        models[role] = entry
        save_classifier(trained.model, run.out_dir / f"{role}.safetensors")
        t = entry["test"]
        run.log(f"{role:>8}: overall {t['overall']:.3f}"
                + (f", unbiased {t['unbiased']:.3f}, conflicting {t['conflicting']:.3f}"
                   if t["unbiased"] is not None else ""))
    stale = tuple(name for name in baseline_names() if name not in cfg.baselines)
    return run.update_report(models=models, drop_models=stale,
                             timings_s={"vanilla_and_debiased_training": time.perf_counter() - t0})


def stage_rescore(run: Run) -> dict:
    """Stage 8b, the closed loop: the debiased model scores the training set
    (`diffubias.stages.rescore`); remaining.json says what it still gets wrong per class and
    keyword, next_candidates.csv lists the samples another round would start from."""
    from diffubias.stages.rescore import rescore

    cfg, data, ds = run.config, run.data, run.data.ds
    debiased = load_classifier(run.require("debiased.safetensors", "debias"))
    report = run.read_report()
    names = list(ds.class_names)
    keywords = {names.index(name): [k["term"] for k in found]
                for name, found in (report.get("keywords") or {}).items() if name in names}
    captions = read_captions(run) if (run.out_dir / "captions.csv").exists() else []
    t0 = time.perf_counter()
    remaining = rescore(data, cfg, debiased, candidates=read_candidates(run), captions=captions,
                        keywords=keywords)
    summary = remaining.summary()
    atomic_write_text(run.out_dir / "remaining.json", json.dumps(
        {**summary, "still_wrong": [ds.paths[p] for p in remaining.still_wrong]}, indent=2))
    losses = dict(zip(remaining.positions.tolist(), remaining.losses.tolist()))
    write_csv(run.out_dir / "next_candidates.csv", ("position", "path", "label", "loss"),
              ([int(p), ds.paths[p], names[ds.labels[p]], f"{losses[int(p)]:.9g}"]
               for p in remaining.next_candidates))
    run.log(f"rescore: {summary['n_still_wrong']} of {summary['n_candidates']} candidates "
            "still wrong; largest gaps: " + ", ".join(
                f"{c['name']} {c['gap'] * 100:+.0f} points" for c in sorted(
                    (c for c in summary["classes"] if c["gap"] is not None),
                    key=lambda c: -c["gap"])[:3]))
    return run.update_report(remaining=summary,
                             timings_s={"rescore": time.perf_counter() - t0})


def stage_gradcam(run: Run) -> dict:
    """Stage 9: Grad-CAM of the debiased model and the one it is compared with (`cam_before`:
    vanilla by default, trained on the same data and schedule; or the biased GCE model) on the
    same test images."""
    from diffubias.gradcam import comparison_sheet
    from diffubias.plots import save_png

    cfg, data = run.config, run.data
    before = load_classifier(run.require(f"{cfg.cam_before}.safetensors",
                                         "detect" if cfg.cam_before == "biased" else "debias"))
    debiased = load_classifier(run.require("debiased.safetensors", "debias"))
    t0 = time.perf_counter()
    positions = cam_positions(data, cfg)
    explained = explain_models(data, cfg, before, debiased, positions)
    labels = data.ds.labels[positions].tolist()
    save_png(comparison_sheet(explained.comparison, explained.images,
                              class_names=data.ds.class_names, labels=labels,
                              titles=(cfg.cam_before, "debiased"),
                              max_rows=min(cfg.cam_sheet_rows, len(positions))),
             run.out_dir / "gradcam.png")
    mass = explained.mass_summary()
    if explained.masks is not None:
        run.log(f"Grad-CAM mass inside the object: {cfg.cam_before} "
                f"{mass['object_mass_before']:.3f}, "
                f"debiased {mass['object_mass_after']:.3f} (object area {mass['object_area']:.3f})")
    return run.update_report(
        gradcam={"method": cfg.cam_method, "n_samples": len(positions), **mass,
                 "before": cfg.cam_before,
                 "image": "gradcam.png"},
        timings_s={"gradcam": time.perf_counter() - t0})


def stage_report(run: Run) -> dict:
    """Stage 10: report.html, the page the app exports, from this run folder's files only."""
    from diffubias.report import render_report_html
    from diffubias.run_folder_report import REPORT_HTML, run_report_content

    run.require("report.json", "detect")
    report = run.read_report()
    content = run_report_content(run.out_dir, report)
    path = atomic_write_text(run.out_dir / REPORT_HTML, render_report_html(content))
    run.log(f"report: {path}")
    return report


STAGE_FUNCTIONS = {"detect": stage_detect, "caption": stage_caption, "filter": stage_filter,
                   "generate": stage_generate, "debias": stage_debias,
                   "rescore": stage_rescore, "gradcam": stage_gradcam, "report": stage_report}


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
