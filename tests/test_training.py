import pytest
import torch

from diffubias.evaluation import evaluate
from diffubias.images import InMemoryImages
from diffubias.models import build_classifier, load_classifier, save_classifier
from diffubias.training import TrainConfig, gce_loss, train_classifier


def test_gce_gradient_matches_its_closed_form():
    """LfF's weighting CE * q * p_y^q has q times the gradient of GCE, (1 - p_y^q) / q."""
    logits = torch.randn(5, 4, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 0])
    q = 0.7
    (g1,) = torch.autograd.grad(gce_loss(logits, targets, q).sum(), logits)
    p_y = logits.softmax(1).gather(1, targets[:, None]).squeeze(1)
    (g2,) = torch.autograd.grad((1 - p_y.pow(q)).sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-6)


def test_gce_weights_easy_samples_more_than_ce_does():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])  # first sample easy, second hard
    targets = torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    gce = gce_loss(logits, targets, 0.7)
    assert (gce / ce)[0] > 10 * (gce / ce)[1]


def _train(planted_bias, seed, **kw):
    train = InMemoryImages(planted_bias["images"], planted_bias["labels"])
    model = build_classifier(num_classes=2, image_size=12, width=8, seed=seed)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=seed, **kw)
    return train_classifier(model, train, valid=None, config=cfg)


def test_identical_seeds_give_identical_weights(planted_bias):
    a, b = _train(planted_bias, 1), _train(planted_bias, 1)
    c = _train(planted_bias, 2)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_validation_selection_restores_the_best_epoch(planted_bias):
    valid = InMemoryImages(planted_bias["test_images"], planted_bias["test_labels"])
    train = InMemoryImages(planted_bias["images"], planted_bias["labels"])
    model = build_classifier(num_classes=2, image_size=12, width=8, seed=0)
    result = train_classifier(model, train, valid=valid,
                              config=TrainConfig(epochs=3, batch_size=64, lr=3e-3))
    accs = [h.valid_accuracy for h in result.history]
    assert result.valid_accuracy == max(accs)
    assert result.best_epoch == accs.index(max(accs)) + 1
    got = evaluate(result.model, valid, bias=None, aligned=None).overall
    assert got == pytest.approx(result.valid_accuracy)


def test_sample_weights_zero_means_no_learning(planted_bias):
    train = InMemoryImages(planted_bias["images"], planted_bias["labels"])
    model = build_classifier(num_classes=2, image_size=12, width=8, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items() if "weight" in k}
    train_classifier(model, train, valid=None, sample_weights=torch.zeros(len(train)),
                     config=TrainConfig(epochs=1, batch_size=64))
    after = model.state_dict()
    conv = [k for k in before if "backbone.0.0" in k][0]
    assert torch.equal(before[conv], after[conv])


def test_bad_config_and_inputs_are_named():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        TrainConfig(loss="focal")
    with pytest.raises(ValueError, match="gce_q"):
        TrainConfig(gce_q=1.5)
    empty = InMemoryImages(torch.zeros(0, 3, 12, 12, dtype=torch.uint8),
                           torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        train_classifier(build_classifier(num_classes=2, image_size=12), empty, valid=None,
                         config=TrainConfig())


def test_save_and_load_round_trip(tmp_path, planted_bias):
    model = build_classifier(num_classes=2, image_size=12, width=8, seed=3).eval()
    save_classifier(model, tmp_path / "m.safetensors")
    loaded = load_classifier(tmp_path / "m.safetensors")
    x = planted_bias["images"][:4].float() / 255
    assert torch.allclose(model(x), loaded(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_architecture_choice():
    assert build_classifier(num_classes=3, image_size=64).spec.arch == "small-cnn"
    big = build_classifier(num_classes=3, image_size=96)
    assert big.spec.arch == "resnet18" and big(torch.rand(1, 3, 96, 96)).shape == (1, 3)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_classifier(num_classes=3, image_size=32, arch="vit")


@pytest.mark.parametrize("arch, size", [("small-cnn", 28), ("small-cnn", 64), ("resnet18", 96)])
def test_classifiers_are_channels_last_and_compute_what_the_plain_layout_does(arch, size,
                                                                              monkeypatch,
                                                                              tmp_path):
    """The memory format (diffubias.models.CHANNELS_LAST, for speed on CPU) changes the layout
    only: the same weights give the same logits as in the plain layout, and the weights saved
    and loaded are the same."""
    from diffubias import models

    fast = build_classifier(num_classes=3, image_size=size, arch=arch, seed=1)
    monkeypatch.setattr(models, "CHANNELS_LAST", False)
    plain = build_classifier(num_classes=3, image_size=size, arch=arch, seed=1)
    monkeypatch.undo()
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not next(m for m in plain.modules()
                    if isinstance(m, torch.nn.Conv2d)).weight.is_contiguous(
                        memory_format=torch.channels_last)
    images = torch.rand(4, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(fast.eval()(images), plain.eval()(images), atol=1e-4)
    save_classifier(fast, tmp_path / "m.safetensors")
    loaded = load_classifier(tmp_path / "m.safetensors")
    with torch.no_grad():
        assert torch.allclose(loaded(images), fast(images), atol=1e-6)
