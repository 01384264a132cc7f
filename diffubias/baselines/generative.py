"""DiffuBias as a method of the comparison: with and without its text filter (the paper's
ablation), without class anchoring and with the images failing the checks dropped (this
project's ablations of its own additions), and with oracle captions and renderer (the upper
bound, built-ins only). GCE
detection, captions, prompts, generation and a CE model on train + generated images, all through
`SharedStages`, so the variants share everything up to the prompts and, when the filter keeps
every caption, the model too. It knows nothing of the other methods.
"""

from __future__ import annotations

from diffubias.baselines.shared import (
    DEFAULT_OPTIONS,
    BaselineOptions,
    MethodResult,
    SharedStages,
    method_result,
    shared_stages_for,
)
from diffubias.config import RunConfig
from diffubias.prepared import PreparedDataset
from diffubias.progress import ProgressFn, part


def diffubias_method(data: PreparedDataset, config: RunConfig, *,
                     options: BaselineOptions = DEFAULT_OPTIONS,
                     shared: SharedStages | None = None,
                     progress: ProgressFn | None = None) -> MethodResult:
    """The method: GCE detection, captions, text filter, generation, CE on train + generated."""
    return _generative("diffubias", data, config, options, shared, progress, text_filter=True)


def diffubias_no_filter(data: PreparedDataset, config: RunConfig, *,
                        options: BaselineOptions = DEFAULT_OPTIONS,
                        shared: SharedStages | None = None,
                        progress: ProgressFn | None = None) -> MethodResult:
    """The paper's ablation: every caption of every candidate becomes a prompt."""
    return _generative("diffubias-no-filter", data, config, options, shared, progress,
                       text_filter=False)


def diffubias_unanchored(data: PreparedDataset, config: RunConfig, *,
                         options: BaselineOptions = DEFAULT_OPTIONS,
                         shared: SharedStages | None = None,
                         progress: ProgressFn | None = None) -> MethodResult:
    """The method without class anchoring (`prompt_template` ""): each kept caption is sent to
    the generator as it is, whether it names its class or not."""
    return _variant("diffubias-unanchored", data, config, options, shared, progress,
                    prompt_template="")


def diffubias_checked(data: PreparedDataset, config: RunConfig, *,
                      options: BaselineOptions = DEFAULT_OPTIONS,
                      shared: SharedStages | None = None,
                      progress: ProgressFn | None = None) -> MethodResult:
    """The method with `image_checks` 'drop': generated images failing a check (class not
    shown, easy for the biased model, near-copy of a training image) are not trained on."""
    return _variant("diffubias-checked", data, config, options, shared, progress,
                    image_checks="drop")


def _variant(name: str, data: PreparedDataset, config: RunConfig, options: BaselineOptions,
             shared: SharedStages | None, progress: ProgressFn | None,
             **settings: object) -> MethodResult:
    """DiffuBias with other generation-side `settings`, sharing the run's detection, captions
    and (where the final prompts are the same) generated images."""
    variant = shared_stages_for(shared, data, config, options).with_settings(**settings)
    return _generative(name, data, variant.config, options, variant, progress, text_filter=True)


def diffubias_oracle(data: PreparedDataset, config: RunConfig, *,
                     options: BaselineOptions = DEFAULT_OPTIONS,
                     shared: SharedStages | None = None,
                     progress: ProgressFn | None = None) -> MethodResult:
    """The upper bound: the method with the built-in's oracle captions (`metadata`, written
    from the true bias attribute) and its own renderer (`oracle-renderer`, which draws the
    labelled class). Same detection and candidates as `diffubias`; built-in datasets only."""
    if not data.ds.name.startswith("builtin:"):
        raise ValueError(f"diffubias-oracle needs a built-in dataset (its captions and renderer "
                         f"are the dataset's own), not {data.ds.name!r}")
    shared = shared_stages_for(shared, data, config, options)
    oracle = shared.with_backends(captioner="metadata", generator="oracle-renderer")
    return _generative("diffubias-oracle", data, oracle.config, options, oracle, progress,
                       text_filter=True)


def _generative(name: str, data: PreparedDataset, config: RunConfig, options: BaselineOptions,
                shared: SharedStages | None, progress: ProgressFn | None, *,
                text_filter: bool) -> MethodResult:
    shared = shared_stages_for(shared, data, config, options)
    prompts = shared.prompts(text_filter=text_filter, progress=part(progress, 0.0, 0.3))
    augmented = shared.augmented_training(prompts, progress=part(progress, 0.3, 1.0))
    final = shared.final_prompts(prompts)
    n_captions = len(shared.captions())
    seconds = (shared.seconds.get("detection", 0.0) + shared.seconds["captions"]
               + augmented.generation_seconds + augmented.training.seconds)
    return method_result(name, data, config, augmented.training, seconds=seconds,
                         n_added=len(augmented.added_from),
                         info={"text_filter": text_filter, **shared.backend_names(),
                               "n_captions": n_captions,
                               "n_prompts": len(prompts),
                               "n_anchored": sum(a.text != p.text
                                                 for a, p in zip(final, prompts, strict=True)),
                               "image_checks": config.image_checks,
                               "n_generated": augmented.n_generated,
                               "n_trained_generated": len(augmented.added_from),
                               **shared.candidate_info()},
                         added_from=augmented.added_from)
