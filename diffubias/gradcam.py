"""Grad-CAM maps of a classifier, and whether they land on the object: before vs after debiasing.

`compute_cams` runs one pytorch-grad-cam method over a uint8 batch and returns the maps with the
model's predictions; `cam_object_mass` scores *where* a model looks (the share of map mass inside
an object mask), which grad-cam's own metrics do not (they measure faithfulness); `compare_models`
does both for a biased and a debiased model on the same images; `overlay` and `comparison_sheet`
render them.

Knows nothing of datasets, training or how models are loaded. A model is any `nn.Module` whose
forward takes float images (B, 3, H, W) in [0, 1] (it normalises internally), returns logits
(B, C), and names the layer to explain in its `cam_layer` attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from diffubias.config import CAM_METHODS
from diffubias.plots import contact_sheet

# pytorch-grad-cam is imported inside the functions that use it: importing it pulls in
# matplotlib, OpenCV and scipy (~3 s), which importing `diffubias` should not pay for.
# CAM_METHODS (the names, in the order of the classes below) lives in diffubias.config, which the
# settings validate against without importing torch


# eq=False: the fields are numpy arrays, whose `==` is elementwise, so a generated __eq__ would
# raise on `if a == b`. Compare fields explicitly instead.
@dataclass(frozen=True, eq=False)
class CamResult:
    """CAM maps of one model on a batch of images.

    cams: float32 (B, H, W) in [0, 1], each map min-max scaled on its own (so maps say where, not
        how strongly, across images). predictions: int64 (B,) argmax class. confidences: float32
        (B,) softmax probability of the predicted class. targets: int64 (B,) the class each map
        explains (the prediction unless targets were given). method: the CAM method's name.
    """

    cams: np.ndarray
    predictions: np.ndarray
    confidences: np.ndarray
    targets: np.ndarray
    method: str


@dataclass(frozen=True, eq=False)
class CamComparison:
    """Two models' CAMs on the same images; object-mask scores when masks were given.

    object_mass_*: float64 (B,) share of each map's mass inside the object mask (higher = looks at
    the object more; nan where a map is all zero); mean_object_mass_*: their mean over the maps
    that are not nan (nan if none). All four are None without masks.
    """

    before: CamResult
    after: CamResult
    object_mass_before: np.ndarray | None = None
    object_mass_after: np.ndarray | None = None
    mean_object_mass_before: float | None = None
    mean_object_mass_after: float | None = None


def compute_cams(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    targets: Sequence[int] | np.ndarray | None = None,
    method: str = "gradcam",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> CamResult:
    """CAM maps of `model` on uint8 `images` (B, 3, H, W), one per image, explaining `targets`.

    targets default to each image's predicted class. "eigencam" is class-agnostic and ignores
    them (they are still recorded). The model is moved to `device` (in place, as `nn.Module.to`
    does), run in eval mode, and left in the train/eval mode of each submodule and with the
    parameter gradients it had before the call; the CAM hooks are always removed.
    """
    cam_class = _cam_class(method)
    layer = _cam_layer(model)
    images = _check_images(images)
    if len(images) == 0:
        raise ValueError("images must hold at least one image, got an empty batch")
    target_array = None if targets is None else _check_class_array(targets, len(images), "targets")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    modes = {module: module.training for module in model.modules()}
    saved_grads = [param.grad for param in model.parameters()]
    try:
        model.to(device)
        model.eval()
        n_classes = _count_classes(model, images[:1], device)
        if target_array is not None and target_array.max() >= n_classes:
            raise ValueError(
                f"targets must be class indices in [0, {n_classes}), got {int(target_array.max())}"
            )
        # enable_grad: CAM needs gradients even when the caller runs us under torch.no_grad().
        with torch.enable_grad(), cam_class(model=model, target_layers=[layer]) as cam:
            try:
                cams, logits = _run_batches(cam, images, target_array, batch_size, device)
            except IndexError as err:
                # BaseCAM.__exit__ swallows IndexError, which would return half a result.
                raise RuntimeError(f"CAM method {method!r} failed: {err!r}") from err
    finally:
        for module, was_training in modes.items():
            module.train(was_training)
        for param, grad in zip(model.parameters(), saved_grads):
            param.grad = None if grad is None else grad.to(param.device)

    probabilities = torch.softmax(logits, dim=1)  # (B, C)
    confidences, predictions = probabilities.max(dim=1)
    predictions_np = predictions.numpy().astype(np.int64)
    return CamResult(
        cams=np.clip(cams, 0.0, 1.0).astype(np.float32),
        predictions=predictions_np,
        confidences=confidences.numpy().astype(np.float32),
        targets=predictions_np.copy() if target_array is None else target_array,
        method=method.lower(),
    )


def cam_object_mass(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of each CAM's mass inside its object mask: sum(cam * mask) / sum(cam), float64 (B,).

    In [0, 1]; higher = the model looks at the object more. Compare it with the mask's area
    fraction: a map spread evenly scores exactly that. A map that is all zero has no mass to
    share, so its score is nan (0/0); average with np.nanmean.
    """
    cams = np.asarray(cams, dtype=np.float64)
    masks = _check_masks(masks)
    if cams.ndim != 3:
        raise ValueError(f"cams must be (B, H, W), got shape {cams.shape}")
    if cams.shape != masks.shape:
        raise ValueError(f"cams {cams.shape} and masks {masks.shape} must have the same shape")
    if cams.size and cams.min() < 0:
        raise ValueError(f"cams must be non-negative, got minimum {cams.min():.3g}")
    total = cams.sum(axis=(1, 2))
    inside = (cams * masks).sum(axis=(1, 2))
    with np.errstate(invalid="ignore"):
        return inside / total  # 0/0 -> nan; inside <= total, so never x/0 with x > 0


