"""The files that join the stages of my3dgen, defined once: numpy and the standard library only, no torch.

(`safetensors`' numpy API is imported inside the functions that read or write safetensors bytes; importing any
module of this package needs only numpy and the standard library.)

Every stage reads and writes its inputs and outputs through this package, so a field is added or checked in one
place: the training side (`generator/`, `train/`, `export/`) and the serving side (`runtime/`, `serve/`, shipped
in the runtime wheel and in every `.mar`) import the same definitions.

    adapter_file      adapter files: metadata schema, LoRA shape rule, the checked torch-free reader
    peft_folder       PEFT adapter folders (adapter_config.json + adapter_model.safetensors): names, shapes, the
                      config's fields and their checks, the checked reader
    export_manifest   the export directory's manifest.json: its one writer and its one reader
    model_dir         a model directory's config.json header and file names
    cameras           EG3D camera labels: look-at poses, intrinsics, the 25-number packing
    dataset           a dataset folder's dataset.json: label and file-name checks, its one writer and its one reader
    names             the rule for person (and model) names
    atomic            writes that never leave a half-written file or directory behind
    fingerprint       sha256 of files and of weight sets
    versioned_json    JSON metadata with a format name and version
    tensors           safetensors read header first (bounded, regular files only) and parsed with numpy;
                      missing / unexpected / mis-shaped tensor reports
    limits            the sizes and counts a file may make a reader allocate (Limits; MY3DGEN_LIMITS raises them)
    errors            FormatError and its per-format subclasses

docs/ARCHITECTURE.md shows who writes and who reads each file.
"""
