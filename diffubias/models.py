"""Classifiers: a small CNN for images up to 64 px, torchvision ResNet-18 above.

Every classifier takes float images (B, 3, H, W) in [0, 1], normalises them itself and returns
logits (B, C). It exposes `cam_layer`, the module Grad-CAM hooks. This module knows nothing of
datasets or training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diffubias.config import ARCHITECTURES

SMALL_CNN_MAX_SIZE = 64  # above this a 3-stage CNN sees too little context; ResNet-18 takes over
# Weights in channels-last memory format: oneDNN's convolutions then run without reordering
# every activation: 6-epoch detection on the demo 1.35x faster on 2 CPU threads, training
# about 1.5x on 1 (bench/detection.py --demo-time, gce-6ep against gce-6ep-cl). Same math.
CHANNELS_LAST = True

# ImageNet statistics: harmless for scratch training and required by pretrained ResNet weights.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What `build_classifier` needs; stored next to the weights so a model can be rebuilt."""

    arch: str
    num_classes: int
    image_size: int
    width: int = 16

    def to_dict(self) -> dict:
        return {"arch": self.arch, "num_classes": self.num_classes,
                "image_size": self.image_size, "width": self.width}


class Classifier(nn.Module):
    """Normalisation + backbone; `cam_layer` names the backbone's last spatial block."""

    def __init__(self, backbone: nn.Module, cam_layer: str, spec: ModelSpec):
        super().__init__()
        self.backbone = backbone
        self.cam_layer_name = cam_layer  # a name, not a second registration of the same weights
        self.spec = spec
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def cam_layer(self) -> nn.Module:
        return self.backbone.get_submodule(self.cam_layer_name)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _small_cnn(num_classes: int, width: int, image_size: int) -> tuple[nn.Module, str]:
    # Conv stages separated by 2x2 pooling until the map is 7-8 px (28 px: 3 stages, 64 px: 4),
    # so the last stage sees whole objects and its CAM still locates them.
    stages = 3 if image_size <= 32 else 4
    layers: list[nn.Module] = []
    cin = 3
    for i in range(stages):
        cout = width * 2 ** i
        layers.append(_conv_block(cin, cout))
        if i < stages - 1:
            layers.append(nn.MaxPool2d(2))
        cin = cout
    cam_layer = str(len(layers) - 1)
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(cin, num_classes))
    return body, cam_layer


def _resnet18(num_classes: int, weights_path: Path | None) -> tuple[nn.Module, str]:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if weights_path is not None:
        net.load_state_dict(load_state_dict(weights_path), strict=False)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net, "layer4.1"


def resolve_arch(arch: str, image_size: int) -> str:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    if arch == "auto":
        return "small-cnn" if image_size <= SMALL_CNN_MAX_SIZE else "resnet18"
    return arch


def build_classifier(*, num_classes: int, image_size: int, arch: str = "auto", width: int = 16,
                     seed: int = 0, init_weights: Path | None = None) -> Classifier:
    """A freshly initialised classifier; the same seed gives the same initial weights.

    `init_weights` (ResNet-18 only) is a local safetensors or PyTorch state dict, e.g. ImageNet
    weights the user downloaded; the final layer is always re-initialised for `num_classes`.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    spec = ModelSpec(resolve_arch(arch, image_size), num_classes, image_size, width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.arch == "small-cnn":
            backbone, cam_layer = _small_cnn(num_classes, width, image_size)
        else:
            backbone, cam_layer = _resnet18(num_classes, init_weights)
    model = Classifier(backbone, cam_layer, spec)
    return model.to(memory_format=torch.channels_last) if CHANNELS_LAST else model


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads safetensors, or a PyTorch file with `weights_only=True` (never unpickles code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def save_classifier(model: Classifier, path: Path) -> None:
    """Weights as safetensors with the spec in the header metadata, written atomically: a
    hidden temp file in the same folder, flushed to disk, then renamed over `path`, so a crash
    or a full disk leaves the old file or the new one, never half of one."""
    import json

    from safetensors.torch import save_file

    from diffubias.files import atomic_path

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={"spec": json.dumps(model.spec.to_dict())})


def load_classifier(path: Path) -> Classifier:
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        spec = ModelSpec(**json.loads(f.metadata()["spec"]))
    model = build_classifier(num_classes=spec.num_classes, image_size=spec.image_size,
                             arch=spec.arch, width=spec.width)
    model.load_state_dict(load_state_dict(path))
    return model.eval()
