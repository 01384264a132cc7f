"""Grad-CAM: a planted signal must show up where it was planted, and the wrapper must leave the
model as it found it.

Two tiny CNNs are trained for 40 steps on 32x32 images of grey noise with two coloured squares:
the "object" square (top left, red or green) and the "bias" square (bottom right, blue or
yellow). The object model's class is decided by the object square alone, the bias model's by the
bias square alone; the other square is random. A good location measure scores the object model
far above the square's area fraction and the bias model below it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diffubias import gradcam

SIZE = 32
OBJECT = (slice(4, 12), slice(4, 12))
BIAS = (slice(20, 28), slice(20, 28))
OBJECT_COLORS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1]])  # class 0 red, 1 green
BIAS_COLORS = torch.tensor([[0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])  # class 0 blue, 1 yellow
CLASS_NAMES = ("red", "green")


class TinyCNN(nn.Module):
    """The model contract: float (B, 3, H, W) in [0, 1] -> logits (B, C), plus `cam_layer`."""

    def __init__(self, n_classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(8, n_classes)
        self.cam_layer = self.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features((x - 0.5) / 0.25)  # (B, 8, H, W)
        return self.head(features.mean(dim=(2, 3)))  # (B, C)


def make_images(
    object_class: torch.Tensor, bias_class: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    n = len(object_class)
    grey = torch.rand(n, 1, SIZE, SIZE, generator=generator) * 0.6 + 0.2
    jitter = (torch.rand(n, 3, SIZE, SIZE, generator=generator) - 0.5) * 0.1
    x = grey.expand(n, 3, SIZE, SIZE) + jitter  # (n, 3, H, W)
    x[:, :, OBJECT[0], OBJECT[1]] = OBJECT_COLORS[object_class][:, :, None, None]
    x[:, :, BIAS[0], BIAS[1]] = BIAS_COLORS[bias_class][:, :, None, None]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def train(decided_by: str, seed: int) -> TinyCNN:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = TinyCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):
        label = torch.randint(0, 2, (64,), generator=generator)
        other = torch.randint(0, 2, (64,), generator=generator)
        if decided_by == "object":
            images = make_images(label, other, generator)
        else:
            images = make_images(other, label, generator)
        loss = nn.functional.cross_entropy(model(images.float() / 255), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="module")
def object_model() -> TinyCNN:
    return train("object", seed=0)


@pytest.fixture(scope="module")
def bias_model() -> TinyCNN:
    return train("bias", seed=1)


@pytest.fixture(scope="module")
def probe() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Bias-aligned images (both squares agree with the label), labels, object masks."""
    generator = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 2, (24,), generator=generator)
    images = make_images(labels, labels, generator)
    masks = np.zeros((24, SIZE, SIZE), dtype=bool)
    masks[:, OBJECT[0], OBJECT[1]] = True
    return images, labels.numpy(), masks


def has_hooks(model: TinyCNN) -> bool:
    return any(module._forward_hooks for module in model.modules())


def test_cam_mass_lands_on_the_square_that_decides_the_class(object_model, bias_model, probe):
    images, labels, masks = probe
    area = masks[0].mean()  # 0.0625: what an evenly spread map would score
    looks_at_object = gradcam.compute_cams(object_model, images)
    looks_at_bias = gradcam.compute_cams(bias_model, images)
    assert (looks_at_object.predictions == labels).all()
    assert (looks_at_bias.predictions == labels).all()

    object_mass = gradcam.cam_object_mass(looks_at_object.cams, masks)
    bias_mass = gradcam.cam_object_mass(looks_at_bias.cams, masks)
    assert object_mass.mean() > 4 * area
    assert bias_mass.mean() < area
    assert (object_mass > bias_mass).all()


def test_compare_models_scores_the_debiased_model_higher(object_model, bias_model, probe):
    images, labels, masks = probe
    comparison = gradcam.compare_models(
        bias_model, object_model, images, masks=masks, labels=labels
    )
    np.testing.assert_array_equal(comparison.before.targets, labels)
    np.testing.assert_array_equal(comparison.after.targets, labels)
    assert comparison.object_mass_before.shape == comparison.object_mass_after.shape == (24,)
    assert comparison.mean_object_mass_after - comparison.mean_object_mass_before > 0.3
    assert comparison.mean_object_mass_before == pytest.approx(
        comparison.object_mass_before.mean()
    )


def test_compare_models_without_masks_or_labels_explains_each_prediction(
    object_model, bias_model, probe
):
    images, _, _ = probe
    comparison = gradcam.compare_models(bias_model, object_model, images[:4])
    assert comparison.object_mass_before is None
    assert comparison.mean_object_mass_after is None
    np.testing.assert_array_equal(comparison.after.targets, comparison.after.predictions)


@pytest.mark.parametrize("method", gradcam.CAM_METHODS)
def test_every_method_returns_valid_maps_and_releases_hooks(object_model, probe, method):
    images, _, _ = probe
    result = gradcam.compute_cams(object_model, images[:6], method=method, batch_size=4)
    assert result.cams.shape == (6, SIZE, SIZE)
    assert result.cams.dtype == np.float32
    assert 0.0 <= result.cams.min() and result.cams.max() <= 1.0
    assert result.predictions.dtype == np.int64 and result.predictions.shape == (6,)
    assert result.confidences.dtype == np.float32
    assert ((result.confidences >= 0.5) & (result.confidences <= 1.0)).all()  # 2 classes
    np.testing.assert_array_equal(result.targets, result.predictions)
    assert result.method == method
    assert not object_model.cam_layer._forward_hooks
    assert not has_hooks(object_model)


