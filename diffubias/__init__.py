"""DiffuBias: find the samples a biased classifier fails on, describe them, generate more like
them, and retrain (arXiv 2411.16079).

The library knows nothing of Gradio or SQLAlchemy: stages take arrays, tensors, paths and loaded
models and return frozen dataclasses. `diffubias.pipeline` composes them; `diffubias.cli` is the
command line.
"""

__version__ = "0.1.0"
