"""Tiny, randomly initialised BLIP, LLaVA and Stable Diffusion models for offline tests.

Each builder makes the components from configs (tokenizers built in memory, no Hub access),
`save_pretrained`s them into a folder and returns the folder, so the code under test loads them
by path through the same `from_pretrained` code a hub id goes through. Outputs are noise; tests
check plumbing (shapes, counts, seeds, files), never content. Widths 16-32, 2 layers, 32 px.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Caption-ish words, so decoded random tokens read as (meaningless) sentences.
WORDS = ("a", "photo", "of", "the", "red", "green", "blue", "digit", "shape", "on", "water",
         "grass", "sky", "road", "dog", "cat", "bird", "boat", "tree", "small", "large", "with",
         "in", "background", "and", "is", "an", "image", "describe", "this", "one", "sentence")
IMAGE_SIZE = 32


def build_tiny_blip(out_dir: Path) -> Path:
    """BlipForConditionalGeneration + BlipProcessor, 16 wide, 2 layers, 32 px input."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                              BlipImageProcessor, BlipProcessor)

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {token: i for i, token in enumerate(specials + list(WORDS))}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=64)
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = dict(vocab_size=len(vocab), hidden_size=16, encoder_hidden_size=16,
                intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=64, bos_token_id=vocab["[DEC]"],
                eos_token_id=vocab["[SEP]"], sep_token_id=vocab["[SEP]"],
                pad_token_id=vocab["[PAD]"])
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision,
                                                    projection_dim=16, image_text_hidden_size=16))
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image> "
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    " {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def _word_level_tokenizer(words: tuple[str, ...]):
    """A whitespace word-level fast tokenizer with Llama-style special tokens, built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    extra = ["USER", "ASSISTANT", ":"]
    vocab = {token: i for i, token in enumerate(specials + extra + list(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        padding_side="left", model_max_length=256)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    return tokenizer


def build_tiny_llava(out_dir: Path) -> Path:
    """LlavaForConditionalGeneration + LlavaProcessor with a chat template; 16-32 wide, 2 layers."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer = _word_level_tokenizer(WORDS)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    patch = 8
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=patch, vision_feature_select_strategy="default",
                               chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=patch,
                              projection_dim=16)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                       max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _tiny_clip_tokenizer(max_length: int):
    """A CLIP BPE tokenizer over single characters (no merges), built in memory."""
    from transformers import CLIPTokenizer

    chars = "abcdefghijklmnopqrstuvwxyz0123456789,.'-"
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_tiny_sd(out_dir: Path) -> Path:
    """A StableDiffusionPipeline (UNet and VAE 16/32 wide, 2 levels; 2-layer CLIP text), 32 px
    out (latents 4 x 16 x 16)."""
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    max_length = 32
    tokenizer = _tiny_clip_tokenizer(max_length)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=IMAGE_SIZE // 2,
        in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        norm_num_groups=8, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                        norm_num_groups=8, sample_size=IMAGE_SIZE)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_length, projection_dim=32,
        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir)
    return out_dir


def write_tiny_dataset(root: Path, *, n_train: int = 6, n_conflict: int = 1,
                       size: int = IMAGE_SIZE) -> Path:
    """A folder dataset (metadata.csv) of two classes, cat and dog, with a colour bias (red
    cats, green dogs; the last `n_conflict` train samples of each class conflict) and two captions
    a sample.
    Splits: n_train train, 2 valid and 2 test per class."""
    root = Path(root)
    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "green": (40, 170, 60)}
    rows = []
    for label, usual, other in (("cat", "red", "green"), ("dog", "green", "red")):
        for split, n in (("train", n_train), ("valid", 2), ("test", 2)):
            for i in range(n):
                conflict = i >= n - n_conflict if split == "train" else i == 1
                bias = other if conflict else usual
                pixels = np.clip(np.array(colours[bias]) + rng.integers(-20, 21, (size, size, 3)),
                                 0, 255).astype(np.uint8)
                path = f"{split}/{label}_{i}.png"
                (root / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / path)
                rows.append([path, split, label, bias, f"a {label} on a {bias} background",
                             f"a photo of a {bias} {label}"])
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "split", "label", "bias", "caption", "caption_2"])
        writer.writerows(rows)
    return root


def make_run_folder(out_dir: Path, dataset_root: Path, *, prompts: list[tuple[str, str, int]] = (),
                    k: int = 1, **config):
    """A run folder as if `detect` (and `filter`, when `prompts` are given) had run on a
    write_tiny_dataset folder: config.json, scores.csv with the conflicts scored highest and the
    top `k` per class marked candidates, and prompts.csv of (class name, text, source) rows."""
    from diffubias.config import RunConfig
    from diffubias.dataset_sources import load_dataset
    from diffubias.run_folder import PROMPT_FIELDS, Run

    out_dir = Path(out_dir)
    cfg = RunConfig(dataset=str(dataset_root), cache_dir=str(out_dir.parent / "cache"), **config)
    run = Run.create(out_dir, cfg)
    ds = load_dataset(str(dataset_root), cache_dir=cfg.cache_path)
    train = ds.indices("train")
    bias = np.array(ds.bias_names)[ds.bias[train]]
    conflict = bias != np.where(ds.labels[train] == 0, "red", "green")
    losses = np.where(conflict, 2.0, 0.1) + 0.01 * np.arange(len(train))  # no ties
    candidate = np.zeros(len(train), dtype=bool)
    for c in (0, 1):
        members = np.flatnonzero(ds.labels[train] == c)
        candidate[members[np.argsort(-losses[members])[:k]]] = True
    with open(out_dir / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["position", "path", "label", "loss", "candidate", "conflict"])
        writer.writerows([int(p), ds.paths[p], ds.class_names[ds.labels[p]], f"{losses[i]:.6g}",
                          int(candidate[i]), int(conflict[i])] for i, p in enumerate(train))
    if prompts:
        with open(out_dir / "prompts.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(PROMPT_FIELDS)
            writer.writerows([1, label, text, source, ds.paths[source], "", text]
                             for label, text, source in prompts)
    return run
