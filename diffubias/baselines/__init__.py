"""The registry of debiasing methods: the one list of the methods the library can train and
compare (vanilla ERM, LfF, JTT, oversampled top-K candidates, DiffuBias with and without its text
filter), and of which of them the debias stage may train as baselines.

Each entry names its function as "module:function", imported on first use, so this module
imports no torch: `diffubias.config` validates `baselines` against it and the app builds its
choices from it without loading a model library. A new method is one entry here (or one
`register` call) and its function, `(data, config, *, options, shared, progress) -> MethodResult`
(see `diffubias.baselines.vanilla` for the smallest one). Running methods by name is
`diffubias.baselines.run`; the stages they share are `diffubias.baselines.shared`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One debiasing method, described without importing it."""

    name: str  # its key, a report's column, and the role its model is stored under
    label: str  # short, for the app's checkboxes
    summary: str  # one line, for the benchmark report
    generates: bool  # needs a captioner and a generator (the DiffuBias variants)
    baseline: bool  # the debias stage may train it next to vanilla and DiffuBias
    target: str  # "package.module:function", imported by `resolve`
    # reads what no model could know (a built-in's bias attribute, its own renderer): an upper
    # bound, shown as such wherever its results appear, never a default
    upper_bound: bool = False

    def __post_init__(self) -> None:
        module, _, function = self.target.partition(":")
        if not (module and function.isidentifier()):
            raise ValueError(f"method {self.name!r}: target must be 'module:function', "
                             f"got {self.target!r}")

    def resolve(self) -> Callable:
        """The method's function: (data, config, *, options, shared, progress) -> MethodResult.
        Importing its module is what loads torch."""
        module, _, function = self.target.partition(":")
        found = getattr(importlib.import_module(module), function, None)
        if not callable(found):
            raise ValueError(f"method {self.name!r}: {module} has no function {function!r}")
        return found


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("vanilla", "vanilla (plain cross entropy)", "ERM: plain cross entropy",
           generates=False, baseline=False, target="diffubias.baselines.vanilla:vanilla"),
    Method("lff", "LfF (reweights by a GCE model's losses)",
           "LfF: GCE and CE models trained jointly, relative-difficulty weights",
           generates=False, baseline=True, target="diffubias.baselines.lff:lff"),
    Method("jtt", "JTT (repeats an ERM model's errors)",
           "JTT: ERM for T epochs, retrain with each of its errors repeated lambda times",
           generates=False, baseline=True, target="diffubias.baselines.jtt:jtt"),
    # DFA (Lee et al. 2021): two encoders, not the product's Classifier: benchmarks only
    Method("dfa", "DFA (disentangled features, swapped bias features)",
           "DFA: intrinsic and bias encoders, GCE on the bias side, relative-difficulty "
           "weights on the intrinsic side, bias features swapped within batches",
           generates=False, baseline=False, target="diffubias.baselines.dfa:dfa"),
    # JTT as its paper tunes it (benchmarks only: each trains one model per grid point)
    Method("jtt-tuned", "JTT, T and lambda chosen on validation worst-group accuracy",
           "JTT with T and lambda chosen on the validation split by worst-group accuracy, "
           "reading the validation split's bias labels as JTT's paper does",
           generates=False, baseline=False, target="diffubias.baselines.jtt:jtt_tuned"),
    Method("jtt-tuned-blind", "JTT, T and lambda chosen on validation worst-class accuracy",
           "JTT with T and lambda chosen on the validation split by worst-class accuracy "
           "(no bias label read)",
           generates=False, baseline=False, target="diffubias.baselines.jtt:jtt_tuned_blind"),
    Method("oversample-topk", "top-K candidates repeated, not generated",
           "the top-K candidates repeated, not generated",
           generates=False, baseline=True,
           target="diffubias.baselines.oversample:oversample_top_k"),
    # the method itself: the debias stage always trains it, so it is no baseline
    Method("diffubias", "DiffuBias (images generated from the filtered captions)",
           "DiffuBias: images generated from the filtered captions",
           generates=True, baseline=False,
           target="diffubias.baselines.generative:diffubias_method"),
    Method("diffubias-no-filter", "DiffuBias without the text filter",
           "DiffuBias without the text filter: every caption becomes a prompt",
           generates=True, baseline=True,
           target="diffubias.baselines.generative:diffubias_no_filter"),
    # this project's ablations of its own additions to the method (benchmarks; in the app, the
    # same choices are the Captions tab's template and the Generate tab's checks)
    Method("diffubias-unanchored", "DiffuBias without class anchoring",
           "DiffuBias without class anchoring: kept captions sent to the generator as they are",
           generates=True, baseline=False,
           target="diffubias.baselines.generative:diffubias_unanchored"),
    Method("diffubias-checked", "DiffuBias, images failing the checks dropped",
           "DiffuBias with image_checks 'drop': generated images failing a check not trained on",
           generates=True, baseline=False,
           target="diffubias.baselines.generative:diffubias_checked"),
    # the same pipeline with oracle captions and the built-in's own renderer: the ceiling the
    # real captioner and generator are measured against (benchmarks only; built-ins only)
    Method("diffubias-oracle", "DiffuBias with oracle captions and renderer (upper bound)",
           "DiffuBias with the built-in's captions (written from the true bias attribute) and "
           "its own renderer (draws the labelled class): an upper bound, not the method",
           generates=True, baseline=False, upper_bound=True,
           target="diffubias.baselines.generative:diffubias_oracle"),
    # the group-aware ceiling: knows which samples conflict (benchmarks only; needs bias labels)
    Method("group-balanced", "group-balanced ERM with the true bias labels (upper bound)",
           "ERM with every (class, bias) group of the training split weighted equally, read "
           "from the true bias labels: an upper bound, not a method a user could run blind",
           generates=False, baseline=False, upper_bound=True,
           target="diffubias.baselines.group_balanced:group_balanced"),
)}


def register(method: Method) -> Method:
    """Adds `method` after the ones already registered; its name must be new."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called `name`; an unknown name lists the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {tuple(METHODS)}")
    return METHODS[name]


def baseline_methods() -> tuple[Method, ...]:
    """The methods the debias stage may train as baselines, in registry order, as registered
    now (not at import), so a method registered later is included."""
    return tuple(m for m in METHODS.values() if m.baseline)


def baseline_names() -> tuple[str, ...]:
    return tuple(m.name for m in baseline_methods())
