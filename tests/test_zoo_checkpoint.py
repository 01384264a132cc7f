"""Zoo checkpoints are safetensors plus JSON: an Adam optimiser restored from one continues
exactly as the original, and the file holds no pickle."""

import torch

from diffubias.zoo.checkpoint import (load_checkpoint, optimizer_parts, optimizer_state,
                                      read_meta, save_checkpoint)


def _step(model, optimizer, seed):
    torch.manual_seed(seed)
    x = torch.randn(8, 4)
    optimizer.zero_grad()
    model(x).square().mean().backward()
    optimizer.step()


def test_an_optimiser_round_trips_and_continues_identically(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for seed in range(3):
        _step(model, optimizer, seed)
    tensors, layout = optimizer_parts(optimizer.state_dict())
    save_checkpoint(tmp_path / "c.safetensors", {"model": model.state_dict(), "opt": tensors},
                    {"step": 3, "opt": layout, "note": "three steps"})

    groups, meta = load_checkpoint(tmp_path / "c.safetensors")
    assert meta["step"] == 3 and read_meta(tmp_path / "c.safetensors")["note"] == "three steps"
    restored = torch.nn.Linear(4, 3)
    restored.load_state_dict(groups["model"])
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=1.0)
    restored_opt.load_state_dict(optimizer_state(groups["opt"], meta["opt"]))
    assert restored_opt.param_groups[0]["lr"] == 1e-2
    for seed in range(3, 6):
        _step(model, optimizer, seed)
        _step(restored, restored_opt, seed)
    for a, b in zip(model.parameters(), restored.parameters()):
        assert torch.equal(a, b)
    # a safetensors file: an 8-byte header length then JSON, no pickle opcodes
    assert (tmp_path / "c.safetensors").read_bytes()[8:9] == b"{"
