"""The evaluation protocol and its report: sampling, tables, plot, and the eval command on the ground-truth setup."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from evaluation.identity_score import (
    IdentityBackend,
    IdentityBackendUnavailable,
    IdentityScorer,
    make_identity_backend,
)
from evaluation.protocol import EvalConfig, ModelSpec, Photos, Protocol, sample_pairs, sample_views
from evaluation.pti import PTIConfig
from evaluation.report import IdentityBackendMissing, plot_id_vs_t, render_markdown, synthesis_table, table1
from tests.conftest import REPO


def test_model_spec_parse(tmp_path):
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"x")
    assert ModelSpec.parse("base=pretrained") == ModelSpec("base", None)
    assert ModelSpec.parse(f"lora={f}") == ModelSpec("lora", f)
    with pytest.raises(ValueError, match="NAME=ADAPTER_FILE"):
        ModelSpec.parse("pretrained")
    with pytest.raises(FileNotFoundError, match="not found"):
        ModelSpec.parse(f"x={tmp_path / 'missing.safetensors'}")


def test_pairs_and_views_are_seeded_and_in_range():
    a = sample_pairs(10, 50, np.random.default_rng(3))
    assert a == sample_pairs(10, 50, np.random.default_rng(3)) != sample_pairs(10, 50, np.random.default_rng(4))
    assert all(i != j and 0 <= i < 10 and 0 <= j < 10 for i, j in a)
    v = sample_views(np.random.default_rng(0), (4, 10, 20), 0.35, 0.25)
    assert v.shape == (4, 10, 20, 2)
    assert np.abs(v[..., 0]).max() <= 0.35 and np.abs(v[..., 1]).max() <= 0.25 and np.abs(v[..., 0]).max() > 0.3
    with pytest.raises(ValueError, match="at least 2"):
        sample_pairs(1, 3, np.random.default_rng(0))


def test_eval_config_validation():
    for bad, match in ((dict(weights=1), "weights"), (dict(pairs=0), "pairs"), (dict(inversion_yaws=()), "grid")):
        with pytest.raises(ValueError, match=match):
            EvalConfig(**bad).validate()


class EveryOtherNoFace(IdentityBackend):
    """Test backend: a random encoder that 'finds no face' in every second image it is shown."""

    def __init__(self):
        self.inner = make_identity_backend("random:iresnet18")
        self.spec, self.label, self.smoke_test = "test:every-other", "ID (test backend)", True
        self.calls = 0

    def features(self, images):
        feats = self.inner.features(images)
        out = []
        for f in feats:
            out.append(None if self.calls % 2 else f)
            self.calls += 1
        return out

    def describe(self):
        return {"spec": self.spec, "label": self.label, "smoke_test": True, "network": "iresnet18",
                "weights": "random"}


def test_identity_backend_must_be_named():
    for spec in (None, ""):
        with pytest.raises(ValueError, match=r"no identity backend named: give --identity arcface:PATH \| heads"):
            make_identity_backend(spec)
    with pytest.raises(ValueError, match="expected arcface:PATH"):
        make_identity_backend("facenet")


def test_heads_backend_missing_module_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "perception.heads_identity", None)  # as if the module did not exist yet
    with pytest.raises(IdentityBackendUnavailable) as info:
        make_identity_backend("heads")
    message = str(info.value)
    assert "\n" not in message and "--identity heads" in message and "not available" in message


def _fake_heads_module(monkeypatch, weights):
    """A stand-in for perception.heads_identity (the real one comes with the built-in head world)."""
    import types

    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.seen_max = 0.0

        def forward(self, x):
            self.seen_max = max(self.seen_max, float(x.abs().max()))
            feats = torch.stack([x.mean((1, 2, 3)), x[:, 0].mean((1, 2)) - x[:, 2].mean((1, 2)), x.std((1, 2, 3))], 1)
            return torch.nn.functional.normalize(feats, dim=1)

    net = Net()
    module = types.ModuleType("perception.heads_identity")
    module.HEADS_IDENTITY_WEIGHTS = weights
    module.load_heads_identity = lambda path=None: net
    monkeypatch.setitem(sys.modules, "perception.heads_identity", module)
    return net


def test_heads_backend_with_monkeypatched_loader(monkeypatch, tmp_path):
    import torch
    weights = tmp_path / "heads_identity.safetensors"
    _fake_heads_module(monkeypatch, weights)
    with pytest.raises(IdentityBackendUnavailable, match="weights are missing"):
        make_identity_backend("heads")
    weights.write_bytes(b"stand-in weights")
    net = _fake_heads_module(monkeypatch, weights)
    backend = make_identity_backend("heads")
    assert backend.label == "ID (built-in heads identity network, not ArcFace)" and not backend.arcface
    info = backend.describe()
    assert info["spec"] == "heads" and info["weights"] == weights.name and info["weights_sha256"].startswith("sha")
    refs = torch.rand(3, 3, 16, 16) * 2 - 1
    scorer = IdentityScorer(backend, refs)
    batch = scorer.score(torch.cat([refs, refs * 3.0]))  # out-of-range renders are clamped before scoring
    assert net.seen_max <= 1.0
    np.testing.assert_allclose(batch.scores[:3], 1.0, atol=1e-6)
    assert batch.nearest[:3].tolist() == [0, 1, 2]


class _Stopped(Exception):
    """Raised where a test stops `cli.py eval`: once the identity backend is built, before any photo is read."""


def _eval_until_photos(monkeypatch, tmp_path, *args):
    """`cli.py eval ARGS` in-process (from the repository root) up to reading the photos, where it is stopped."""
    from typer.testing import CliRunner

    import evaluation.protocol
    from cli import app

    def stop(*a, **k):
        raise _Stopped
    monkeypatch.setattr(evaluation.protocol, "load_photos", stop)
    monkeypatch.chdir(REPO)
    return CliRunner().invoke(app, ["eval", *map(str, args), "--test-data", "samples/heads_person",
                                    "--reference-data", "samples/heads_person", "--models", "base=pretrained",
                                    "--out", str(tmp_path / "out")])


def test_eval_model_dir_brings_its_identity_network(monkeypatch, tmp_path):
    """`eval --model models/heads` needs no --identity: the directory's identity.safetensors scores, and is named;
    an explicit --identity wins; a model without one still needs --identity; --help says so."""
    from evaluation.identity_score import model_identity_backend
    from generator.model_dir import build_generator, save_model_dir
    from tests.helpers.cli import help_words
    result = _eval_until_photos(monkeypatch, tmp_path, "--model", "models/heads")
    assert isinstance(result.exception, _Stopped), result.output
    assert ("identity network: head-world identity network from models/heads/identity.safetensors (the model "
            "directory's)") in result.output
    info = model_identity_backend(REPO / "models" / "heads").describe()
    assert info["spec"] == "heads" and info["weights"] == "heads/identity.safetensors"
    assert info["label"] == "ID (heads identity network of model heads, not ArcFace)"
    result = _eval_until_photos(monkeypatch, tmp_path, "--model", "models/heads", "--identity", "random:iresnet18")
    assert isinstance(result.exception, _Stopped) and "identity network:" not in result.output
    bare = save_model_dir(build_generator(preset_name="tiny"), tmp_path / "bare")
    assert model_identity_backend(bare) is None
    result = _eval_until_photos(monkeypatch, tmp_path, "--model", bare)
    assert result.exit_code == 2 and "no identity backend named" in result.output
    assert "Default: the --model directory's identity.safetensors if it has one (models/heads does)" in help_words(
        "eval")


def test_dlib_label_says_not_arcface_and_arcface_is_flagged():
    from evaluation.identity_score import DlibBackend, EncoderBackend
    dlib_backend = DlibBackend(descriptor=object())
    assert "not ArcFace" in dlib_backend.label and not dlib_backend.arcface
    encoder = make_identity_backend("random:iresnet18").encoder
    assert EncoderBackend(encoder, "arcface:x.pth", "ID (ArcFace iresnet18)", False, arcface=True).arcface


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    """A real (minimal) protocol run on G0 with views of G* as photos, pretrained model and a G* 'adapter'."""
    from generator.adapter_file import Anchors, save_adapter
    from fixtures.synthetic import HELDOUT_VIEWS, TRAIN_VIEWS, ground_truth_person, person_latent, render_views
    G, truth = ground_truth_person()
    ws = person_latent(G)
    train_img, train_cam = render_views(G, ws, TRAIN_VIEWS[:3], adapter=truth)
    test_img, test_cam = render_views(G, ws, HELDOUT_VIEWS[:2], adapter=truth)
    names = [f"view_{i:02d}.png" for i in range(3)]
    path = tmp_path_factory.mktemp("eval") / "truth.safetensors"
    save_adapter(path, truth, G, anchors=Anchors(ws[:, 0].repeat(3, 1), train_cam, names),
                 extra={"train_config": {"sym": False, "mode": "lora"}})
    config = EvalConfig(pairs=2, views=2, weights=3, anchor_steps=3, inversion_yaws=(-0.3, 0.3),
                        inversion_pitches=(0.0,), cross_view=True, pti=PTIConfig(latent_steps=3, tune_steps=2))
    protocol = Protocol(G, Photos(test_img, test_cam, ["t0.png", "t1.png"]), Photos(train_img, train_cam, names),
                        EveryOtherNoFace(), config)
    result = protocol.run([ModelSpec("pretrained", None), ModelSpec("truth", path)])
    return result, protocol


def test_protocol_result_shapes(tiny_result):
    result, protocol = tiny_result
    assert [m["name"] for m in result["models"]] == ["pretrained", "truth"]
    pre, truth = result["models"]
    assert pre["train_anchor_sources"] == ["projected (3 steps)"] * 3
    assert truth["train_anchor_sources"] == ["adapter anchor"] * 3
    for m in result["models"]:
        assert len(m["inversion"]["per_photo"]) == 2
        for which in ("train", "test"):
            scores = np.array(m[f"synthesis_{which}"]["scores"], dtype=object)
            assert scores.shape == (2, 3, 2)
    assert result["t_values"] == [0.0, 0.5, 1.0]
    for m in result["models"]:  # --cross-view: each inversion seen from the other test photo's camera
        assert [p["cross_view"]["photos"] for p in m["inversion"]["per_photo"]] == [["t1.png"], ["t0.png"]]
        assert m["inversion"]["summary"]["cross_view"]["lpips"]["n"] == 2
    assert protocol.reconstructions["truth"].shape == (2, 3, 128, 128)
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN anywhere


def test_json_has_no_nan(tmp_path):
    from evaluation.report import write_json
    path = write_json({"x": float("nan"), "y": [1.0, float("inf")], "z": (2,)}, tmp_path / "r.json", command="c")
    assert json.loads(path.read_text()) == {"command": "c", "x": None, "y": [1.0, None], "z": [2]}


def test_faces_not_found_are_counted_not_hidden(tiny_result):
    result, _ = tiny_result
    # the reference set lost every second photo, and renders without a face are counted in every summary
    assert result["data"]["reference"]["no_face"] == ["view_01.png"]
    for m in result["models"]:
        s = m["synthesis_train"]["summary"]
        assert s["n_no_face"] > 0 and s["n_scored"] + s["n_no_face"] == 12
        assert None in sum(m["synthesis_train"]["scores"][0], [])
    md = render_markdown(result)
    assert "no face)" in md  # table cells show the count
    assert "view_01.png" in md  # the setup names the reference that could not be used


def test_tables_and_plot(tiny_result, tmp_path):
    result, _ = tiny_result
    t1 = table1(result).splitlines()
    assert t1[0] == "| Model | FT. | L_sym | LoRA | DISTS ↓ | LPIPS ↓ | ID (test backend) ↑ | Params ↓ |"
    assert t1[2].startswith("| pretrained | - | - | - |") and t1[3].startswith("| truth | ✓ | - | ✓ |")
    assert len(synthesis_table(result, "test").splitlines()) == 4
    assert "Table 1b (not in the paper)" in render_markdown(result)
    md = render_markdown(result, command="python cli.py eval ...", plot_path="id_vs_t.png")
    assert "The ID column is not an identity measure" in md
    assert result["base_fingerprint"] in md and result["models"][1]["adapter_sha256"] in md
    for text in ("Seed 0", "2 pairs per table", "3 weights", "2 views per weight", "python cli.py eval ..."):
        assert text in md, text
    png = plot_id_vs_t(result, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_names_the_backend_and_refuses_a_result_without_one(tiny_result, tmp_path):
    import copy

    from evaluation.report import write_json
    result, _ = tiny_result
    md = render_markdown(result)
    assert md.splitlines()[2].startswith("**Identity backend:** ID (test backend) (`--identity test:every-other`")
    dlib_like = copy.deepcopy(result)
    dlib_like["identity"] = {"spec": "dlib", "label": "ID (dlib face descriptor, not ArcFace)", "smoke_test": False,
                             "arcface": False, "network": "dlib"}
    md = render_markdown(dlib_like)
    for table in (table1(dlib_like), synthesis_table(dlib_like, "train"), synthesis_table(dlib_like, "test")):
        assert "ID (dlib face descriptor, not ArcFace) ↑" in table.splitlines()[0]
    assert "not comparable with the paper's" in md
    for bad in ({}, {"spec": "", "label": "ID"}):
        broken = dict(result, identity=bad)
        with pytest.raises(IdentityBackendMissing, match="names no identity backend"):
            render_markdown(broken)
        with pytest.raises(IdentityBackendMissing):
            write_json(broken, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_eval_command_requires_identity(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "eval", "--preset", "tiny", "--test-data", tmp_path,
                           "--reference-data", tmp_path, "--models", "base=pretrained", "--out", tmp_path / "o"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and "--identity" in proc.stderr
    assert not (tmp_path / "o").exists()


def _write_heldout(folder):
    from generator.imaging import save_png, to_uint8
    from formats.dataset import write_dataset_json
    from fixtures.synthetic import HELDOUT_VIEWS, ground_truth_person, person_latent, render_views
    G, truth = ground_truth_person()
    images, cams = render_views(G, person_latent(G), HELDOUT_VIEWS, adapter=truth)
    folder.mkdir()
    entries = []
    for i, (img, cam) in enumerate(zip(images, cams)):
        save_png(to_uint8(img), folder / f"heldout_{i:02d}.png")
        entries.append((f"heldout_{i:02d}.png", cam.numpy()))
    write_dataset_json(folder, entries)


def _cli(*args):
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=900)
    assert proc.returncode == 0, f"cli {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_eval_command_on_ground_truth_setup(tmp_path):
    """G0 vs full fine-tune vs LoRA (real trainer on G*'s 10 training views), tested on held-out views of G*."""
    train_data = REPO / "samples" / "tiny_person"
    test_data = tmp_path / "heldout"
    _write_heldout(test_data)
    adapters = {}
    for mode in ("full", "lora"):
        adapters[mode] = tmp_path / f"{mode}.safetensors"
        if mode == "lora":  # the same photos and projector settings: the lora run reuses the full run's inversions
            shutil.copytree(tmp_path / "full_train" / "inversions", tmp_path / "lora_train" / "inversions")
        proc = _cli("train", "--preset", "tiny", "--data", train_data, "--out", adapters[mode], "--mode", mode,
                    "--no-sym", "--iterations", 30, "--inversion-steps", 30, "--no-preview")
        assert ("photo(s) to invert" in proc.stdout) == (mode == "full"), proc.stdout
    out = tmp_path / "eval"
    _cli("eval", "--preset", "tiny", "--test-data", test_data, "--reference-data", train_data,
         "--models", "pretrained (G0)=pretrained", "--models", f"full={adapters['full']},lora={adapters['lora']}",
         "--identity", "random:ir_se50", "--quick", "--anchor-steps", 30,
         "--cache-dir", tmp_path / "full_train" / "inversions", "--out", out)
    for name in ("eval.md", "eval.json", "id_vs_t.png", "inversions.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "eval.json").read_text())
    assert [m["name"] for m in result["models"]] == ["pretrained (G0)", "full", "lora"]
    assert result["command"].startswith("python cli.py eval --preset tiny")
    inv = {m["name"]: m["inversion"]["summary"] for m in result["models"]}
    # ground truth recovery: personalized models reconstruct unseen views of G* better than G0 does
    for name in ("full", "lora"):
        assert inv[name]["lpips"]["mean"] < inv["pretrained (G0)"]["lpips"]["mean"]
        assert inv[name]["dists"]["mean"] < inv["pretrained (G0)"]["dists"]["mean"]
    for m in result["models"]:
        for key in ("synthesis_train", "synthesis_test"):
            assert m[key]["summary"]["n_scored"] == 2 * 3 * 4 and np.isfinite(m[key]["summary"]["mean"])
    md = (out / "eval.md").read_text()
    assert md.count("| pretrained (G0) | - | - | - |") == 3
    assert "| full | ✓ | - | - |" in md and "| lora | ✓ | - | ✓ |" in md
    assert "ID (random-init ir_se50, smoke test only)" in md and "](id_vs_t.png)" in md
