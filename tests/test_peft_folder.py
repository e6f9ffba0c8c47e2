"""PEFT adapter folders (formats/peft_folder.py, generator/peft_folder.py, `cli.py adapters --export-peft /
--import-peft`): PEFT's names, shapes and config fields; a byte-identical round trip that renders identically;
folders without our metadata matched on the model; loralib adapters and bad configs refused, naming why."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file
from typer.testing import CliRunner

from formats.cameras import lookat_label
from formats.errors import AdapterFileError
from formats.limits import Limits
from formats.peft_folder import CONFIG_NAME, WEIGHTS_NAME, read_folder
from generator.adapter_file import Anchors, load_adapter, save_adapter
from generator.lora import AdapterPolicy, PersonAdapter, attach, detach, lora_delta, plan
from generator.model_dir import build_generator
from generator.peft_folder import export_peft, import_peft

NONE = type(None)
LORA_CONFIG_FIELDS = {
    # PEFT's PeftConfig + LoraConfig fields (peft docs: package_reference/lora, developer_guides/checkpoint) and
    # the JSON types save_pretrained writes for them: the schema an adapter_config.json of ours must follow.
    "peft_type": str, "task_type": (str, NONE), "base_model_name_or_path": (str, NONE), "revision": (str, NONE),
    "inference_mode": bool, "r": int, "lora_alpha": (int, float), "lora_dropout": float, "fan_in_fan_out": bool,
    "bias": str, "use_rslora": bool, "use_dora": bool, "lora_bias": bool, "init_lora_weights": (bool, str),
    "target_modules": (list, str, NONE), "exclude_modules": (list, str, NONE), "modules_to_save": (list, NONE),
    "layers_to_transform": (list, int, NONE), "layers_pattern": (list, str, NONE), "rank_pattern": dict,
    "alpha_pattern": dict,
}


@pytest.fixture(scope="module")
def G():
    return build_generator(preset_name="tiny")


def _person(G, seed=0, **policy):
    adapter = PersonAdapter.create(G, AdapterPolicy(**{"layout": "flat", **policy}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    anchors = Anchors(torch.randn(2, G.w_dim, generator=g),
                      torch.from_numpy(np.stack([lookat_label(0.0, 0.0), lookat_label(0.3, 0.1)])), ["front", "side"])
    return adapter, anchors


@pytest.fixture(scope="module")
def flat_file(G, tmp_path_factory):
    adapter, anchors = _person(G)
    return save_adapter(tmp_path_factory.mktemp("peft") / "person.safetensors", adapter, G, anchors)


def _render(G, path):
    adapter, anchors, _ = load_adapter(path, G)
    attach(G, adapter)
    try:
        with torch.no_grad():
            ws = anchors.ws_plus(G.num_ws)
            return G.synthesis(ws, anchors.c.float(), noise_mode="const")["image"]
    finally:
        detach(G)


def _exported(flat_file, tmp_path):
    export_peft(flat_file, tmp_path / "peft")
    return tmp_path / "peft"


def _edit_config(folder, **changes):
    config = json.loads((folder / CONFIG_NAME).read_text())
    config.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def load_metadata(folder) -> str:
    from safetensors import safe_open
    with safe_open(str(folder / WEIGHTS_NAME), "np") as f:
        return f.metadata()["my3dgen_adapter"]


def _without_metadata(folder):
    tensors = load_file(str(folder / WEIGHTS_NAME))
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})


# ------------------------------------------------------------------------------------------ what we write

def test_export_writes_peft_names_shapes_and_config_fields(G, flat_file, tmp_path):
    folder = _exported(flat_file, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert set(config) <= set(LORA_CONFIG_FIELDS), set(config) - set(LORA_CONFIG_FIELDS)
    for name, kind in LORA_CONFIG_FIELDS.items():
        assert name in config and isinstance(config[name], kind), name
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 4
    assert (config["bias"], config["fan_in_fan_out"], config["use_rslora"], config["use_dora"]) == ("none",) + (
        False,) * 3
    assert config["modules_to_save"] == ["decoder"]
    targets = plan(G, AdapterPolicy(layout="flat"))
    lora_modules = sorted(t.key[:-len(".weight")] for t in targets if t.kind == "lora")
    assert config["target_modules"] == lora_modules
    tensors = load_file(str(folder / WEIGHTS_NAME))
    expected = {"my3dgen.anchors.ws", "my3dgen.anchors.c"}
    for t in targets:
        module = t.key[:-len(".weight")]
        expected |= ({f"base_model.model.{module}.lora_A.weight", f"base_model.model.{module}.lora_B.weight"}
                     if t.kind == "lora" else {f"base_model.model.{t.key}"})
    assert set(tensors) == expected
    # PEFT's Conv2d pair: A [r, in, k, k] (kernel k), B [out, r, 1, 1]; its Linear pair: A [r, in], B [out, r]
    conv = "backbone.synthesis.b8.conv0"
    out_c, in_c, k, _ = G.state_dict()[conv + ".weight"].shape
    a, b = tensors[f"base_model.model.{conv}.lora_A.weight"], tensors[f"base_model.model.{conv}.lora_B.weight"]
    assert a.shape == (4, in_c, k, k) and b.shape == (out_c, 4, 1, 1) and k == 3
    fc = conv + ".affine"
    out_f, in_f = G.state_dict()[fc + ".weight"].shape
    assert tensors[f"base_model.model.{fc}.lora_A.weight"].shape == (4, in_f)
    assert tensors[f"base_model.model.{fc}.lora_B.weight"].shape == (out_f, 4)
    # every parameter under modules_to_save is personal and kept whole
    whole = {t.key for t in targets if t.kind == "full"}
    decoder = [k for k, _ in G.named_parameters() if k.startswith("decoder.")]
    assert decoder and set(decoder) <= whole


def test_peft_conv_delta_equals_ours(G, flat_file, tmp_path):
    """PEFT computes a Conv2d pair's delta as conv2d(A^T, B)^T * alpha/r: it must equal our reshape(B @ A)."""
    folder = _exported(flat_file, tmp_path)
    tensors = {k: torch.from_numpy(v) for k, v in load_file(str(folder / WEIGHTS_NAME)).items()}
    person, _, _ = load_adapter(flat_file, G)
    ours = person.file_tensors()
    for t in plan(G, AdapterPolicy(layout="flat")):
        if t.kind != "lora" or len(t.shape) != 4:
            continue
        module = t.key[:-len(".weight")]
        a, b = tensors[f"base_model.model.{module}.lora_A.weight"], tensors[f"base_model.model.{module}.lora_B.weight"]
        peft = F.conv2d(a.transpose(0, 1), b).transpose(0, 1) if t.shape[2] > 1 else (b[..., 0, 0] @ a[..., 0, 0])[
            ..., None, None]
        mine = lora_delta(ours[module + ".lora_A"].detach(), ours[module + ".lora_B"].detach(), t.shape, 1.0)
        assert torch.allclose(peft, mine, atol=1e-6), module


