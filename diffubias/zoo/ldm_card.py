"""The model card of a trained latent diffusion model (`python -m diffubias.zoo train ldm`):
what it is, how to load it, its measured quality against the targets, how it was trained, and
the exact command that trains it again.

Knows: the trainer's state and settings, the final measurement. Does not know: the training
loop (`ldm_run`), the model's internals (`ldm`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffubias.zoo.ldm import LDMConfig
from diffubias.zoo.ldm_train import LDMTrainer, TrainSettings

# class and attribute accuracy under the independent judge (issue 12)
TARGETS = {"colored-digits": 0.90, "shape-scenes": 0.80}


def model_card(domain: str, config: LDMConfig, trainer: LDMTrainer, run: Any,
               evaluation: dict, *, corpus_size: int,
               weights_mb: float, weights_dir: Path) -> str:
    s, st = trainer.settings, trainer.state
    sampler = evaluation["settings"]
    ckpt = Path(weights_dir) / "checkpoint" / "last.safetensors"
    ckpt_mb = ckpt.stat().st_size / 1e6 if ckpt.is_file() else 0.0
    counts = trainer.parts.num_parameters()
    target = TARGETS.get(domain, 0.9)
    met = all(evaluation.get(k, 0) >= target for k in ("class_accuracy", "attribute_accuracy"))
    judge = f"the judge in `{run.probe_judge}`" if run.probe_judge else "the quick judge"
    probes = [h for h in st.history if h["phase"] == "probe"]
    vae_mse = [h["mse"] for h in st.history if h["phase"] == "vae"]
    lines = [
        f"# {domain} latent diffusion model (tiny, trained from scratch)", "",
        "A text-to-image `StableDiffusionPipeline` (CLIP text encoder with a word-level "
        "CLIPTokenizer, AutoencoderKL, UNet2DConditionModel, DDPM-style scaled-linear schedule) "
        f"trained on the balanced `{domain}` pretraining corpus of `diffubias.zoo.corpus`. "
        "The prompt alone decides what is drawn; nothing reads a label.", "",
        "**Status: " + ("meets the targets.**" if met else
                        f"below the targets (>= {target:.0%} class and >= {target:.0%} "
                        "attribute accuracy); see the notes below.**"), "",
        "## Use", "",
        "```python", "from diffubias.diffusion import load_diffusers_generator",
        f'gen = load_diffusers_generator("models/{domain}-ldm", device="cpu")', "```", "",
        f"or `--generator models/{domain}-ldm` on the command line. Images are "
        f"{config.image_size} px (the corpus's images padded/resized to that size).", "",
        "## Measured quality", "",
        f"{evaluation['n_images']} images ({run.eval_per_cell or 1} seed(s) per class x "
        "attribute cell, check-corpus captions that name both), drawn through "
        f"`load_diffusers_generator` with its defaults ({sampler['scheduler']}, "
        f"{sampler['steps']} steps, guidance {sampler['guidance_scale']}), scored by "
        f"{evaluation['judge']}:", "",
        "| measure | value | target |", "|---|---|---|",
        f"| class accuracy | {evaluation['class_accuracy']:.3f} | >= {target:.2f} |",
        f"| attribute accuracy | {evaluation['attribute_accuracy']:.3f} | >= {target:.2f} |",
        f"| both right | {evaluation['both_accuracy']:.3f} | |",
        f"| images/s ({s.device}, batch 50, with guidance) | "
        f"{evaluation['images_per_second']:.1f} | |", "",
        *(f"At guidance {g} ({e['n_images']} images): class {e['class_accuracy']:.3f}, "
          f"attribute {e['attribute_accuracy']:.3f}, both {e['both_accuracy']:.3f}.\n"
          for g, e in evaluation.get("other_guidance", {}).items()),
        f"Per-class accuracy: {evaluation['per_class']}. The judges see real images only "
        "(the judge corpus: digit sources / scene seeds no shipped model trains on).", "",
        "## Training", "",
        f"- corpus: `make_corpus({domain!r}, per_cell={run.per_cell}, seed={s.seed})`, "
        f"{corpus_size} images, one caption each (a tenth omit the class, a tenth the attribute);",
        f"- VAE: {st.vae_step} steps, batch {s.vae_batch_size}, final reconstruction MSE "
        f"{vae_mse[-1] if vae_mse else 'n/a'} (pixels in [-1, 1]); {judge} on its "
        f"reconstructions of check images (the ceiling for generated ones): "
        f"{st.best.get('vae_ceiling')}; scaling factor "
        f"{st.scaling_factor:.4f} (1 / std of the latents);",
        f"- UNet + text encoder: {st.unet_step} of {s.steps} steps, batch {s.batch_size}, AdamW "
        f"lr {s.lr}, {config.prediction_type} target, min-SNR gamma {s.min_snr_gamma}, "
        f"{s.empty_prompt_rate:.0%} empty prompts for guidance, EMA {s.ema_decay}; shipped: "
        f"the EMA weights of the best probe (step {st.best.get('step')});",
        f"- parameters: {counts}; weights {weights_mb:.1f} MB of safetensors (float32);",
        f"- wall time: {st.wall_seconds / 60:.1f} min on {s.device} "
        f"({torch.get_num_threads()} threads).", "",
        f"Probes during training ({judge}, one prompt per cell, seed fixed):", "",
        "| UNet step | class acc | attribute acc |", "|---|---|---|",
        *(f"| {p['step']} | {p['class_accuracy']:.2f} | {p['attribute_accuracy']:.2f} |"
          for p in probes), "",
        "## Retrain or continue", "",
        "```", _retrain_command(domain, s, run), "```", "",
        "The same command resumes from `checkpoint/last.safetensors` when it exists (a larger "
        "`--steps` "
        "continues the run) and trains on the GPU when there is one. "
        "`python -m diffubias.zoo.ldm_run` takes the same options and more (`--device`, "
        "`--max-minutes`, `--judge`, `--per-cell`, `--batch-size`). The checkpoint "
        f"(`checkpoint/last.safetensors`, {ckpt_mb:.0f} MB with EMA and optimiser state) is "
        + ("committed." if ckpt_mb < 10 else "not committed (over 10 MB): a later session "
           "retrains from scratch, which the command does in minutes on a GPU."),
        "Targets (issue 12): class and attribute accuracy under the independent judge at the "
        "loader's defaults of at least 0.90 on colored-digits, 0.80 on shape-scenes; "
        "`python bench/zoo.py` measures them.", ""]
    return "\n".join(lines)


def _retrain_command(domain: str, train: TrainSettings, run: Any) -> str:
    """The command that trains this model again: `train ldm` when only steps and seed differ
    from the defaults, else `ldm_run` with every option that does."""
    t, r = TrainSettings(), type(run)()  # the defaults
    options = " ".join(f"--{name.replace('_', '-')} {value}" for name, value, default in (
        ("vae_steps", train.vae_steps, t.vae_steps), ("batch_size", train.batch_size, t.batch_size),
        ("per_cell", run.per_cell, r.per_cell), ("judge", run.judge, r.judge),
        ("probe_judge", run.probe_judge, r.probe_judge)) if value != default)
    base = f"--domain {domain} --out models/{domain}-ldm --steps {train.steps} --seed {train.seed}"
    return (f"python -m diffubias.zoo.ldm_run {base} {options}" if options
            else f"python -m diffubias.zoo train ldm {base}")
