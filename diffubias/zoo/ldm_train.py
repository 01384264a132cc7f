"""Training the tiny latent diffusion model of `diffubias.zoo.ldm`, resumable at any checkpoint.

Two phases on one corpus (uint8 images and their captions): (1) the AutoencoderKL learns to
reconstruct the images; then its latents are encoded once and the scaling factor is set from
their std; (2) the UNet and the text encoder learn to denoise those latents given a caption
(epsilon or v target, min-SNR weighting, a tenth of the captions emptied for classifier-free
guidance), with an EMA copy that is what gets sampled and shipped.

Every random draw of step `s` comes from a generator seeded by (seed, phase, s), so the step
counter is the whole RNG state: a run stopped at a checkpoint and resumed ends in the same
weights as one that never stopped. Checkpoints go to `<out>/checkpoint/last.safetensors`, written
atomically. Does not know: where images come from, judges or the command line
(`diffubias.zoo.ldm_run`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffubias.zoo.checkpoint import (load_checkpoint, optimizer_parts, optimizer_state,
                                      save_checkpoint)
from diffubias.zoo.ldm import LDMConfig, LDMParts, build_parts

Stop = Callable[[], bool]


def _never() -> bool:
    return False


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 20_000  # UNet steps; the VAE's come first
    vae_steps: int = 1_500  # enough for digits and flat shapes; reconstruction is logged
    batch_size: int = 64
    vae_batch_size: int = 32
    lr: float = 5e-4
    vae_lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    empty_prompt_rate: float = 0.1  # captions replaced by "" so that guidance has an unconditional
    min_snr_gamma: float = 5.0  # Hang et al. 2023: cap the weight of easy (low-noise) steps
    kl_weight: float = 1e-5  # per latent element; keeps latents tame without blurring strokes
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"  # a GPU when there is one

    def __post_init__(self) -> None:
        for name in ("steps", "vae_steps", "batch_size", "vae_batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.empty_prompt_rate < 1:
            raise ValueError(f"empty_prompt_rate must be in [0, 1), got {self.empty_prompt_rate}")


@dataclass(frozen=True)
class CaptionedImages:
    """What the model learns from: uint8 (N, 3, S, S) images at the model's size and, per
    image, one or more captions."""

    images: np.ndarray
    captions: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, 3, S, S), got {self.images.dtype} "
                             f"{self.images.shape}")
        if len(self.captions) != len(self.images) or not all(self.captions):
            raise ValueError(f"{len(self.images)} images need as many non-empty caption tuples, "
                             f"got {len(self.captions)}")

    @property
    def all_captions(self) -> list[str]:
        return [text for texts in self.captions for text in texts]


@dataclass
class TrainState:
    """Everything a checkpoint holds besides the parts' weights."""

    vae_step: int = 0
    unet_step: int = 0
    scaling_factor: float = 1.0
    wall_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)  # losses and probe results, by step
    best: dict = field(default_factory=dict)  # the best probe so far: step, scores


