"""RunConfig, the one place a setting is checked: every range refuses what it must with the
field's name and the allowed range, forms' whole floats become ints, `with_changes` applies a
{field: value} mapping (None keeps a setting, unknown names are refused), and the name lists it
checks against agree with the modules that implement them."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from diffubias.config import (
    ARCHITECTURES,
    BIASED_SELECTIONS,
    CAM_METHODS,
    FLOAT_RANGES,
    INT_RANGES,
    MAX_TOP_K,
    RANKERS,
    RunConfig,
)


@pytest.mark.parametrize("name", sorted(INT_RANGES))
def test_every_integer_setting_refuses_values_outside_its_range(name):
    low, high = INT_RANGES[name]
    for bad in (low - 1, high + 1, low + 0.5, math.nan, True, "3"):
        with pytest.raises(ValueError, match=rf"^{name} must be an integer from {low:,} to "
                                             rf"{high:,}; got "):
            RunConfig(**{name: bad})
    # both ends are allowed (and multiples of 8, which gen_width and gen_height also want)
    assert getattr(RunConfig(**{name: low}), name) == low
    assert getattr(RunConfig(**{name: high}), name) == high


@pytest.mark.parametrize("name", sorted(INT_RANGES))
def test_whole_floats_from_a_form_become_ints(name):
    low, high = INT_RANGES[name]
    value = getattr(RunConfig(**{name: float(high)}), name)
    assert value == high and type(value) is int


@pytest.mark.parametrize("name", sorted(FLOAT_RANGES))
def test_every_number_setting_refuses_values_outside_its_range(name):
    low, high, closed_low = FLOAT_RANGES[name]
    bracket = r"\[" if closed_low else r"\("
    below = low - 0.1 if closed_low else low
    for bad in (below, high + 0.1, math.nan, math.inf, None, True):
        with pytest.raises(ValueError, match=rf"^{name} must be a number in {bracket}{low:g}, "
                                             rf"{high:g}\]; got "):
            RunConfig(**{name: bad})
    assert getattr(RunConfig(**{name: high}), name) == high


@pytest.mark.parametrize("bad", [0, -5, 2.5, MAX_TOP_K + 1, math.nan, "0.1"])
def test_top_k_is_a_fraction_or_a_whole_count(bad):
    with pytest.raises(ValueError, match=rf"^top_k must be a fraction of each class in \(0, 1\) "
                                         rf"or a whole number .* to {MAX_TOP_K:,}; got"):
        RunConfig(top_k=bad)
    assert RunConfig(top_k=0.5).top_k == 0.5 and RunConfig(top_k=20.0).top_k == 20


@pytest.mark.parametrize(("field", "bad", "message"), [
    ("arch", "vgg", r"^arch must be one of auto, small-cnn, resnet18; got 'vgg'"),
    ("cam_method", "scorecam",
     r"^cam_method must be one of gradcam, gradcam\+\+, .*; got 'scorecam'"),
    ("ranker", "oracle", r"^ranker must be one of gce, erm-early, committee; got 'oracle'"),
    ("biased_selection", "best",
     r"^biased_selection must be one of last, train-valid-gap; got 'best'"),
])
def test_named_settings_must_be_known_names(field, bad, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{field: bad})


def test_every_known_arch_and_cam_method_is_accepted():
    assert all(RunConfig(arch=a).arch == a for a in ARCHITECTURES)
    assert all(RunConfig(cam_method=m).cam_method == m for m in CAM_METHODS)


def test_every_listed_name_is_implemented():
    """The config's lists are the only ones: each name builds what it names."""
    from diffubias.gradcam import _cam_class
    from diffubias.models import build_classifier
    from diffubias.rankers import _RANKERS, _SELECTIONS
    from diffubias.training import SELECTIONS

    assert len({_cam_class(m) for m in CAM_METHODS}) == len(CAM_METHODS)
    assert tuple(_RANKERS) == RANKERS
    assert set(_SELECTIONS) == set(BIASED_SELECTIONS) and set(_SELECTIONS.values()) <= set(
        SELECTIONS)
    for arch in ARCHITECTURES:
        model = build_classifier(num_classes=2, image_size=32, arch=arch, width=4)
        assert model.spec.arch in ("small-cnn", "resnet18")


def test_checking_a_config_imports_no_torch():
    code = ("import sys, diffubias.config as c; c.RunConfig().with_changes({'top_k': 5}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_word_lists_come_from_a_form_field_or_a_list():
    config = RunConfig(extra_stop_words=" Black, digit\nred,, ", baselines="LfF, jtt")
    assert config.extra_stop_words == ("black", "digit", "red")
    assert config.baselines == ("lff", "jtt")
    assert RunConfig(extra_stop_words=["a", " B "]).extra_stop_words == ("a", "b")
    assert RunConfig(extra_stop_words="").extra_stop_words == ()
    with pytest.raises(ValueError, match="extra_stop_words must be words separated by commas"):
        RunConfig(extra_stop_words=[1, 2])
    with pytest.raises(ValueError, match=r"unknown baselines \['magic'\]; choose from lff"):
        RunConfig(baselines=["magic"])


@pytest.mark.parametrize("name", ["captioner", "generator"])
def test_a_model_setting_must_name_something(name):
    with pytest.raises(ValueError, match=rf"^{name} must name a backend, a model id or a local "
                                         r"folder; got '  '"):
        RunConfig(**{name: "  "})


def test_with_changes_applies_a_mapping_and_none_keeps_the_setting():
    base = RunConfig(width=32, seed=5)
    changed = base.with_changes({"width": 8.0, "seed": None, "extra_stop_words": "Cat"})
    assert (changed.width, changed.seed, changed.extra_stop_words) == (8, 5, ("cat",))
    assert base.width == 32  # a new config; the old one is untouched
    assert base.with_changes({}) == base


def test_with_changes_refuses_unknown_names_naming_them():
    with pytest.raises(ValueError, match=r"^unknown settings 'count', 'epochs': not fields"):
        RunConfig().with_changes({"epochs": 3, "count": 1, "seed": 2})


def test_with_changes_checks_the_new_values():
    with pytest.raises(ValueError, match=r"^cam_samples must be an integer from 1 to "):
        RunConfig().with_changes({"cam_samples": 0})
    with pytest.raises(ValueError, match=r"^top_f must be an integer from 0 to 100,000; got -1"):
        RunConfig().with_changes({"top_f": -1})


def test_a_config_survives_its_json_form():
    config = RunConfig(extra_stop_words=("black",), baselines=("jtt",), top_k=20, arch="resnet18")
    assert RunConfig.from_dict(config.to_dict()) == config