def test_batching_does_not_change_the_maps(object_model, probe):
    images, _, _ = probe
    whole = gradcam.compute_cams(object_model, images, batch_size=64)
    pieces = gradcam.compute_cams(object_model, images, batch_size=5)
    np.testing.assert_allclose(pieces.cams, whole.cams, atol=1e-5)
    np.testing.assert_array_equal(pieces.predictions, whole.predictions)


def test_targets_are_honoured(object_model, probe):
    images, labels, masks = probe
    default = gradcam.compute_cams(object_model, images[:8])
    other = 1 - default.predictions
    result = gradcam.compute_cams(object_model, images[:8], targets=other)
    np.testing.assert_array_equal(result.targets, other)
    np.testing.assert_array_equal(result.predictions, default.predictions)
    # Explaining the class that is not there must not point at the square that says otherwise.
    assert not np.allclose(result.cams, default.cams)
    wrong_mass = np.nan_to_num(gradcam.cam_object_mass(result.cams, masks[:8]))
    assert wrong_mass.mean() < gradcam.cam_object_mass(default.cams, masks[:8]).mean()


def test_bad_targets_raise_and_leave_no_hooks(object_model, probe):
    images, _, _ = probe
    with pytest.raises(ValueError, match=r"\[0, 2\).*5"):
        gradcam.compute_cams(object_model, images[:3], targets=[0, 1, 5])
    with pytest.raises(ValueError, match="one class per image"):
        gradcam.compute_cams(object_model, images[:3], targets=[0, 1])
    assert not has_hooks(object_model)


def test_unknown_method_lists_the_valid_ones(object_model, probe):
    images, _, _ = probe
    with pytest.raises(ValueError, match="'scorecam'.*gradcam.*eigencam"):
        gradcam.compute_cams(object_model, images[:2], method="scorecam")


def test_model_modes_and_gradients_are_restored(probe):
    images, _, _ = probe
    model = TinyCNN()
    model.train()
    model.features[1].eval()  # a mixed state, like a frozen batch-norm
    modes = {name: module.training for name, module in model.named_modules()}
    with torch.no_grad():  # CAM still works when the caller has gradients off
        gradcam.compute_cams(model, images[:2])
    assert {name: module.training for name, module in model.named_modules()} == modes
    assert all(param.grad is None for param in model.parameters())

    model.eval()
    model.head.bias.grad = torch.ones(2)  # a caller's accumulated gradient survives the call
    gradcam.compute_cams(model, images[:2])
    assert not model.training
    assert torch.equal(model.head.bias.grad, torch.ones(2))
    assert model.head.weight.grad is None


def test_inputs_are_validated(object_model, probe):
    images, _, _ = probe
    with pytest.raises(ValueError, match="uint8"):
        gradcam.compute_cams(object_model, images.float() / 255)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        gradcam.compute_cams(object_model, images[:, :1])
    with pytest.raises(ValueError, match="empty"):
        gradcam.compute_cams(object_model, images[:0])
    with pytest.raises(ValueError, match="batch_size"):
        gradcam.compute_cams(object_model, images[:2], batch_size=0)
    with pytest.raises(ValueError, match="cam_layer"):
        gradcam.compute_cams(nn.Sequential(nn.Flatten(), nn.LazyLinear(2)), images[:2])


def test_cam_object_mass_by_hand():
    cams = np.zeros((3, 4, 4), dtype=np.float32)
    cams[0, :2, :2] = 1.0  # all mass inside the mask
    cams[1] = 1.0  # evenly spread: scores the mask's area fraction
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[:, :2, :2] = True
    mass = gradcam.cam_object_mass(cams, masks)  # cams[2] is all zero: 0/0
    np.testing.assert_allclose(mass[:2], [1.0, 0.25])
    assert np.isnan(mass[2])
    np.testing.assert_allclose(gradcam.cam_object_mass(cams, masks.astype(np.uint8)), mass)

    with pytest.raises(ValueError, match="same shape"):
        gradcam.cam_object_mass(cams, masks[:, :2])
    with pytest.raises(ValueError, match="non-negative"):
        gradcam.cam_object_mass(-cams, masks)
    with pytest.raises(ValueError, match="bool"):
        gradcam.cam_object_mass(cams, masks * 3)


def test_overlay_is_an_rgb_uint8_image(probe):
    images, _, _ = probe
    cam = np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    picture = gradcam.overlay(images[0], cam)
    assert picture.shape == (SIZE, SIZE, 3) and picture.dtype == np.uint8
    with pytest.raises(ValueError, match="cam must be"):
        gradcam.overlay(images[0], cam[:8])


def test_comparison_sheet_is_rows_by_three_tiles(object_model, bias_model, probe):
    images, labels, masks = probe
    comparison = gradcam.compare_models(
        bias_model, object_model, images[:4], masks=masks[:4], labels=labels[:4]
    )

    def sheet(rows: int):
        return gradcam.comparison_sheet(
            comparison, images[:4], class_names=CLASS_NAMES, labels=labels[:4],
            upscale_to=64, max_rows=rows,
        )

    heights = {rows: sheet(rows).size[1] for rows in (1, 2, 4)}
    row_height = heights[2] - heights[1]
    assert sheet(4).size[0] == 3 * 64 + 2 * 4  # three 64-px tiles, 4 px apart
    assert row_height > 64  # a tile plus its caption band
    assert heights[4] - heights[2] == 2 * row_height
    assert heights[1] > row_height  # the header row with the titles
    assert sheet(16).size == sheet(4).size  # only four images to draw

    with pytest.raises(ValueError, match="class_names"):
        gradcam.comparison_sheet(comparison, images[:4], class_names=["red"])
    with pytest.raises(ValueError, match="do not match"):
        gradcam.comparison_sheet(comparison, images[:3], class_names=CLASS_NAMES)