class LDMTrainer:
    """Owns the parts, the optimisers and the EMA weights; `train_vae` and `train_unet` advance
    to a step target, `save`/`load` checkpoint them."""

    def __init__(self, config: LDMConfig, corpus: CaptionedImages, settings: TrainSettings) -> None:
        self.config, self.corpus, self.settings = config, corpus, settings
        from diffubias.hf_loading import pick_device

        self.device = torch.device(pick_device(settings.device))
        self.show_progress = True
        self.parts: LDMParts = build_parts(config, corpus.all_captions, seed=settings.seed)
        for name in ("text_encoder", "vae", "unet"):
            getattr(self.parts, name).to(self.device)
        self.state = TrainState()
        self.vae_opt = torch.optim.AdamW(self.parts.vae.parameters(), lr=settings.vae_lr)
        self.unet_opt = torch.optim.AdamW(self._denoiser_params(), lr=settings.lr,
                                          weight_decay=0.01)
        self.ema = {k: v.detach().clone() for k, v in self._denoiser_state().items()}
        self._latents: tuple[torch.Tensor, torch.Tensor] | None = None  # posterior mean, std
        self._token_ids = self._tokenize_corpus()  # (N, C, L) int64

    # -- the VAE phase -------------------------------------------------------------------------

    def train_vae(self, *, until: int | None = None, stop: Stop = _never) -> None:
        """Steps to `until` (default: the configured total) or until `stop()` says so."""
        s, vae = self.settings, self.parts.vae
        until = s.vae_steps if until is None else min(until, s.vae_steps)
        vae.train()
        bar = tqdm(total=until, initial=self.state.vae_step, desc="vae", leave=False,
                   disable=not self.show_progress)
        while self.state.vae_step < until and not stop():
            gen = self._step_generator("vae", self.state.vae_step)
            idx = torch.randint(len(self.corpus.images), (s.vae_batch_size,), generator=gen)
            x = self._pixels(idx)  # (B, 3, S, S) in [-1, 1]
            posterior = vae.encode(x).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen
                                                             ).to(self.device)
            recon = vae.decode(z).sample
            mse = F.mse_loss(recon, x)
            kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
            loss = mse + s.kl_weight * kl
            self._set_lr(self.vae_opt, s.vae_lr, self.state.vae_step)
            self.vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.vae_opt.step()
            self.state.vae_step += 1
            bar.update(1)
            if self.state.vae_step % 100 == 0 or self.state.vae_step == until:
                self.state.history.append({"phase": "vae", "step": self.state.vae_step,
                                           "mse": round(mse.item(), 6), "kl": round(kl.item(), 4)})
                bar.set_postfix(mse=f"{mse.item():.5f}")
        bar.close()

    def encode_corpus(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std of every corpus image, (N, C, h, w) each, on the device; sets
        the VAE's scaling factor to 1 / std of sampled latents (what SD does with its own VAE)."""
        if self._latents is None:
            vae = self.parts.vae.eval()
            means, stds = [], []
            with torch.no_grad():
                for start in range(0, len(self.corpus.images), 256):
                    idx = torch.arange(start, min(start + 256, len(self.corpus.images)))
                    posterior = vae.encode(self._pixels(idx)).latent_dist
                    means.append(posterior.mean)
                    stds.append(posterior.std)
            mean, std = torch.cat(means), torch.cat(stds)
            spread = torch.sqrt(mean.var() + std.pow(2).mean()).item()  # std of sampled latents
            self.state.scaling_factor = 1.0 / spread
            vae.register_to_config(scaling_factor=self.state.scaling_factor)
            self._latents = (mean, std)
        return self._latents

    @torch.no_grad()
    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, 3, S, S) images through the VAE (posterior mean) and back."""
        vae, out = self.parts.vae.eval(), []
        for start in range(0, len(images), 256):
            x = torch.from_numpy(images[start:start + 256]).to(self.device, torch.float32)
            recon = vae.decode(vae.encode(x / 127.5 - 1).latent_dist.mean).sample
            out.append(((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
        return torch.cat(out).numpy()

    # -- the UNet phase ------------------------------------------------------------------------

    def unet_loss(self, step: int) -> torch.Tensor:
        """The weighted denoising loss of step `step`'s batch (all its randomness from `step`)."""
        s, parts = self.settings, self.parts
        mean, std = self.encode_corpus()
        gen = self._step_generator("unet", step)
        n, b = len(mean), s.batch_size
        idx = torch.randint(n, (b,), generator=gen)
        which = torch.randint(self._token_ids.shape[1], (b,), generator=gen)
        ids = self._token_ids[idx, which]  # (B, L)
        empty = torch.rand(b, generator=gen) < s.empty_prompt_rate
        ids = torch.where(empty[:, None], self._empty_ids, ids)
        eps_latent = torch.randn((b, *mean.shape[1:]), generator=gen)
        noise = torch.randn((b, *mean.shape[1:]), generator=gen)
        t = torch.randint(parts.scheduler.config.num_train_timesteps, (b,), generator=gen)
        ids, eps_latent, noise, t = (v.to(self.device) for v in (ids, eps_latent, noise, t))
        idx = idx.to(self.device)
        latents = (mean[idx] + std[idx] * eps_latent) * self.state.scaling_factor
        noisy = parts.scheduler.add_noise(latents, noise, t)
        if self.config.prediction_type == "epsilon":
            target = noise
        else:
            target = parts.scheduler.get_velocity(latents, noise, t)
        text = parts.text_encoder(ids)[0]  # (B, L, width): what the pipeline feeds the UNet
        pred = parts.unet(noisy, t, text).sample
        per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))
        return (per_sample * self._snr_weight(t)).mean()

    def train_unet(self, *, until: int | None = None, stop: Stop = _never) -> None:
        """Steps to `until` (default: the configured total) or until `stop()` says so."""
        s = self.settings
        until = s.steps if until is None else min(until, s.steps)
        self.encode_corpus()
        self.parts.unet.train()
        self.parts.text_encoder.train()
        bar = tqdm(total=until, initial=self.state.unet_step, desc="unet", leave=False,
                   disable=not self.show_progress)
        running = None
        while self.state.unet_step < until and not stop():
            loss = self.unet_loss(self.state.unet_step)
            self._set_lr(self.unet_opt, s.lr, self.state.unet_step)
            self.unet_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self._denoiser_params(), 1.0)
            self.unet_opt.step()
            self.state.unet_step += 1
            self._update_ema()
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            bar.update(1)
            if self.state.unet_step % 100 == 0:
                self.state.history.append({"phase": "unet", "step": self.state.unet_step,
                                           "loss": round(running, 5)})
                bar.set_postfix(loss=f"{running:.4f}")
        bar.close()

    def ema_parts(self) -> LDMParts:
        """A copy of the parts with the EMA weights in the UNet and the text encoder, in eval
        mode: what is sampled and shipped."""
        parts = copy.copy(self.parts)
        parts.unet = copy.deepcopy(self.parts.unet)
        parts.text_encoder = copy.deepcopy(self.parts.text_encoder)
        parts.scheduler = copy.deepcopy(self.parts.scheduler)
        for prefix, module in (("unet.", parts.unet), ("text_encoder.", parts.text_encoder)):
            module.load_state_dict({k[len(prefix):]: v for k, v in self.ema.items()
                                    if k.startswith(prefix)})
            module.eval()
        parts.vae.eval()
        return parts

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Writes everything a resume needs to `path`, atomically."""
        vae_opt, vae_layout = optimizer_parts(self.vae_opt.state_dict())
        unet_opt, unet_layout = optimizer_parts(self.unet_opt.state_dict())
        groups = {"vae": self.parts.vae.state_dict(), "denoiser": self._denoiser_state(),
                  "ema": self.ema, "vae_opt": vae_opt, "unet_opt": unet_opt,
                  # every draw of step s is seeded by (seed, phase, s); the global state is
                  # kept for anything outside the loop that draws from it
                  "rng": {"torch": torch.get_rng_state()}}
        meta = {"config": asdict(self.config), "settings": asdict(self.settings),
                "vocab": self.parts.tokenizer.get_vocab(), "state": asdict(self.state),
                "vae_opt": vae_layout, "unet_opt": unet_layout}
        save_checkpoint(path, groups, meta)

    def load(self, path: Path) -> None:
        """Restores a checkpoint written by `save` for the same config, corpus and seed."""
        groups, payload = load_checkpoint(path, self.device)
        if payload["config"] != json.loads(json.dumps(asdict(self.config))):
            raise ValueError(f"checkpoint {path} was trained with config {payload['config']}, "
                             f"not {asdict(self.config)}; use another --out or the same config")
        if payload["vocab"] != self.parts.tokenizer.get_vocab():
            raise ValueError(f"checkpoint {path} was trained on another corpus vocabulary")
        if payload["settings"]["seed"] != self.settings.seed:
            raise ValueError(f"checkpoint {path} was trained with seed "
                             f"{payload['settings']['seed']}, not {self.settings.seed}")
        self.state = TrainState(**payload["state"])
        self.parts.vae.load_state_dict(groups["vae"])
        denoiser = groups["denoiser"]
        for prefix, module in (("unet.", self.parts.unet),
                               ("text_encoder.", self.parts.text_encoder)):
            module.load_state_dict({k[len(prefix):]: v for k, v in denoiser.items()
                                    if k.startswith(prefix)})
        self.ema = groups["ema"]
        self.vae_opt.load_state_dict(optimizer_state(groups.get("vae_opt", {}),
                                                     payload["vae_opt"]))
        self.unet_opt.load_state_dict(optimizer_state(groups.get("unet_opt", {}),
                                                      payload["unet_opt"]))
        torch.set_rng_state(groups["rng"]["torch"].cpu())
        self._latents = None
        if self.state.vae_step >= self.settings.vae_steps:
            self.encode_corpus()

    # -- helpers -------------------------------------------------------------------------------

    def _pixels(self, idx: torch.Tensor) -> torch.Tensor:
        batch = torch.from_numpy(self.corpus.images[idx.numpy()])
        return (batch.to(self.device, torch.float32) / 127.5) - 1.0

    def _tokenize_corpus(self) -> torch.Tensor:
        most = max(len(texts) for texts in self.corpus.captions)
        # cycle shorter caption tuples so every image has `most` (equally likely) captions
        rows = [[texts[j % len(texts)] for j in range(most)] for texts in self.corpus.captions]
        ids = self._tokenize([text for row in rows for text in row])
        self._empty_ids = self._tokenize([""])[0]
        return ids.view(len(rows), most, -1)  # (N * C, L) -> (N, C, L)

    def _tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        # exactly what StableDiffusionPipeline.encode_prompt does with a prompt
        tok = self.parts.tokenizer
        return tok(list(texts), padding="max_length", max_length=tok.model_max_length,
                   truncation=True, return_tensors="pt").input_ids

    def _denoiser_state(self) -> dict[str, torch.Tensor]:
        return {**{f"unet.{k}": v for k, v in self.parts.unet.state_dict().items()},
                **{f"text_encoder.{k}": v
                   for k, v in self.parts.text_encoder.state_dict().items()}}

    def _denoiser_params(self) -> list[torch.nn.Parameter]:
        return [*self.parts.unet.parameters(), *self.parts.text_encoder.parameters()]

    @torch.no_grad()
    def _update_ema(self) -> None:
        step = self.state.unet_step
        decay = min(self.settings.ema_decay, (1 + step) / (10 + step))  # warm-up: early weights go
        for key, value in self._denoiser_state().items():
            if value.dtype.is_floating_point:
                self.ema[key].lerp_(value, 1 - decay)
            else:
                self.ema[key].copy_(value)

    def _snr_weight(self, t: torch.Tensor) -> torch.Tensor:
        alphas = self.parts.scheduler.alphas_cumprod.to(self.device)[t]
        snr = alphas / (1 - alphas)
        capped = snr.clamp(max=self.settings.min_snr_gamma)
        return capped / snr if self.config.prediction_type == "epsilon" else capped / (snr + 1)

    def _set_lr(self, optimizer: torch.optim.Optimizer, base: float, step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = base * min(1.0, (step + 1) / self.settings.warmup)

    def _step_generator(self, phase: str, step: int) -> torch.Generator:
        digest = hashlib.sha256(f"{self.settings.seed}:{phase}:{step}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)

