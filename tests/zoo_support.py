"""Shared by the zoo tests: a tiny captioner spec and a small corpus that train in a second."""

from diffubias.zoo.captioner import CaptionerSpec

TINY_SPEC = CaptionerSpec(hidden=32, vision_layers=1, text_layers=1, heads=2, batch_size=16,
                          warmup=2, per_cell=2)