def compare_models(
    model_before: nn.Module,
    model_after: nn.Module,
    images: torch.Tensor | np.ndarray,
    *,
    masks: np.ndarray | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    method: str = "gradcam",
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> CamComparison:
    """CAMs of two models (e.g. biased, debiased) on the same images, scored against masks.

    With `labels` both maps explain the true class, so they answer the same question; without,
    each explains its own model's prediction. `masks`: bool (B, H, W) object masks.
    """
    images = _check_images(images)
    label_array = None if labels is None else _check_class_array(labels, len(images), "labels")
    if masks is not None:
        masks = _check_masks(masks)
        if masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"masks must be (B, H, W) = {(images.shape[0], *images.shape[2:])}, "
                f"got {masks.shape}"
            )
    options: dict[str, Any] = dict(
        targets=label_array, method=method, batch_size=batch_size, device=device
    )
    before = compute_cams(model_before, images, **options)
    after = compute_cams(model_after, images, **options)
    if masks is None:
        return CamComparison(before=before, after=after)
    mass_before = cam_object_mass(before.cams, masks)
    mass_after = cam_object_mass(after.cams, masks)
    return CamComparison(
        before=before,
        after=after,
        object_mass_before=mass_before,
        object_mass_after=mass_after,
        mean_object_mass_before=_nanmean(mass_before),
        mean_object_mass_after=_nanmean(mass_after),
    )


