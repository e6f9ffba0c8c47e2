"""Identity networks and encoders: checkpoint layouts, strict loading, crops, symmetry loss, ONNX and dlib.

No real ArcFace weights exist offline, so networks are randomly initialised; the checks are about structure,
loading, differentiability and the loss definition, not recognition accuracy (dlib's descriptor is real).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from perception.identity import (
    CROPS,
    DlibFaceDescriptor,
    IdentityEncoder,
    NoFaceError,
    arcface_box_in_ffhq,
    flip_horizontal,
    identity_similarity,
    images_to_tensor,
    symmetry_loss,
)
from perception.ir_se50 import IRSE50, load_state_dict_checked, read_state_dict
from perception.iresnet import build_iresnet, infer_iresnet_config, load_iresnet

IR_SE50_KNOWN_SHAPES = {
    "input_layer.0.weight": (64, 3, 3, 3),
    "input_layer.1.running_var": (64,),
    "input_layer.2.weight": (64,),
    "body.0.res_layer.0.weight": (64,),
    "body.0.res_layer.1.weight": (64, 64, 3, 3),
    "body.0.res_layer.2.weight": (64,),
    "body.0.res_layer.5.fc1.weight": (4, 64, 1, 1),
    "body.0.res_layer.5.fc2.weight": (64, 4, 1, 1),
    "body.3.shortcut_layer.0.weight": (128, 64, 1, 1),
    "body.3.shortcut_layer.1.running_mean": (128,),
    "body.7.shortcut_layer.0.weight": (256, 128, 1, 1),
    "body.20.res_layer.3.weight": (256, 256, 3, 3),
    "body.21.shortcut_layer.0.weight": (512, 256, 1, 1),
    "body.23.res_layer.5.fc1.weight": (32, 512, 1, 1),
    "body.23.res_layer.4.bias": (512,),
    "output_layer.0.weight": (512,),
    "output_layer.3.weight": (512, 512 * 7 * 7),
    "output_layer.3.bias": (512,),
    "output_layer.4.weight": (512,),
    "output_layer.4.running_var": (512,),
}

IRESNET50_KNOWN_SHAPES = {
    "conv1.weight": (64, 3, 3, 3),
    "bn1.running_mean": (64,),
    "prelu.weight": (64,),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.0.bn2.weight": (64,),
    "layer1.0.prelu.weight": (64,),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.bn3.bias": (64,),
    "layer1.0.downsample.0.weight": (64, 64, 1, 1),
    "layer1.0.downsample.1.running_var": (64,),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer3.13.conv2.weight": (256, 256, 3, 3),
    "layer4.2.bn3.weight": (512,),
    "bn2.weight": (512,),
    "fc.weight": (512, 512 * 7 * 7),
    "fc.bias": (512,),
    "features.weight": (512,),
    "features.running_var": (512,),
}


def _ir_se50_param_count() -> int:
    """Parameter count of IR-SE50 from the published layer list, independent of the module code."""
    total = 3 * 64 * 9 + 2 * 64 + 64
    for in_ch, depth, units in ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)):
        for unit in range(units):
            c_in = in_ch if unit == 0 else depth
            total += 2 * c_in + c_in * depth * 9 + depth + depth * depth * 9 + 2 * depth + 2 * depth * (depth // 16)
            if c_in != depth:
                total += c_in * depth + 2 * depth
    return total + 2 * 512 + 512 * 7 * 7 * 512 + 512 + 2 * 512


@pytest.fixture(scope="module")
def ir_se50():
    return IdentityEncoder.random("ir_se50", seed=0)


@pytest.fixture(scope="module")
def faces():
    """Two 512x512 images in [-1, 1]: a real photo (skimage astronaut) and uniform noise."""
    skimage_data = pytest.importorskip("skimage.data")
    photo = images_to_tensor(skimage_data.astronaut())
    noise = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(3)) * 2 - 1
    return photo, noise


def test_ir_se50_layout_matches_checkpoint_keys():
    state = IRSE50().state_dict()
    for key, shape in IR_SE50_KNOWN_SHAPES.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    shortcut_units = sorted({int(k.split(".")[1]) for k in state if ".shortcut_layer." in k})
    assert shortcut_units == [3, 7, 21]
    assert max(int(k.split(".")[1]) for k in state if k.startswith("body.")) == 23
    n_params = sum(p.numel() for p in IRSE50().parameters())
    assert n_params == _ir_se50_param_count() == 43_797_696


def test_ir_se50_save_load_roundtrip(tmp_path, ir_se50, faces):
    path = tmp_path / "model_ir_se50.pth"
    torch.save(ir_se50.backbone.state_dict(), path)
    loaded = IdentityEncoder.from_file(path)
    assert loaded.arch == "ir_se50" and loaded.crop.name == "psp"
    photo, _ = faces
    with torch.no_grad():
        assert torch.equal(loaded(photo), ir_se50(photo))
    with pytest.raises(ValueError, match="requested arch 'iresnet50'"):
        IdentityEncoder.from_file(path, arch="iresnet50")


def test_checkpoint_wrappers_are_unwrapped(tmp_path):
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module.a.weight": torch.ones(2), "module.b": torch.zeros(1)}}, wrapped)
    assert read_state_dict(wrapped).keys() == {"a.weight", "b"}
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        read_state_dict(tmp_path / "missing.pth")


def test_strict_loading_names_bad_keys(tmp_path, ir_se50):
    state = dict(ir_se50.backbone.state_dict())
    state["body.5.res_layer.1.weight"] = torch.zeros(128, 128, 1, 1)
    state["body.99.extra"] = torch.zeros(1)
    del state["output_layer.3.bias"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        IdentityEncoder.from_file(path)
    message = str(info.value)
    assert str(path) in message
    assert "body.5.res_layer.1.weight: file (128, 128, 1, 1) vs model (128, 128, 3, 3)" in message
    assert "unexpected keys: body.99.extra" in message
    assert "missing keys: output_layer.3.bias" in message
    torch.save({"weights": [1, 2]}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="not tensors"):
        IdentityEncoder.from_file(tmp_path / "junk.pth")


def test_missing_batch_counter_is_tolerated():
    model = build_iresnet("iresnet18")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_state_dict_checked(build_iresnet("iresnet18"), state, "old-pytorch checkpoint")


def test_encoder_features_similarity_and_gradient(ir_se50, faces):
    photo, noise = faces
    images = torch.cat([photo, photo.clone(), noise]).requires_grad_(True)
    feats = ir_se50(images)
    assert feats.shape == (3, 512)
    assert torch.allclose(feats.norm(dim=1), torch.ones(3), atol=1e-5)
    sims = identity_similarity(feats[:2], feats[1:])
    assert sims[0].item() == pytest.approx(1.0, abs=1e-6)
    assert sims[1].item() < 0.999
    (1 - sims[1]).backward()
    assert images.grad is not None and images.grad[2].abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in ir_se50.parameters())
    ir_se50.train()
    assert ir_se50.training and not ir_se50.backbone.training
    ir_se50.eval()
    np_feats = ir_se50.embed((photo.permute(0, 2, 3, 1) * 127.5 + 127.5).round().to(torch.uint8).numpy())
    assert np_feats.shape == (1, 512)
    assert identity_similarity(np_feats, feats[:1].detach().numpy())[0] == pytest.approx(1.0, abs=1e-4)


def test_symmetry_loss(ir_se50, faces):
    photo, noise = faces
    with torch.no_grad():
        same = symmetry_loss(ir_se50, photo, flip_horizontal(photo))
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    render_a = photo.clone().requires_grad_(True)
    different = symmetry_loss(ir_se50, render_a, noise)
    assert different.item() > 1e-3
    different.backward()
    assert render_a.grad.abs().sum() > 0


def test_face_crops_follow_reference_numbers():
    x = torch.randn(2, 3, 512, 512)
    pooled = F.adaptive_avg_pool2d(x, 256)
    expected = F.adaptive_avg_pool2d(pooled[:, :, 35:223, 32:220], 112)
    assert torch.allclose(CROPS["psp"](x), expected)
    assert torch.allclose(CROPS["psp"](pooled), expected)
    assert torch.allclose(CROPS["full"](x), F.adaptive_avg_pool2d(x, 112))
    top, bottom, left, right = arcface_box_in_ffhq()
    assert (round(top * 256), round(bottom * 256), round(left * 256), round(right * 256)) == (31, 226, 30, 226)
    assert CROPS["arcface_ffhq"].box == (31, 226, 30, 226)
    assert CROPS["arcface_ffhq"](x).shape == (2, 3, 112, 112)


def test_iresnet_layout_and_pth_roundtrip(tmp_path, faces):
    encoder = IdentityEncoder.random("iresnet50", seed=1)
    state = encoder.backbone.state_dict()
    for key, shape in IRESNET50_KNOWN_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert infer_iresnet_config(state) == ((3, 4, 14, 3), False)
    keys_100 = {"conv1.weight"} | {f"layer{s}.{b}.conv1.weight" for s, n in zip(range(1, 5), (3, 13, 30, 3))
                                   for b in range(n)}
    assert infer_iresnet_config(keys_100) == ((3, 13, 30, 3), False)
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    loaded = IdentityEncoder.from_file(path)
    assert loaded.arch == "iresnet50" and loaded.crop.name == "arcface_ffhq"
    photo, _ = faces
    with torch.no_grad():
        assert torch.equal(loaded(photo), encoder(photo))
    with pytest.raises(ValueError, match="stage depths"):
        load_iresnet(path, arch="iresnet100")


def _randomise_bn(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.rand(m.num_features, generator=generator) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=generator) * 0.2 - 0.1)
            if isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.num_parameters, generator=generator) * 0.5)


def _export(model, path, **kwargs):
    x = torch.randn(1, 3, 112, 112)
    torch.onnx.export(model, (x,), str(path), input_names=["input.1"], output_names=["embedding"], **kwargs)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_iresnet50_folded_roundtrip(tmp_path):
    """TorchScript export folds Conv+BN like insightface's w600k_r50.onnx; conversion must be exact."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_iresnet("iresnet50").eval()
    _randomise_bn(model, seed=5)
    path = tmp_path / "w600k_r50.onnx"
    _export(model, path, dynamo=False, dynamic_axes={"input.1": {0: "batch"}})
    encoder = IdentityEncoder.from_file(path)
    assert encoder.arch == "iresnet50" and encoder.backbone.layers == (3, 4, 14, 3) and encoder.backbone.fused_bn
    state = encoder.backbone.state_dict()
    assert "layer1.0.downsample.0.bias" in state and "layer1.0.bn2.weight" not in state
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        reference, converted = model(x), encoder.backbone(x)
    assert torch.allclose(converted, reference, atol=1e-5, rtol=1e-4)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"input.1": x.numpy()})[0]
    assert np.allclose(onnx_out, converted.numpy(), atol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("dynamo", [False, True], ids=["unfolded-torchscript", "dynamo"])
def test_onnx_iresnet18_other_exports(tmp_path, dynamo):
    """Unfolded BatchNorms (standard layout) and the dynamo exporter (which folds `features` into fc)."""
    pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    from perception.onnx_to_iresnet import main, onnx_to_iresnet

    torch.manual_seed(1)
    model = build_iresnet("iresnet18").eval()
    _randomise_bn(model, seed=6)
    path = tmp_path / "r18.onnx"
    kwargs = {"dynamo": True} if dynamo else {"dynamo": False, "do_constant_folding": False}
    _export(model, path, **kwargs)
    converted = onnx_to_iresnet(path)
    assert converted.layers == (2, 2, 2, 2)
    assert converted.fused_bn == dynamo
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(converted(x), model(x), atol=1e-5, rtol=1e-4)
    main([str(path), str(tmp_path / "r18.pth")])
    reloaded = load_iresnet(tmp_path / "r18.pth", arch="iresnet18")
    assert reloaded.fused_bn == dynamo
    with torch.no_grad():
        assert torch.equal(reloaded(x), converted(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_rejects_other_networks(tmp_path):
    pytest.importorskip("onnx")
    from perception.onnx_to_iresnet import OnnxConversionError, convert_onnx

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5), torch.nn.ReLU()).eval()
    path = tmp_path / "other.onnx"
    _export(net, path, dynamo=False)
    with pytest.raises(OnnxConversionError, match="other.onnx"):
        convert_onnx(path)


@pytest.fixture(scope="module")
def dlib_descriptor():
    pytest.importorskip("dlib")
    return DlibFaceDescriptor()


def test_dlib_descriptor(dlib_descriptor, faces):
    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.astronaut()
    first, again = dlib_descriptor.descriptors(np.stack([photo, photo]))
    assert first.shape == (128,) and np.array_equal(first, again)
    mirrored = dlib_descriptor.describe(photo[:, ::-1])
    assert 0 < np.linalg.norm(first - mirrored) < 0.6
    _, noise = faces
    assert dlib_descriptor.descriptors(noise) == [None]
    with pytest.raises(NoFaceError) as info:
        dlib_descriptor.embed(torch.cat([images_to_tensor(photo), noise]))
    assert info.value.indices == [1]
    feats = dlib_descriptor.embed(images_to_tensor(photo))
    assert feats.shape == (1, 128) and np.isclose(np.linalg.norm(feats), 1.0)
    assert identity_similarity(feats, first[None])[0] == pytest.approx(1.0, abs=1e-3)
