"""Training checkpoints as safetensors: tensors in named groups, everything else as JSON.

The project never unpickles a file (see tests/test_security.py), so a checkpoint is not a
`torch.save` pickle. `save_checkpoint` flattens groups of tensors (a model's state dict, an EMA
copy, the RNG state) to `group/key` entries of one safetensors file and keeps the rest (steps,
settings, history) as JSON in the file's metadata. An optimiser's state dict is split the same
way by `optimizer_parts` and rebuilt by `optimizer_state`.

Knows: the file layout. Does not know: which model or loop writes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import safe_open, save_file

from diffubias.files import atomic_path

Tensors = dict[str, torch.Tensor]
_META_KEY = "checkpoint"


def save_checkpoint(path: Path, groups: Mapping[str, Mapping[str, torch.Tensor]],
                    meta: Mapping[str, object]) -> None:
    """Writes `groups` of tensors and JSON-able `meta` to `path` atomically."""
    flat: Tensors = {}
    for group, tensors in groups.items():
        if "/" in group:
            raise ValueError(f"checkpoint group names hold no '/': {group!r}")
        for key, value in tensors.items():
            # a copy: safetensors refuses tensors that share storage (tied weights, views)
            flat[f"{group}/{key}"] = value.detach().cpu().contiguous().clone()
    with atomic_path(Path(path)) as temp:
        save_file(flat, str(temp), metadata={_META_KEY: json.dumps(meta)})


def load_checkpoint(path: Path, device: str | torch.device = "cpu"
                    ) -> tuple[dict[str, Tensors], dict]:
    """(groups of tensors on `device`, meta) of a file written by `save_checkpoint`."""
    groups: dict[str, Tensors] = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:  # one read of the file
        meta = _meta(f)
        for name in f.keys():
            group, key = name.split("/", 1)
            groups.setdefault(group, {})[key] = f.get_tensor(name)
    return groups, meta


def read_meta(path: Path) -> dict:
    """The JSON part of a checkpoint, without reading its tensors."""
    with safe_open(str(path), framework="pt") as f:
        return _meta(f)


def _meta(opened) -> dict:
    return json.loads((opened.metadata() or {})[_META_KEY])


def optimizer_parts(state_dict: Mapping) -> tuple[Tensors, dict]:
    """An optimiser's state dict as (tensors, JSON layout) for `save_checkpoint`."""
    tensors: Tensors = {}
    scalars: dict[str, dict[str, object]] = {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_state(tensors: Mapping[str, torch.Tensor], layout: Mapping) -> dict:
    """The state dict `optimizer_parts` split, ready for `optimizer.load_state_dict`."""
    state: dict[int, dict[str, object]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in layout["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": [dict(g) for g in layout["param_groups"]]}
