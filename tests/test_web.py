"""The web page (web/): its API over HTTP, the token rule, and the page in a real headless Chromium."""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures.browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS
from formats.limits import MAX_ABS_YAW
from generator.adapter_file import Anchors, save_adapter
from formats.cameras import lookat_label
from generator.lora import PersonAdapter
from generator.model_dir import build_generator
from web.app import WebApp
from web.server import ServerOptions, WebServer
from web.settings import is_loopback

SCREENSHOT_ENV = "MY3DGEN_WEB_SCREENSHOT"
"""Set to a PNG path to keep the browser test's screenshot of the page (the README's picture)."""


@pytest.fixture(scope="module")
def people_dir(tmp_path_factory):
    G = build_generator(preset_name="tiny")
    person = PersonAdapter.create(G)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in person.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    folder = tmp_path_factory.mktemp("people")
    cams = torch.from_numpy(np.stack([lookat_label(0.0, 0.0), lookat_label(0.4, 0.0)]))
    save_adapter(folder / "alice.safetensors", person, G, Anchors(torch.randn(2, G.w_dim, generator=g), cams,
                                                                   ["front", "side"]))
    (folder / "not a person.safetensors").write_bytes(b"ignored: not a valid name")
    (folder / "broken.safetensors").write_bytes(b"ignored: not an adapter file")
    return folder


@pytest.fixture(scope="module")
def server(people_dir):
    s = WebServer(WebApp(build_generator(preset_name="tiny"), people_dir), ServerOptions(port=0)).start()
    yield s
    s.stop()


def get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_api_lists_people_and_renders_views(server):
    status, body, _ = get(server.url + "api/people")
    assert status == 200 and json.loads(body)["people"] == {"base": ["seed0", "seed1", "seed2", "seed3"],
                                                            "alice": ["front", "side"]}
    status, a, headers = get(server.url + "api/view?person=alice&anchor=front&yaw=0&pitch=0")
    assert status == 200 and headers["Content-Type"] == "image/png"
    _, b, _ = get(server.url + "api/view?person=alice&anchor=front&yaw=0.4&pitch=0")
    assert np.asarray(Image.open(io.BytesIO(a))).shape == (128, 128, 3) and a != b
    status, body, _ = get(server.url + "api/interpolate?person=alice&a=front&b=side&t=0&yaw=0&pitch=0")
    assert status == 200 and body == a          # t = 0 is anchor a itself


def test_api_errors_name_the_field(server):
    status, body, _ = get(server.url + "api/view?person=alice&anchor=nobody")
    assert status == 400 and "unknown anchor 'nobody'" in json.loads(body)["error"]
    status, body, _ = get(server.url + "api/view?person=../../etc&anchor=0")
    assert status == 400 and "is not valid" in json.loads(body)["error"]
    status, body, _ = get(server.url + "api/view?person=alice&anchor=0&yaw=7")
    assert status == 400 and "yaw must be within" in json.loads(body)["error"]
    status, body, _ = get(server.url + "api/view?person=alice")
    assert status == 400 and "missing field 'anchor'" in json.loads(body)["error"]


def test_api_downloads_a_video_and_a_mesh(server):
    status, body, headers = get(server.url + "api/video?person=alice&kind=interpolate&a=front&b=side&frames=3")
    assert status == 200 and headers["Content-Type"] in ("video/mp4", "image/gif") and len(body) > 1000
    assert "attachment" in headers["Content-Disposition"]
    status, body, _ = get(server.url + "api/mesh?person=alice&anchor=front&resolution=16&level=10")
    assert status == 400 and "no surface at density level 10" in json.loads(body)["error"]
    level = json.loads(body)["error"].split("[")[1].split(",")[0]
    status, body, _ = get(server.url + f"api/mesh?person=alice&anchor=front&resolution=16&level={float(level) + 0.3}")
    assert status == 200 and body.startswith(b"ply\nformat binary_little_endian 1.0")


def test_loopback_needs_no_token_but_any_other_address_does(people_dir):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert ServerOptions().resolved_token() is None
    assert len(ServerOptions(host="0.0.0.0").resolved_token()) >= 16
    with pytest.raises(ValueError, match="at least 16"):
        ServerOptions(token="short").resolved_token()
    # a token on loopback works the same way as on an exposed address, without binding outside this machine
    s = WebServer(WebApp(build_generator(preset_name="tiny"), people_dir),
                  ServerOptions(port=0, token="a-long-enough-token")).start()
    try:
        base = s.url.split("?")[0]
        assert get(base + "api/people")[0] == 403
        assert get(base + "?token=wrong-token-of-enough-length")[0] == 403
        assert get(base + "api/people?token=a-long-enough-token")[0] == 200
        request = urllib.request.Request(base + "api/people", headers={"X-Token": "a-long-enough-token"})
        assert urllib.request.urlopen(request, timeout=60).status == 200
    finally:
        s.stop()


def _browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian chromium + chromium-driver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="my3dgen-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    return driver, profile


def _wait(predicate, timeout: float = 120.0, what: str = "the page"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_page_in_headless_chromium_slider_changes_the_image(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    driver, profile = _browser()
    try:
        driver.get(server.url)
        view = driver.find_element(By.ID, "view")
        _wait(lambda: int(view.get_attribute("data-renders")) >= 1, what="the first render")
        assert driver.find_element(By.ID, "person").get_attribute("value") == "alice"
        _wait(lambda: int(driver.find_element(By.ID, "interp").get_attribute("data-renders")) >= 1,
              what="the first interpolation")
        before = np.asarray(Image.open(io.BytesIO(view.screenshot_as_png)).convert("RGB"))
        renders = int(view.get_attribute("data-renders"))
        yaw = driver.find_element(By.ID, "yaw")
        assert float(yaw.get_attribute("max")) == MAX_ABS_YAW == -float(yaw.get_attribute("min"))
        for _ in range(40):                       # drag by keyboard: each key is a real input event
            yaw.send_keys(Keys.ARROW_RIGHT)
        assert float(yaw.get_attribute("value")) == pytest.approx(0.4)
        _wait(lambda: int(view.get_attribute("data-renders")) > renders and
              "yaw=0.4&" in view.get_attribute("data-request") and
              driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", view),
              what="the render of the slider's final position")
        assert driver.find_element(By.ID, "yaw-value").text == "0.40"
        after = np.asarray(Image.open(io.BytesIO(view.screenshot_as_png)).convert("RGB"))
        assert before.shape == after.shape and np.abs(before.astype(int) - after).mean() > 1.0
        assert driver.find_element(By.ID, "status").text == ""
        if os.environ.get(SCREENSHOT_ENV):
            driver.save_screenshot(os.environ[SCREENSHOT_ENV])
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
