"""The method's stages, one module each, written once for every front end.

Each stage is one typed function: the run's `RunConfig` (or the part it needs), its inputs
(arrays, positions, loaded models), injected backends (a captioner, a generator, an image sink)
and an optional progress callback in; a frozen result dataclass out. Stages write nothing of their
own: the command line (`diffubias.pipeline`, a run folder) and the app (`ui/*_service.py`, the
SQLite store) read their inputs from their store, call the stage and persist its result.

  detect    stages 1-3  biased (GCE) model, per-sample loss, top-K candidates   detect.py
  caption   stage 4     captions of the candidates, bias keywords               caption.py
  filter    stage 5     the text filter: captions -> prompts                    prompts.py
  generate  stage 6     images from the prompts, one plan / seed / resume path  generate.py
  debias    stages 7-8  vanilla, debiased and baseline models, test accuracy    debias.py
  explain   stage 9     Grad-CAM of two models on the same images               explain.py
"""
