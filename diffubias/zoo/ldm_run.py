"""`python -m diffubias.zoo train ldm --domain D --out DIR`: train the tiny latent diffusion model
on a built-in's balanced corpus, checkpointing and probing along the way, and ship the best
pipeline with its model card.

The run, in chunks of `checkpoint_every` steps: VAE steps, then UNet steps; after each chunk the
whole state goes to `DIR/checkpoint/last.safetensors` (atomic), and every `probe_every` UNet
steps the EMA model samples one prompt per (class, attribute) cell, a judge scores them, and the
best pipeline so far goes to `DIR/checkpoint/best/`. Rerunning the same command resumes; a
larger `--steps` continues; `--max-minutes` stops cleanly after the step under way. At the end the
model is probed once more, the best pipeline is copied into DIR, loaded back through
`load_diffusers_generator` (the product's own path), measured on `eval_per_cell` seeds per
cell, and described in DIR/README.md.

Knows: the corpus, the judge, the files of DIR. The model and its training are
`diffubias.zoo.ldm` and `diffubias.zoo.ldm_train`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from diffubias.files import atomic_write_text
from diffubias.zoo.ldm import LDMConfig, assemble_pipeline, config_for, save_pipeline
from diffubias.zoo.ldm_card import model_card
from diffubias.zoo.ldm_probe import (ProbePrompt, ProbeScore, QuickJudge, ZooJudge, draw,
                                     fit_size, in_memory_generator, probe_prompts, score_images)
from diffubias.zoo.ldm_train import CaptionedImages, LDMTrainer, TrainSettings

Log = Callable[[str], None]
@dataclass(frozen=True)
class RunSettings:
    per_cell: int = 100  # corpus images per (class, attribute) cell: 10,000 for colored digits
    probe_every: int = 1000
    eval_per_cell: int = 10  # seeds per cell in the final measurement; 0: report the best probe
    max_minutes: float = 0.0  # 0: no limit; else stop training after the step under way
    other_guidance: tuple[float, ...] = (3.0,)  # also measured, on a fifth of the images
    judge: str = ""  # folder of a zoo judge (`python -m diffubias.zoo train judge`) for the final
    # measurement; the probes use the quick judge trained here unless `probe_judge` is given
    probe_judge: str = ""  # a zoo judge for the probes, so for the best-checkpoint pick (the
    # quick judge names 56 % of real shapes); the final measurement draws other prompts, seeds
    show_progress: bool = True
    judge_steps: int = 1000  # the quick judge's training steps
    judge_per_cell: int = 30  # its corpus: 3,000 judge-role images on colored digits


def train_ldm(domain: str, out: Path, *, train: TrainSettings, run: RunSettings,
              config: LDMConfig | None = None, log: Log = print) -> dict:
    """Trains (or resumes) the model of `domain` into `out`; returns the final measurement."""
    from diffubias.zoo.corpus import make_corpus

    start = time.monotonic()
    out = Path(out)
    config = config or config_for(domain)
    corpus = make_corpus(domain, per_cell=run.per_cell, seed=train.seed)
    data = CaptionedImages(fit_size(corpus.images, config.image_size),
                           tuple((c,) for c in corpus.captions))
    trainer = LDMTrainer(config, data, train)
    trainer.show_progress = run.show_progress
    state_path = out / "checkpoint" / "last.safetensors"
    if state_path.is_file():
        trainer.load(state_path)
        log(f"resumed at VAE step {trainer.state.vae_step}, UNet step {trainer.state.unet_step}")
    wall_before = trainer.state.wall_seconds
    check = make_corpus(domain, role="check", per_cell=10, seed=train.seed)
    quick: list[QuickJudge | ZooJudge] = []

    def judge() -> QuickJudge | ZooJudge:  # loaded or trained only when a probe needs it
        if not quick:
            quick.append(ZooJudge.load(run.probe_judge) if run.probe_judge
                         else _fallback_judge(domain, check, run, train.seed, log))
        return quick[0]

    # prompts: captions naming both class and attribute, of every cell (checks' own phrasings)
    complete = check.subset(np.flatnonzero(check.complete()))
    prompts = probe_prompts([(c,) for c in complete.captions], complete.labels,
                            complete.attributes, per_cell=1, seed=train.seed)

    def out_of_time() -> bool:
        return bool(run.max_minutes) and time.monotonic() - start > 60 * run.max_minutes

    def checkpoint() -> None:
        trainer.state.wall_seconds = wall_before + time.monotonic() - start
        trainer.save(state_path)

    s = train
    while trainer.state.vae_step < s.vae_steps and not out_of_time():
        trainer.train_vae(until=_next(trainer.state.vae_step, s.checkpoint_every),
                          stop=out_of_time)
        checkpoint()
        log(f"VAE step {trainer.state.vae_step}: {trainer.state.history[-1]}")
    if trainer.state.vae_step >= s.vae_steps and not trainer.state.best.get("vae_ceiling"):
        trainer.state.best["vae_ceiling"] = _vae_ceiling(trainer, judge(), check, config)
        log(f"judge on VAE reconstructions of check images: {trainer.state.best['vae_ceiling']}")
    while (trainer.state.vae_step >= s.vae_steps and trainer.state.unet_step < s.steps
           and not out_of_time()):
        trainer.train_unet(until=_next(trainer.state.unet_step, s.checkpoint_every),
                           stop=out_of_time)
        step = trainer.state.unet_step
        if step % run.probe_every == 0 or step == s.steps:
            _probe(trainer, judge(), prompts, out, corpus.image_size, log)
        checkpoint()
        losses = [h["loss"] for h in trainer.state.history if h["phase"] == "unet"]
        log(f"UNet step {step}: loss {losses[-1] if losses else '-'}, "
            f"{(time.monotonic() - start) / 60:.1f} min in this session")
    probed = [h["step"] for h in trainer.state.history if h["phase"] == "probe"]
    if trainer.state.unet_step and trainer.state.unet_step not in probed:
        _probe(trainer, judge(), prompts, out, corpus.image_size, log)
        checkpoint()
    if not (out / "checkpoint" / "best").is_dir():
        log("no UNet step taken yet: nothing to ship")
        return {}
    _export(out / "checkpoint" / "best", out)
    if run.eval_per_cell:
        final_judge = ZooJudge.load(run.judge) if run.judge else judge()
        evaluation = evaluate_folder(out, final_judge, complete, per_cell=run.eval_per_cell,
                                     seed=train.seed, device=train.device)
        evaluation["judge"] = final_judge.describe()
        evaluation["other_guidance"] = {
            str(g): evaluate_folder(out, final_judge, complete, seed=train.seed,
                                    per_cell=max(1, run.eval_per_cell // 5),
                                    device=train.device, guidance_scale=g)
            for g in run.other_guidance}
    else:  # no final measurement asked for: the card reports the best probe
        evaluation = {k: v for k, v in trainer.state.best.items()
                      if k not in ("step", "quality", "vae_ceiling")}
        evaluation["judge"] = "the quick judge of the probes"
    log(f"final: {evaluation}")
    card = model_card(domain, config, trainer, run, evaluation, corpus_size=len(corpus),
                      weights_mb=_size_mb(out, skip="checkpoint"),
                      weights_dir=out)
    atomic_write_text(out / "README.md", card)
    atomic_write_text(out / "checkpoint" / "history.json", json.dumps(
        {"state": {k: v for k, v in asdict(trainer.state).items()}, "final": evaluation},
        indent=1))
    return evaluation


def evaluate_folder(folder: Path, judge, corpus, *, per_cell: int, seed: int,
                    device: str = "cpu", guidance_scale: float | None = None) -> dict:
    """Loads `folder` with load_diffusers_generator (defaults: DPM-Solver++, 25 steps, guidance
    7.5), draws `per_cell` prompts per cell with fresh seeds, and scores them."""
    from diffubias.diffusion import DiffusionSettings, load_diffusers_generator

    settings = DiffusionSettings(batch_size=50)
    if guidance_scale is not None:
        settings = replace(settings, guidance_scale=guidance_scale)
    generator = load_diffusers_generator(str(folder), device=device, settings=settings)
    prompts = probe_prompts([(c,) for c in corpus.captions], corpus.labels, corpus.attributes,
                            per_cell=per_cell, seed=seed + 1)
    images, per_second = draw(generator, prompts, seed=seed + 1, corpus_size=corpus.image_size)
    result = score_images(judge, images, prompts, per_second).as_dict()
    result["settings"] = generator.params()
    return result


def _probe(trainer: LDMTrainer, judge, prompts: Sequence[ProbePrompt], out: Path,
           corpus_size: int, log: Log) -> ProbeScore:
    parts = trainer.ema_parts()
    generator = in_memory_generator(assemble_pipeline(parts), batch_size=len(prompts))
    images, per_second = draw(generator, prompts, seed=0, corpus_size=corpus_size)
    score = score_images(judge, images, prompts, per_second)
    step = trainer.state.unet_step
    trainer.state.history.append({"phase": "probe", "step": step, **score.as_dict(),
                                  "settings": generator.params()})
    log(f"probe at UNet step {step}: class {score.class_accuracy:.2f}, "
        f"attribute {score.attribute_accuracy:.2f}")
    quality = (score.class_accuracy + score.attribute_accuracy) / 2
    if quality >= trainer.state.best.get("quality", -1.0):
        _replace_folder(out / "checkpoint" / "best", lambda tmp: save_pipeline(parts, tmp))
        ceiling = trainer.state.best.get("vae_ceiling")
        trainer.state.best = {"step": step, "quality": quality, **trainer.state.history[-1],
                              "vae_ceiling": ceiling}
    return score


def _vae_ceiling(trainer: LDMTrainer, judge, check, config: LDMConfig) -> dict:
    """The judge's accuracy on VAE reconstructions of check images: what generated images can
    reach at best through this VAE."""
    recon = fit_size(trainer.reconstruct(fit_size(check.images, config.image_size)),
                     check.image_size)
    classes, attributes = judge.predict(recon)
    return {"class_accuracy": round(float((classes == check.labels).mean()), 4),
            "attribute_accuracy": round(float((attributes == check.attributes).mean()), 4)}


def _fallback_judge(domain: str, check, run: RunSettings, seed: int, log: Log) -> QuickJudge:
    """A quick two-headed CNN trained on the judge corpus (sources no shipped model sees),
    measured on the check corpus."""
    from diffubias.zoo.corpus import make_corpus

    judge_corpus = make_corpus(domain, role="judge", per_cell=run.judge_per_cell, seed=seed)
    judge = QuickJudge.train(judge_corpus.images, judge_corpus.labels, judge_corpus.attributes,
                             steps=run.judge_steps, seed=seed)
    classes, attributes = judge.predict(check.images)
    judge.held_out_accuracy = (float((classes == check.labels).mean()),
                               float((attributes == check.attributes).mean()))
    log(f"judge on the check corpus: class {judge.held_out_accuracy[0]:.3f}, "
        f"attribute {judge.held_out_accuracy[1]:.3f}")
    return judge


def _replace_folder(target: Path, write: Callable[[Path], object]) -> None:
    """Writes a folder with `write(tmp)` and swaps it in: at any moment `target` or
    `target.old` holds a complete copy."""
    tmp, old = target.with_name(f".{target.name}.tmp"), target.with_name(f"{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _export(best: Path, out: Path) -> None:
    """Copies the pipeline in `best` into `out` (component folders first, model_index.json
    last, so a loader never sees an index without its parts)."""
    for part in sorted(p for p in best.iterdir() if p.is_dir()):
        _replace_folder(out / part.name, lambda tmp, part=part: shutil.copytree(part, tmp))
    atomic_write_text(out / "model_index.json", (best / "model_index.json").read_text())


def _next(step: int, every: int) -> int:
    return (step // every + 1) * every


def _size_mb(folder: Path, *, skip: str) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors")
               if skip not in p.relative_to(folder).parts) / 1e6


# -- the command line --------------------------------------------------------------------------

def train_to_folder(domain: str, out: Path, *, steps: int | None = None, seed: int = 0,
                    checkpoint_every: int = 500, show_progress: bool = True,
                    log: Log = print) -> Path:
    """The recipe behind `python -m diffubias.zoo train ldm` (the device is picked: a GPU when
    there is one; `python -m diffubias.zoo.ldm_run` takes every option)."""
    train = replace(TrainSettings(), steps=steps or TrainSettings.steps, seed=seed,
                    checkpoint_every=checkpoint_every, device="auto")
    train_ldm(domain, Path(out), train=train, run=RunSettings(show_progress=show_progress),
              log=log)
    return Path(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, r = TrainSettings(), RunSettings()
    parser.add_argument("--domain", required=True, help="built-in dataset name")
    parser.add_argument("--out", required=True, type=Path, help="output folder (pipeline, "
                        "README.md, checkpoint/)")
    parser.add_argument("--steps", type=int, default=d.steps, help="UNet steps")
    parser.add_argument("--vae-steps", type=int, default=d.vae_steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, help="auto (a GPU when there is one), "
                        "cpu or cuda")
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--probe-every", type=int, default=r.probe_every)
    parser.add_argument("--probe-judge", default=r.probe_judge,
                        help="a zoo judge folder for the probes (default: a quick judge trained "
                        "here)")
    parser.add_argument("--per-cell", type=int, default=r.per_cell)
    parser.add_argument("--eval-per-cell", type=int, default=r.eval_per_cell)
    parser.add_argument("--max-minutes", type=float, default=r.max_minutes)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: keep)")
    parser.add_argument("--judge", default="", help="a zoo judge folder for the final measurement")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_from_args(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    train = replace(TrainSettings(), steps=args.steps, vae_steps=args.vae_steps,
                    batch_size=args.batch_size, seed=args.seed, device=args.device,
                    checkpoint_every=args.checkpoint_every)
    run = RunSettings(per_cell=args.per_cell, probe_every=args.probe_every,
                      eval_per_cell=args.eval_per_cell, max_minutes=args.max_minutes,
                      judge=args.judge, probe_judge=args.probe_judge,
                      show_progress=not args.no_progress)
    train_ldm(args.domain, args.out, train=train, run=run, log=_stamped)
    return 0


def _stamped(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffubias.zoo.ldm_run",
                                     description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":  # every option; `python -m diffubias.zoo train ldm`: the common ones
    raise SystemExit(main())
