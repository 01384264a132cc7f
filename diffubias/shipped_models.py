"""The models this project pretrains itself and ships in `models/`, by built-in domain.

`builtin-blip` (a small BLIP captioner) and `builtin-ldm` (a small text-to-image latent diffusion
model) are the default backends for the built-in datasets: real models, trained by
`python -m diffubias.zoo` on a balanced corpus drawn from sources the audited datasets never use,
loaded through the same `from_pretrained` paths as BLIP and Stable Diffusion. `models/` sits at
the top of the repository; `DIFFUBIAS_MODELS` points elsewhere (an installed copy, a retrained
set).

Knows: folder names; a variant of a built-in (`colored-digits-sigma0.05`,
`shape-scenes-subtle`) uses its family's models (`diffubias.builtin.builtin_family`). Does not
know: how the models load (diffubias.backends) or train (diffubias.zoo).
"""

from __future__ import annotations

import os
from pathlib import Path

BUILTIN_CAPTIONER = "builtin-blip"
BUILTIN_GENERATOR = "builtin-ldm"
KINDS = {BUILTIN_CAPTIONER: "captioner", BUILTIN_GENERATOR: "ldm", "judge": "judge"}
AUTO = "auto"  # the default captioner and generator: see `resolve`
# backend names of earlier versions, still read from saved projects, jobs and run folders
RENAMED_BACKENDS = {"demo": "oracle-renderer"}
# the names that need no model library to list (the UI offers them before its models load)
BASE_CAPTIONERS = (AUTO, BUILTIN_CAPTIONER, "metadata")
BASE_GENERATORS = (AUTO, BUILTIN_GENERATOR, "oracle-renderer")


def current_name(name: str) -> str:
    """`name`, or what it is called now if it was renamed."""
    return RENAMED_BACKENDS.get(name, name)


def resolve(name: str, dataset_name: str, *, kind: str) -> str:
    """The backend `auto` stands for: the shipped models on a built-in dataset; on any other,
    the dataset's own captions (`metadata`) for captioning, and no generator (`auto` stays, and
    diffubias.backends asks the user to choose one). Other names are returned as they are."""
    if name != AUTO:
        return current_name(name)
    builtin = dataset_name.startswith("builtin:")
    if kind == "captioner":
        return BUILTIN_CAPTIONER if builtin else "metadata"
    if kind == "generator":
        return BUILTIN_GENERATOR if builtin else AUTO
    raise ValueError(f"kind must be captioner or generator, got {kind!r}")


def models_root() -> Path:
    """`$DIFFUBIAS_MODELS`, else the repository's `models/`."""
    return Path(os.environ.get("DIFFUBIAS_MODELS") or Path(__file__).resolve().parents[1]
                / "models")


def shipped_folder(name: str, dataset_name: str) -> Path:
    """The folder of shipped model `name` (builtin-blip, builtin-ldm, judge) for a built-in
    dataset (its family's, for a variant); a ValueError that says what to choose instead
    for any other dataset."""
    if name not in KINDS:
        raise ValueError(f"no shipped model {name!r}; expected one of {', '.join(KINDS)}")
    if not dataset_name.startswith("builtin:"):
        raise ValueError(
            f"{name} is pretrained on the built-in datasets only, not {dataset_name!r}: choose "
            "a model id or local folder (e.g. --captioner blip, --generator sd15 with the weights "
            "in the Hugging Face cache), or `metadata` for the captions in your metadata.csv")
    from diffubias.builtin import builtin_family  # numpy and PIL: only when a model is wanted

    domain = builtin_family(dataset_name.removeprefix("builtin:"))
    folder = models_root() / f"{domain}-{KINDS[name]}"
    if not folder.is_dir():
        raise ValueError(
            f"{name} for {domain} should be in {folder}, which does not exist: run from a clone "
            "of the repository, set DIFFUBIAS_MODELS to a folder holding it, or train it with "
            f"`python -m diffubias.zoo train {KINDS[name]} --domain {domain} --out {folder}`")
    return folder


def oracle_note(name: str, dataset_name: str) -> str:
    """Why the captioner or generator `name` is an oracle on `dataset_name` ("" when it is not):
    it reads what a real model could not know, so its results are an upper bound."""
    builtin = dataset_name.startswith("builtin:")
    name = current_name(name)
    if name == "oracle-renderer":
        return ("oracle: draws with the dataset's own generator and falls back to the sample's "
                "label (an upper bound, not a model)")
    if name == "metadata" and builtin:
        return ("oracle captions: the built-in captions are written from the true bias "
                "attribute (an upper bound, not a model)")
    return ""
