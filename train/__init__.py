"""`train`: one person's photos -> a personal adapter file (My3DGen §3: W anchors, LoRA, symmetry loss).

Modules (imported explicitly; this file imports nothing so that `cli.py --help` stays fast):

* `config`     - TrainConfig / ProjectorConfig with the paper's and the authors' values, each field documented.
* `data`       - load a preprocessed dataset folder (dataset.json) as tensors; raw photo folders are refused.
* `projector`  - `project_w(G, image, c, steps=500, seed=0, ...)` / `project_batch`: W inversion, cached.
* `losses`     - L_rec (LPIPS + L2 on final and raw images), mirrored camera pairs, L_sym.
* `trainer`    - `Trainer` (resumable training loop) and `personalize` (dataset folder -> adapter file).
* `checkpoint` - atomic, code-free (safetensors + JSON) checkpoints with every RNG state.
* `preview`    - the photos / base / personalized / novel-view grid written at the end.
* `commands`   - the typer command `cli.py train`.
"""
