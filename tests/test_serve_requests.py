"""Request validation of the serving endpoint: every bad request is a RequestError with the right status and field."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from serve.requests import (Interpolate, HttpLimits, NovelView, People, PersonInfo, RequestError, Video, decode_body,
                            parse_request, validate_name)

LIM = HttpLimits(max_abs_yaw=0.8, max_abs_pitch=0.5, max_frames=8, image_size=128, default_budget_ms=5000.0,
             max_budget_ms=20000.0, max_video_frames=24)


def bad(raw, status, field):
    with pytest.raises(RequestError) as e:
        parse_request(raw, LIM)
    assert (e.value.status, e.value.field) == (status, field), e.value.message
    body = e.value.to_dict()
    assert body["field"] == field and body["status"] == status and body["error"]
    return e.value.message


def test_novel_view_defaults_and_types():
    r = parse_request({"op": "novel_view", "person": "alice", "anchor": "img_01.png"}, LIM)
    assert isinstance(r, NovelView)
    assert (r.person, r.anchor, r.latent, r.yaw, r.pitch) == ("alice", "img_01.png", None, 0.0, 0.0)
    assert r.budget_ms == 5000.0 and r.output.format == "png" and r.output.response == "image"
    assert r.output.size is None and r.output.content_type == "image/png"
    r = parse_request(b'{"op": "novel_view", "person": "a_b-9", "anchor": 2, "yaw": -0.8, "pitch": 0.5, '
                      b'"format": "jpg", "quality": 70, "size": 64, "budget_ms": 250, "response": "json"}', LIM)
    assert r.anchor == 2 and r.yaw == -0.8 and r.pitch == 0.5
    assert (r.output.format, r.output.quality, r.output.size, r.output.response) == ("jpeg", 70, 64, "json")
    assert r.budget_ms == 250.0


def test_latent_shapes():
    r = parse_request({"op": "novel_view", "latent": [0.5] * 16}, LIM)
    assert r.person is None and r.latent.shape == (16,) and r.latent.dtype == np.float32
    r = parse_request({"op": "novel_view", "person": "p", "latent": [[1, 2, 3], [4, 5, 6]]}, LIM)
    np.testing.assert_array_equal(r.latent, np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    assert "latent[1]" in bad({"op": "novel_view", "latent": [[1, 2], [3]]}, 400, "latent")
    assert "latent[0][1]" in bad({"op": "novel_view", "latent": [[1, "x"]]}, 400, "latent")
    assert "latent[2]" in bad({"op": "novel_view", "latent": [1, 2, True]}, 400, "latent")
    bad({"op": "novel_view", "latent": []}, 400, "latent")
    bad({"op": "novel_view", "latent": {"a": 1}}, 400, "latent")
    bad({"op": "novel_view", "latent": [float("nan")]}, 400, "latent")
    bad({"op": "novel_view", "latent": [0.0] * (LIM.max_latent_values + 1)}, 413, "latent")
    bad(b'{"op": "novel_view", "latent": [NaN]}', 400, "body")  # JSON's non-standard constants are refused


def test_interpolate():
    r = parse_request({"op": "interpolate", "person": "p", "a": 0, "b": "x", "t": 0.25}, LIM)
    assert isinstance(r, Interpolate) and r.ts == (0.25,) and not r.frames
    r = parse_request({"op": "interpolate", "person": "p", "a": 0, "b": 1, "frames": 5}, LIM)
    assert r.frames and r.ts == (0.0, 0.25, 0.5, 0.75, 1.0)
    r = parse_request({"op": "interpolate", "person": "p", "a": 0, "b": 1, "frames": 3.0}, LIM)
    assert len(r.ts) == 3
    bad({"op": "interpolate", "person": "p", "a": 0, "b": 1, "frames": 9}, 400, "frames")
    bad({"op": "interpolate", "person": "p", "a": 0, "b": 1, "frames": 1}, 400, "frames")
    bad({"op": "interpolate", "person": "p", "a": 0, "b": 1, "frames": 2.5}, 400, "frames")
    bad({"op": "interpolate", "person": "p", "a": 0, "b": 1, "t": 0.5, "frames": 3}, 400, "frames")
    bad({"op": "interpolate", "person": "p", "a": 0, "b": 1}, 400, "t")
    bad({"op": "interpolate", "person": "p", "a": 0, "b": 1, "t": 1.5}, 400, "t")
    bad({"op": "interpolate", "person": "p", "b": 1, "t": 0.5}, 400, "a")
    bad({"op": "interpolate", "person": "p", "a": 0, "b": [1], "t": 0.5}, 400, "b")
    bad({"op": "interpolate", "a": 0, "b": 1, "t": 0.5}, 400, "person")
    bad({"op": "interpolate", "person": "p", "a": -1, "b": 1, "t": 0.5}, 400, "a")


def test_video_op_defaults_and_kinds():
    r = parse_request({"op": "video", "kind": "turntable", "person": "p", "anchor": "photo1"}, LIM)
    assert isinstance(r, Video)
    assert (r.kind, r.person, r.anchor, r.latent, r.a, r.b) == ("turntable", "p", "photo1", None, None, None)
    assert (r.frames, r.fps, r.size, r.format, r.budget_ms) == (16, 30.0, None, "mp4", 5000.0)
    r = parse_request({"op": "video", "kind": "turntable", "latent": [0.5] * 4, "frames": 24, "fps": 12,
                       "size": 64, "format": "gif", "budget_ms": 100}, LIM)
    assert r.person is None and r.latent.shape == (4,) and (r.frames, r.fps, r.size, r.format) == (24, 12.0, 64, "gif")
    r = parse_request({"op": "video", "kind": "interpolate", "person": "p", "a": 0, "b": "x", "frames": 2}, LIM)
    assert (r.kind, r.a, r.b, r.anchor, r.frames) == ("interpolate", 0, "x", None, 2)


@pytest.mark.parametrize("body,field", [
    ({"kind": "spin"}, "kind"),
    ({"kind": None}, "kind"),
    ({"frames": 25}, "frames"),                  # LIM.max_video_frames = 24
    ({"frames": 1}, "frames"),
    ({"frames": 4.5}, "frames"),
    ({"fps": 0}, "fps"),
    ({"fps": 61}, "fps"),
    ({"fps": "30"}, "fps"),
    ({"size": 63}, "size"),                      # odd: H.264 needs even sides
    ({"size": 130}, "size"),                     # larger than the model's 128
    ({"format": "avi"}, "format"),
    ({"format": "png"}, "format"),
    ({"budget_ms": -1}, "budget_ms"),
    ({"yaw": 0.3}, "yaw"),                       # not a field of the video op
    ({"a": 0}, "a"),                             # a turntable takes anchor / latent
    ({"anchor": None}, "anchor"),
    ({"anchor": 0, "latent": [1.0]}, "latent"),
    ({"person": None}, "person"),
])
def test_bad_video_requests_name_the_field(body, field):
    base = {"op": "video", "kind": "turntable", "person": "p", "anchor": 0}
    bad({**base, **body}, 400, field)


def test_bad_interpolation_videos_name_the_field():
    base = {"op": "video", "kind": "interpolate", "person": "p", "a": 0, "b": 1}
    bad({**base, "anchor": 0}, 400, "anchor")
    bad({**base, "b": None}, 400, "b")
    bad({**base, "a": -1}, 400, "a")
    bad({**base, "person": None}, 400, "person")
    bad({**base, "latent": [1.0]}, 400, "latent")


def test_people_and_person_ops():
    assert isinstance(parse_request({"op": "people"}, LIM), People)
    assert parse_request('{"op": "person", "person": "bob"}', LIM) == PersonInfo("bob")
    bad({"op": "people", "person": "x"}, 400, "person")  # no fields beyond op
    bad({"op": "person"}, 400, "person")


@pytest.mark.parametrize("raw", [b"{not json", b"", b"   ", b"\xff\xfe{}", "[1, 2]", b"42", None, 3.5,
                                 b'{"op": "people"', '"just a string"'])
def test_malformed_bodies_name_the_body(raw):
    bad(raw, 400, "body")


def test_body_too_large():
    bad(b" " * (LIM.max_body_bytes + 1), 413, "body")


def test_op_and_unknown_fields():
    bad({}, 400, "op")
    bad({"op": "explode"}, 400, "op")
    bad({"op": ["people"]}, 400, "op")
    assert "yaww" in bad({"op": "novel_view", "person": "p", "anchor": 0, "yaww": 0.3}, 400, "yaww")


@pytest.mark.parametrize("field,value", [("yaw", 0.81), ("yaw", -5), ("pitch", 0.51), ("yaw", "0.3"),
                                         ("pitch", True), ("yaw", float("inf"))])
def test_angles_outside_limits(field, value):
    msg = bad({"op": "novel_view", "person": "p", "anchor": 0, field: value}, 400, field)
    assert field in msg


@pytest.mark.parametrize("name", ["../x", "..", "/etc/passwd", "a/b", "a\\b", "x\x00y", "", "a" * 65, "é",
                                  "a b", "a.safetensors", 7, None, ["a"]])
def test_person_names_that_could_address_files_are_refused(name):
    body = {"op": "novel_view", "person": name, "anchor": 0}
    if name is None:  # a null person means the base model, which has no anchors
        bad(body, 400, "person")
        return
    bad(body, 400, "person")
    bad({"op": "person", "person": name}, 400, "person")
    with pytest.raises(RequestError):
        validate_name(name)


def test_valid_names():
    for name in ("a", "A-b_9", "x" * 64, "0"):
        assert validate_name(name) == name


def test_output_fields():
    base = {"op": "novel_view", "person": "p", "anchor": 0}
    bad({**base, "format": "gif"}, 400, "format")
    bad({**base, "size": 129}, 400, "size")
    bad({**base, "size": 4}, 400, "size")
    bad({**base, "size": "64"}, 400, "size")
    bad({**base, "quality": 80}, 400, "quality")  # png has no quality
    bad({**base, "format": "jpeg", "quality": 0}, 400, "quality")
    bad({**base, "response": "xml"}, 400, "response")
    bad({**base, "budget_ms": 0}, 400, "budget_ms")
    bad({**base, "budget_ms": 20001}, 400, "budget_ms")
    bad({**base, "budget_ms": "fast"}, 400, "budget_ms")


def test_anchor_and_latent_exclusive():
    bad({"op": "novel_view", "person": "p"}, 400, "anchor")
    bad({"op": "novel_view", "person": "p", "anchor": 0, "latent": [1.0]}, 400, "latent")
    bad({"op": "novel_view", "anchor": 0}, 400, "person")
    bad({"op": "novel_view", "person": "p", "anchor": "bad\x01name"}, 400, "anchor")
    bad({"op": "novel_view", "person": "p", "anchor": True}, 400, "anchor")


def test_decode_body_passes_dicts_through():
    d = {"op": "people"}
    assert decode_body(d) is d
    assert decode_body(bytearray(b'{"op": "people"}')) == d


def test_random_garbage_only_ever_raises_request_errors():
    """Fuzz: random JSON-ish values in every field never escape as anything but a RequestError."""
    rng = random.Random(0)
    values = [None, True, False, 0, -1, 1, 2, 0.5, -0.9, 1e308, float("nan"), "", "x", "../x", "\x00", [], [1],
              [[1]], [[1, 2], [3]], {}, {"a": 1}, "png", "jpeg", "image", "json", 64, 8, 10 ** 20]
    keys = ["op", "person", "anchor", "latent", "yaw", "pitch", "format", "size", "quality", "budget_ms",
            "response", "a", "b", "t", "frames", "zzz", "kind", "fps"]
    values += ["turntable", "interpolate", "mp4", "gif"]
    ops = ["novel_view", "interpolate", "video", "people", "person", "x", None, 3]
    for _ in range(3000):
        body = {"op": rng.choice(ops)}
        for k in rng.sample(keys, rng.randint(0, 6)):
            body[k] = rng.choice(values)
        raw = body if rng.random() < 0.5 else json.dumps(body, allow_nan=True).encode()
        try:
            parse_request(raw, LIM)
        except RequestError as e:
            assert 400 <= e.status < 500 and isinstance(e.field, str) and e.message


# ---------------------------------------------------------------- the generated TorchServe config (no server)
def _props(text: str) -> dict:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_generated_config_has_safe_defaults(tmp_path):
    from serve.server import DEFAULT_PORTS, ServeConfig, config_properties
    props = _props(config_properties(ServeConfig(), ["a", "b"], tmp_path))
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:"), (key, props[key])
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["inference_address"].endswith(f":{DEFAULT_PORTS['inference']}")
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "false"
    assert props["install_py_dep_per_model"] == "false"
    assert props["enable_envvars_config"] == "false"
    assert props["allowed_urls"].startswith(f"file://{tmp_path}/") and "http" not in props["allowed_urls"][4:]
    assert "," not in props["allowed_urls"]  # TorchServe splits the setting at commas
    assert props["load_models"] == "a=a,b=b"  # no .mar files here: archived folders
    assert props["metrics_mode"] == "prometheus" and "metrics_config" not in props
    props = _props(config_properties(ServeConfig(), ["a"], tmp_path, metrics_yaml=tmp_path / "metrics.yaml"))
    assert props["metrics_config"] == str(tmp_path / "metrics.yaml")
    props = _props(config_properties(ServeConfig(host="10.0.0.5", port_offset=100, enable_model_api=True), ["a"],
                                     tmp_path))
    assert props["inference_address"] == f"http://10.0.0.5:{DEFAULT_PORTS['inference'] + 100}"
    assert props["grpc_management_port"] == str(DEFAULT_PORTS["grpc_management"] + 100)
    assert props["enable_model_api"] == "true"


def test_metrics_configuration_declares_our_counters_after_torchservers_defaults():
    import yaml
    from serve.metrics import METRICS, MODEL_LABELS
    from serve.server import metrics_yaml_text, ts_home
    home = ts_home()
    default = yaml.safe_load((home / "ts" / "configs" / "metrics.yaml").read_text())
    ours = yaml.safe_load(metrics_yaml_text(home))
    assert ours["ts_metrics"] == default["ts_metrics"]                       # TorchServe's own metrics stay
    n = len(default["model_metrics"]["gauge"])
    assert ours["model_metrics"]["gauge"][:n] == default["model_metrics"]["gauge"]  # TorchServe's gauges first
    declared = {m["name"]: (kind, m) for kind in ("counter", "gauge") for m in ours["model_metrics"][kind]}
    assert set(declared) >= set(METRICS)
    for name, (kind, unit, labels) in METRICS.items():
        assert declared[name][0] == kind and declared[name][1]["unit"] == unit
        assert declared[name][1]["dimensions"] == [*labels, *MODEL_LABELS]


class _FakeMetrics:
    """TorchServe's MetricsCacheYamlImpl.add_counter / add_metric, as the handler calls them: records what would
    be emitted."""

    def __init__(self, fail: bool = False):
        self.calls, self.gauges, self.fail = [], [], fail

    def add_counter(self, name, value, idx=None, dimensions=()):
        if self.fail:
            raise RuntimeError("metrics backend down")
        self.calls.append((name, value, idx, {d.name: d.value for d in dimensions}, [d.name for d in dimensions]))

    def add_metric(self, name, value, unit, idx=None, dimensions=(), metric_type=None):
        self.gauges.append((name, value, unit, idx, {d.name: d.value for d in dimensions}, metric_type))


def test_one_request_becomes_the_declared_counters():
    from types import SimpleNamespace
    from serve.metrics import (BUDGET_REFUSALS, METRICS, MODEL_LABELS, PLANE_CACHE, PLANE_CACHE_BYTES,
                               PLANE_CACHE_HIT_RATIO, REQUESTS, STAGE_MS, Outcome, ServeMetrics, cache_delta,
                               model_metrics_spec)
    sink = _FakeMetrics()
    outcome = Outcome(op="video", status=200, timings={"parse": 0.2, "synthesis": 12.0, "render": 30.5,
                                                       "mapping": 0.0, "total": 43.0})
    delta = cache_delta({"plane_cache_hits": 3, "plane_cache_misses": 1}, {"plane_cache_hits": 5,
                                                                           "plane_cache_misses": 2})
    assert delta == {"hit": 2, "miss": 1}
    ServeMetrics("tiny", "torch").record(SimpleNamespace(metrics=sink), 3, outcome, delta,
                                         {"bytes": 3 << 20, "hit_rate": 0.25, "size": 2})
    for name, _, idx, labels, order in sink.calls:
        assert order == [*METRICS[name][2], *MODEL_LABELS] and idx == 3      # the declared label order
        assert labels["ModelName"] == "tiny" and labels["Level"] == "Model" and labels["backend"] == "torch"
    got = {(n, tuple(sorted((k, v) for k, v in lab.items() if k not in MODEL_LABELS + ("backend",)))): v
           for n, v, _, lab, _ in sink.calls}
    assert got == {(REQUESTS, (("op", "video"), ("status", "200"))): 1,
                   (PLANE_CACHE, (("outcome", "hit"),)): 2, (PLANE_CACHE, (("outcome", "miss"),)): 1,
                   (STAGE_MS, (("op", "video"), ("stage", "parse"))): 0.2,
                   (STAGE_MS, (("op", "video"), ("stage", "synthesis"))): 12.0,
                   (STAGE_MS, (("op", "video"), ("stage", "render"))): 30.5}    # zero stages and 'total' left out
    from ts.metrics.metric_type_enum import MetricTypes
    assert [(g[0], g[1], g[2], g[4]["backend"], g[5]) for g in sink.gauges] == [
        (PLANE_CACHE_BYTES, float(3 << 20), "bytes", "torch", MetricTypes.GAUGE),
        (PLANE_CACHE_HIT_RATIO, 0.25, "ratio", "torch", MetricTypes.GAUGE)]
    spec = model_metrics_spec()
    assert {m["name"] for m in spec["gauge"]} == {PLANE_CACHE_BYTES, PLANE_CACHE_HIT_RATIO}
    assert all(m["dimensions"][-3:] == ["backend", *MODEL_LABELS] for kind in spec.values() for m in kind)
    sink.calls.clear()
    sink.gauges.clear()
    ServeMetrics("tiny").record(SimpleNamespace(metrics=sink), 0, Outcome("novel_view", 503, None, "before"),
                                {"hit": 0, "miss": 0}, {"bytes": 0, "hit_rate": None})
    assert [g[0] for g in sink.gauges] == [PLANE_CACHE_BYTES]  # no lookups yet: no ratio
    assert [(c[0], c[3]["op"]) for c in sink.calls] == [(REQUESTS, "novel_view"), (BUDGET_REFUSALS, "novel_view")]
    assert sink.calls[1][3]["when"] == "before" and sink.calls[0][3]["status"] == "503"
    # no metrics object (in-process use) or a failing one: the request is not affected
    ServeMetrics("tiny").record(SimpleNamespace(), 0, outcome, delta)
    ServeMetrics("tiny").record(SimpleNamespace(metrics=_FakeMetrics(fail=True)), 0, outcome, delta)


def test_ports_are_checked():
    from serve.server import ServeConfig
    with pytest.raises(ValueError, match="inference"):
        ServeConfig(port_offset=60000).resolved_ports()
    with pytest.raises(ValueError, match="bogus"):
        ServeConfig(ports={"bogus": 1}).resolved_ports()


def test_package_config_is_checked():
    from serve.package import PackageConfig
    for bad_cfg in (PackageConfig(name="../x"), PackageConfig(name="people"), PackageConfig(name="a", min_workers=2),
                    PackageConfig(name="a", archive_format="tgz"), PackageConfig(name="a", default_budget_ms=60_000)):
        with pytest.raises(ValueError):
            bad_cfg.validate()
    cfg = PackageConfig(name="a", response_timeout_s=10).validate().model_config()
    assert cfg["responseTimeout"] == 10 and cfg["handler"]["max_budget_ms"] == 8000.0


def test_people_names_are_checked(tmp_path):
    from serve.package import add_person, remove_person
    src = tmp_path / "x.safetensors"
    src.write_bytes(b"x")
    for name in ("../x", "/abs", "a\x00", ""):
        with pytest.raises(ValueError):
            add_person(tmp_path, "m", name, src, check=False)
        with pytest.raises(ValueError):
            remove_person(tmp_path, "m", name)
    with pytest.raises(ValueError):
        add_person(tmp_path, "../m", "p", src, check=False)
    assert add_person(tmp_path, "m", "p", src, check=False) == tmp_path.resolve() / "people" / "m" / "p.safetensors"
    assert remove_person(tmp_path, "m", "p") and not remove_person(tmp_path, "m", "p")


def test_benchmark_section_replaces_only_its_section(tmp_path):
    from bench.serve_load import SECTION, write_section
    doc = tmp_path / "B.md"
    write_section(doc, SECTION + "\nfirst\n")
    assert doc.read_text() == "# Benchmarks\n\n" + SECTION + "\nfirst\n"
    doc.write_text("# B\n\n## A\na\n\n" + SECTION + "\nold\n\n## C\nc\n")
    write_section(doc, SECTION + "\nnew\n")
    assert doc.read_text() == "# B\n\n## A\na\n\n" + SECTION + "\nnew\n\n## C\nc\n"


@pytest.mark.parametrize("max_workers, cores, expected", [
    (None, 16, 16), (1, 16, 16), (4, 16, 4), (3, 16, 5), (8, 2, 1), ("2", 8, 4), ("many", 8, 8)])
def test_workers_share_the_cores_when_no_threads_are_configured(max_workers, cores, expected):
    from serve.handler import worker_threads
    assert worker_threads(max_workers, cores) == expected


def test_handler_config_checks_backend_settings_and_the_environment_overrides():
    from serve.handler import HandlerConfig
    from serve.package import PackageConfig
    from serve.worker_env import BACKEND_ENV, PRECISION_ENV
    cfg = HandlerConfig.from_dict({"backend": "torch", "precision": "fp32", "plane_cache_mb": 48.0}, environ={})
    assert (cfg.backend, cfg.precision, cfg.plane_cache_mb, cfg.compile) == ("torch", "fp32", 48.0, False)
    assert HandlerConfig.from_dict({}, environ={}).backend == "auto"
    env = {BACKEND_ENV: "onnxruntime", PRECISION_ENV: "bf16"}
    assert (HandlerConfig.from_dict({"backend": "torch"}, environ=env).backend,
            HandlerConfig.from_dict({}, environ=env).precision) == ("onnxruntime", "bf16")
    for bad, key in (({"backend": "jax"}, "backend"), ({"precision": "int4"}, "precision"),
                     ({"plane_cache_mb": float("nan")}, "plane_cache_mb"), ({"plane_cache_mb": -1}, "plane_cache_mb"),
                     ({"plane_cache_size": 10 ** 9}, "plane_cache_size"), ({"compile": "yes"}, "compile"),
                     ({"threads": 0}, "threads"), ({"jpeg_quality": 101}, "jpeg_quality")):
        with pytest.raises(ValueError, match=f"handler.{key}="):
            HandlerConfig.from_dict(bad, environ={})
    with pytest.raises(ValueError, match="handler.backend="):
        HandlerConfig.from_dict({}, environ={BACKEND_ENV: "tpu"})
    section = PackageConfig(name="m", backend="torch", precision="fp16", plane_cache_mb=96.0).model_config()["handler"]
    assert (section["backend"], section["precision"], section["plane_cache_mb"]) == ("torch", "fp16", 96.0)
    with pytest.raises(ValueError, match="handler.backend="):
        PackageConfig(name="m", backend="gpu").validate()
