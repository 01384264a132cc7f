"""The model zoo: small models the project pretrains itself, because no weights can be downloaded.

DiffuBias captions images with a pretrained captioner (BLIP, LLaVA) and draws new ones with a
pretrained latent diffusion model (SD). Those were pretrained on broad corpora that hold every
combination of object and context, which is why they can describe and draw a bias-conflicting
image that the audited dataset hardly contains. The zoo rebuilds that situation in miniature for
each built-in dataset:

- `corpus`: a balanced pretraining corpus (every class x attribute combination equally often,
  captions in varied phrasings) drawn from sources the audited dataset's valid and test splits
  never use, and a held-out judge corpus from sources no shipped model sees;
- `captioner`: a small BLIP trained on the corpus, saved with `save_pretrained`, so the ordinary
  loader (`diffubias.backends.make_captioner(<folder>)`) captions with it unchanged;
- `judge`: an independent two-headed classifier (class, attribute) trained on the judge corpus
  only, which scores generated images and captions in benchmarks;
- `loop`, `card`, `cli`: the resumable checkpointed training loop, the model card, and
  `python -m diffubias.zoo train <model> --domain <built-in> --out DIR`.

Shipped models live in the repository's `models/<domain>-<model>/` with a README.md model card.
Nothing here knows of runs, stages, Gradio or the store.
"""
