"""Loading Hugging Face models (transformers or diffusers) by hub id or local folder.

`from_pretrained(cls, model, **kwargs)` is `cls.from_pretrained` with the failure a person can
act on: a hub id that is neither in the local cache nor downloadable (offline, no network, gated)
raises a `ValueError` naming the id and the three ways to provide it, before any deep stack trace.
Also the device and dtype defaults every model backend shares. Knows nothing of which model
classes exist: callers pass the class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

_TRUE = ("1", "true", "yes", "on")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def downloads_disabled() -> bool:
    """True when the Hub is off limits (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set)."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE
           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _how_to_provide(model: str) -> str:
    from huggingface_hub import constants

    return (f"provide it in one of three ways: (1) put it in the Hugging Face cache here "
            f"(HF_HOME={constants.HF_HOME}): run `hf download {model}` on a machine with network "
            f"access and copy its HF_HOME over, or point HF_HOME at a cache that has it; "
            f"(2) pass a local folder saved with save_pretrained instead of the id; "
            f"(3) allow network access (unset HF_HUB_OFFLINE; gated models also need "
            f"`hf auth login`)")


def _is_cached(repo_id: str) -> bool:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, OSError):
        return False
    return True


def resolve_model(model: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local folder); ValueError when neither
    an existing folder nor a hub id that is cached or downloadable."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not model or not model.strip():
        raise ValueError("model is empty: expected a hub id (owner/name) or a local folder")
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path), True
    if path.exists():
        raise ValueError(f"model {model!r} is a file; expected a folder saved with "
                         "save_pretrained, or a hub id (owner/name)")
    try:
        validate_repo_id(model)
    except HFValidationError:
        raise ValueError(f"model {model!r} is neither an existing folder nor a valid hub id "
                         "(owner/name)") from None
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ValueError(f"model folder {model!r} does not exist; expected a local folder "
                         "saved with save_pretrained, or a hub id (owner/name)")
    if downloads_disabled() and not _is_cached(model):
        raise ValueError(f"model {model!r} is not in the Hugging Face cache and downloads are "
                         f"off (HF_HUB_OFFLINE=1); {_how_to_provide(model)}")
    return model, False


def from_pretrained(cls: Any, model: str, **kwargs) -> Any:
    """`cls.from_pretrained(model, **kwargs)` for a hub id or local folder, with actionable
    errors: ValueError naming the model and how to provide it instead of a loader stack trace."""
    source, local = resolve_model(model)
    if local and not any(Path(source).glob("*.json")):
        raise ValueError(f"folder {source!r} holds no model (no config.json or model_index.json); "
                         "expected a folder written by save_pretrained")
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as err:  # missing files, no network, 401/404 from the Hub
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if local:
            raise ValueError(f"folder {source!r} is not a saved {cls.__name__} model ({first}); "
                             "expected a folder written by save_pretrained") from err
        raise ValueError(f"could not load model {model!r} ({first}); "
                         f"{_how_to_provide(model)}") from err


def pick_device(device: str = "auto") -> str:
    """`auto`: this process's GPU when CUDA is available (cuda:LOCAL_RANK under `accelerate
    launch`), else the CPU. Anything else is returned as given."""
    if device != "auto":
        return device
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in _TRUE or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto`: bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on the CPU."""
    if dtype == "auto":
        if not str(device).startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto or one of {sorted(DTYPES)}")
    return DTYPES[dtype]