# ------------------------------------------------------------------------------------------ round trips

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_round_trip_is_byte_identical_and_renders_identically(G, tmp_path, dtype):
    adapter, anchors = _person(G, seed=1)
    original = save_adapter(tmp_path / "p.safetensors", adapter, G, anchors, dtype=dtype)
    export_peft(original, tmp_path / "peft")
    summary = import_peft(tmp_path / "peft", tmp_path / "back.safetensors")
    assert summary["how"] == "metadata kept" and summary["anchors"] == 2
    assert (tmp_path / "back.safetensors").read_bytes() == original.read_bytes()
    assert torch.equal(_render(G, original), _render(G, tmp_path / "back.safetensors"))
    import_peft(tmp_path / "peft", tmp_path / "checked.safetensors", G=G)  # fits the model it was trained on


@pytest.mark.parametrize("policy", [{}, {"train_decoder": False, "train_biases": False},
                                    {"parts": ("synthesis", "superresolution", "mapping"), "layer_kinds": ("conv",)}])
def test_folder_without_our_metadata_is_matched_on_the_model(G, tmp_path, policy):
    adapter, anchors = _person(G, seed=2, **policy)
    original = save_adapter(tmp_path / "p.safetensors", adapter, G, anchors)
    export_peft(original, tmp_path / "peft")
    _without_metadata(tmp_path / "peft")  # what a tool that re-saves the tensors leaves
    with pytest.raises(AdapterFileError, match="--model DIR or --preset NAME"):
        import_peft(tmp_path / "peft", tmp_path / "back.safetensors")
    assert import_peft(tmp_path / "peft", tmp_path / "back.safetensors", G=G)["how"] == "policy matched on the model"
    _, _, meta = load_adapter(tmp_path / "back.safetensors", G)
    assert meta["policy"] == json.loads(json.dumps(AdapterPolicy(layout="flat", **policy).__dict__))
    assert torch.equal(_render(G, original), _render(G, tmp_path / "back.safetensors"))


def test_rslora_scale_is_converted_when_the_policy_is_matched(G, flat_file, tmp_path):
    """rsLoRA scales by lora_alpha / sqrt(r): r 4 with lora_alpha 2 is our alpha 4 (scale 1)."""
    folder = _exported(flat_file, tmp_path)
    _without_metadata(folder)
    _edit_config(folder, use_rslora=True, lora_alpha=2)
    assert import_peft(folder, tmp_path / "back.safetensors", G=G)["alpha"] == 4.0
    assert torch.equal(_render(G, flat_file), _render(G, tmp_path / "back.safetensors"))