def overlay(
    image: torch.Tensor | np.ndarray, cam: np.ndarray, *, image_weight: float = 0.5
) -> np.ndarray:
    """The CAM as a jet heatmap blended over a uint8 (3, H, W) image -> uint8 (H, W, 3)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    image_np = _check_images(torch.as_tensor(np.asarray(image))[None])[0].numpy()
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != image_np.shape[1:]:
        raise ValueError(f"cam must be (H, W) = {image_np.shape[1:]}, got {cam.shape}")
    if cam.size and (cam.min() < 0 or cam.max() > 1):
        raise ValueError(f"cam must lie in [0, 1], got [{cam.min():.3g}, {cam.max():.3g}]")
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"image_weight must be in [0, 1], got {image_weight}")
    rgb = np.transpose(image_np, (1, 2, 0)).astype(np.float32) / 255.0  # (3,H,W) -> (H,W,3)
    return show_cam_on_image(rgb, cam, use_rgb=True, image_weight=image_weight)


def comparison_sheet(
    comparison: CamComparison,
    images: torch.Tensor | np.ndarray,
    *,
    class_names: Sequence[str],
    labels: Sequence[int] | np.ndarray | None = None,
    titles: tuple[str, str] = ("biased", "debiased"),
    upscale_to: int = 128,
    max_rows: int = 16,
) -> Image.Image:
    """A grid, one row per image: the image | overlay before | overlay after, with a header row.

    Under each overlay: the model's predicted class, its confidence and, when masks were given,
    the object mass. Under the image: its index and, with `labels`, its true class. Only the
    first `max_rows` images are drawn.
    """
    images = _check_images(images)
    n_images = comparison.before.cams.shape[0]
    if (images.shape[0], *images.shape[2:]) != comparison.before.cams.shape:
        raise ValueError(
            f"images {tuple(images.shape)} do not match the comparison's cams "
            f"{comparison.before.cams.shape}"
        )
    label_array = None if labels is None else _check_class_array(labels, n_images, "labels")
    if len(titles) != 2:
        raise ValueError(f"titles must be (before, after), got {titles!r}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    classes_used = [comparison.before.predictions, comparison.after.predictions]
    if label_array is not None:
        classes_used.append(label_array)
    highest = max(int(array.max()) for array in classes_used) if n_images else -1
    if highest >= len(class_names):
        raise ValueError(f"class_names has {len(class_names)} names but class {highest} occurs")

    tiles: list[np.ndarray] = []
    captions: list[str] = []
    for row in range(min(n_images, max_rows)):
        image = images[row].numpy()
        tiles.append(image)
        caption = f"#{row}"
        if label_array is not None:
            caption += f" {class_names[label_array[row]]}"
        captions.append(caption)
        for result, mass in (
            (comparison.before, comparison.object_mass_before),
            (comparison.after, comparison.object_mass_after),
        ):
            heatmap = overlay(image, result.cams[row])  # (H, W, 3)
            tiles.append(np.transpose(heatmap, (2, 0, 1)))  # -> (3, H, W)
            caption = f"{class_names[result.predictions[row]]} {result.confidences[row]:.2f}"
            if mass is not None:
                caption += f"\nmass {mass[row]:.2f}"
            captions.append(caption)
    return contact_sheet(
        np.stack(tiles),
        captions=captions,
        columns=3,
        tile=upscale_to,
        column_titles=("image", *titles),
    )


def _cam_class(method: str) -> type:
    from pytorch_grad_cam import (
        EigenCAM,
        GradCAM,
        GradCAMPlusPlus,
        HiResCAM,
        LayerCAM,
        XGradCAM,
    )

    classes = dict(
        zip(CAM_METHODS, (GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM, EigenCAM))
    )
    if not isinstance(method, str) or method.lower() not in classes:
        valid = ", ".join(CAM_METHODS)
        raise ValueError(f"unknown CAM method {method!r}; expected one of {valid}")
    return classes[method.lower()]


def _cam_layer(model: nn.Module) -> nn.Module:
    layer = getattr(model, "cam_layer", None)
    if not isinstance(layer, nn.Module):
        raise ValueError(
            f"{type(model).__name__} must have a `cam_layer` nn.Module to explain, got {layer!r}"
        )
    return layer


def _check_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 in [0, 255], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    return images.cpu()


def _check_class_array(values: Sequence[int] | np.ndarray, n: int, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise ValueError(f"{name} must have one class per image ({n},), got shape {array.shape}")
    if n and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0):
        raise ValueError(f"{name} must be non-negative class indices, got {array[:8]!r}...")
    return array.astype(np.int64)


def _check_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.dtype != bool:
        if masks.size and not np.isin(masks, (0, 1)).all():
            raise ValueError(f"masks must be bool (or 0/1), got values of dtype {masks.dtype}")
        masks = masks.astype(bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (B, H, W), got shape {masks.shape}")
    return masks


def _count_classes(model: nn.Module, probe: torch.Tensor, device: str | torch.device) -> int:
    with torch.no_grad():
        logits = model(probe.to(device=device, dtype=torch.float32) / 255.0)
    if logits.ndim != 2:
        raise ValueError(f"model must return logits (B, C), got shape {tuple(logits.shape)}")
    return int(logits.shape[1])


def _run_batches(
    cam: Any,
    images: torch.Tensor,
    targets: np.ndarray | None,
    batch_size: int,
    device: str | torch.device,
) -> tuple[np.ndarray, torch.Tensor]:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_batches: list[np.ndarray] = []
    logit_batches: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        x = batch.to(device=device, dtype=torch.float32) / 255.0  # (b, 3, H, W) in [0, 1]
        batch_targets = None  # BaseCAM then explains the argmax, i.e. the prediction
        if targets is not None:
            batch_classes = targets[start : start + len(batch)]
            batch_targets = [ClassifierOutputTarget(int(c)) for c in batch_classes]
        cam_batches.append(cam(input_tensor=x, targets=batch_targets))  # (b, H, W)
        logit_batches.append(cam.outputs.detach().float().cpu())  # (b, C), same forward
    return np.concatenate(cam_batches), torch.cat(logit_batches)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")