def test_a_folder_for_another_model_or_policy_is_refused(G, flat_file, tmp_path):
    folder = _exported(flat_file, tmp_path)
    other = build_generator(preset_name="tiny", seed=1)
    with pytest.raises(AdapterFileError, match="different base model"):
        import_peft(folder, tmp_path / "x.safetensors", G=other)
    _without_metadata(folder)
    tensors = load_file(str(folder / WEIGHTS_NAME))
    del tensors["base_model.model.backbone.synthesis.b8.conv0.bias"]
    save_file(tensors, str(folder / WEIGHTS_NAME))
    with pytest.raises(AdapterFileError, match="match no adapter policy.*missing tensors: base_model.model.backbone"):
        import_peft(folder, tmp_path / "x.safetensors", G=G)
    assert not (tmp_path / "x.safetensors").exists()


# ------------------------------------------------------------------------------------------ refusals

def test_loralib_adapters_are_refused_saying_why_and_what_to_do(G, tmp_path):
    adapter, anchors = _person(G, layout="loralib")
    path = save_adapter(tmp_path / "p.safetensors", adapter, G, anchors)
    with pytest.raises(AdapterFileError, match=r"layout 'loralib'.*A \[r, in, k, k\].*--layout flat"):
        export_peft(path, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
    full = save_adapter(tmp_path / "f.safetensors", PersonAdapter.create(G, AdapterPolicy(mode="full",
                                                                                          layout="flat")), G)
    with pytest.raises(AdapterFileError, match="no LoRA pairs"):
        export_peft(full, tmp_path / "peft")


@pytest.mark.parametrize("changes, field", [
    ({"peft_type": "LOHA"}, "peft_type"), ({"r": "4"}, "r"), ({"r": 0}, "r"), ({"r": True}, "r"),
    ({"r": 5000}, "r"), ({"lora_alpha": float("nan")}, "lora_alpha"), ({"lora_alpha": 1e9}, "lora_alpha"),
    ({"lora_alpha": "4"}, "lora_alpha"), ({"lora_dropout": 2.0}, "lora_dropout"),
    ({"fan_in_fan_out": True}, "fan_in_fan_out"), ({"use_dora": True}, "use_dora"), ({"lora_bias": True}, "lora_bias"),
    ({"use_rslora": "no"}, "use_rslora"), ({"bias": "some"}, "bias"), ({"target_modules": ".*conv.*"}, "target_modules"),
    ({"target_modules": [1]}, "target_modules"), ({"target_modules": ["backbone.synthesis.b8.conv0"]}, "target_modules"),
    ({"modules_to_save": "decoder"}, "modules_to_save"), ({"rank_pattern": {"conv0": 8}}, "rank_pattern"),
    ({"alpha_pattern": []}, "alpha_pattern"), ({"base_model_name_or_path": 5}, "base_model_name_or_path"),
    ({"trainable_token_indices": [1, 2]}, "trainable_token_indices"),
    ({"r": 8}, "r"), ({"lora_alpha": 8}, "lora_alpha"), ({"use_rslora": True}, "use_rslora"),
])
def test_bad_configs_are_refused_naming_the_field(flat_file, tmp_path, changes, field):
    folder = _exported(flat_file, tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(AdapterFileError, match=f"field '{field}'") as e:
        import_peft(folder, tmp_path / "x.safetensors")
    assert CONFIG_NAME in str(e.value) or WEIGHTS_NAME in str(e.value)
    assert not (tmp_path / "x.safetensors").exists()


def test_bad_folders_and_tensors_are_refused_by_name(flat_file, tmp_path):
    folder = _exported(flat_file, tmp_path)
    (folder / CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(AdapterFileError, match="not a JSON object"):
        read_folder(folder)
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(AdapterFileError, match="not valid JSON"):
        read_folder(folder)
    folder = _exported(flat_file, tmp_path / "2")
    with pytest.raises(AdapterFileError, match="max_metadata_bytes"):
        read_folder(folder, Limits(max_metadata_bytes=100))
    tensors, meta = load_file(str(folder / WEIGHTS_NAME)), json.loads(load_metadata(folder))
    name = "base_model.model.backbone.synthesis.b8.conv0.lora_B.weight"
    for edit, message in (
            (lambda t: t[name].fill(np.inf), f"tensor '{name}' has non-finite values"),
            (lambda t: t.pop(name), "has only lora_A.weight"),
            (lambda t: t.update({name.replace("lora_B.weight", "lora_magnitude_vector"): np.ones(3, np.float32)}),
             "no DoRA"),
            (lambda t: t.update({"model.x.weight": np.ones(3, np.float32)}), "not under 'base_model.model.'")):
        edited = {k: v.copy() for k, v in tensors.items()}
        edit(edited)
        save_file(edited, str(folder / WEIGHTS_NAME))
        with pytest.raises(AdapterFileError, match=message):
            read_folder(folder)
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"my3dgen_adapter": json.dumps({**meta, "targets": [[1]]})})
    with pytest.raises(AdapterFileError, match=r"'targets'\[0\] is malformed"):
        import_peft(folder, tmp_path / "x.safetensors")
    (folder / WEIGHTS_NAME).rename(folder / "adapter_model.bin")
    with pytest.raises(AdapterFileError, match="is a pickle and is never loaded"):
        read_folder(folder)
    with pytest.raises(AdapterFileError, match="is not a folder"):
        read_folder(flat_file)


def test_writes_are_atomic(flat_file, tmp_path, monkeypatch):
    import generator.peft_folder as pf
    folder = tmp_path / "peft"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_peft(flat_file, folder)
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]

    def broken(config):
        raise OSError("disk full")
    monkeypatch.setattr(pf, "dump_config", broken)
    with pytest.raises(OSError, match="disk full"):
        export_peft(flat_file, folder, overwrite=True)
    assert [p.name for p in folder.iterdir()] == ["keep.txt"] and sorted(p.name for p in tmp_path.iterdir()) == [
        "peft"]
    monkeypatch.undo()
    export_peft(flat_file, folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    (tmp_path / "x.safetensors").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_peft(folder, tmp_path / "x.safetensors")
    assert (tmp_path / "x.safetensors").read_bytes() == b"old"


# ------------------------------------------------------------------------------------------ the command line

def _cli(*args):
    import cli
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    return result.exit_code, [ln for ln in result.output.splitlines() if ln.strip()], result.exception


def test_cli_exports_and_imports(flat_file, tmp_path):
    code, lines, _ = _cli("adapters", "--file", flat_file, "--export-peft", tmp_path / "peft")
    assert code == 0 and lines == [f"wrote {tmp_path / 'peft'} (PEFT LoRA folder: 34 LoRA modules, 50 whole tensors, "
                                   f"2 anchors; r=4, lora_alpha=4)"], lines
    code, lines, _ = _cli("adapters", "--import-peft", tmp_path / "peft", "--out", tmp_path / "back.safetensors")
    assert code == 0 and lines == [f"wrote {tmp_path / 'back.safetensors'} (from {tmp_path / 'peft'}: 34 LoRA "
                                   f"modules, 50 whole tensors, 2 anchors; rank 4, alpha 4; metadata kept)"], lines
    assert (tmp_path / "back.safetensors").read_bytes() == flat_file.read_bytes()
    code, _, error = _cli("adapters", "--import-peft", tmp_path / "peft", "--out", tmp_path / "back.safetensors")
    assert isinstance(error, FileExistsError) and "--overwrite" in str(error)
    code, lines, _ = _cli("adapters", "--import-peft", tmp_path / "peft", "--out", tmp_path / "back.safetensors",
                          "--overwrite", "--preset", "tiny")
    assert code == 0 and lines[0].startswith("wrote ")
    _without_metadata(tmp_path / "peft")
    code, lines, _ = _cli("adapters", "--import-peft", tmp_path / "peft", "--out", tmp_path / "m.safetensors",
                          "--preset", "tiny")
    assert code == 0 and lines[0].endswith("policy matched on the model)"), lines


@pytest.mark.parametrize("args, words", [
    (("--export-peft", "D"), ("--file",)), (("--import-peft", "D"), ("--out",)), (("--out", "F"), ("one of",)),
    (("--export-peft", "D", "--import-peft", "E"), ("one of",)),
    (("--file", "F", "--export-peft", "D", "--out", "F"), ("no --out",)),
])
def test_cli_usage_errors_are_one_line(args, words):
    code, lines, _ = _cli("adapters", *args)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, lines)
    assert all(w in lines[0] for w in words), lines


def test_cli_refuses_loralib_and_train_offers_layout_flat(G, tmp_path):
    adapter, anchors = _person(G, layout="loralib")
    path = save_adapter(tmp_path / "p.safetensors", adapter, G, anchors)
    _, _, error = _cli("adapters", "--file", path, "--export-peft", tmp_path / "peft")
    assert isinstance(error, AdapterFileError) and "--layout flat" in str(error)
    code, lines, _ = _cli("train", "--help")
    assert code == 0 and any("--layout" in ln for ln in lines)
