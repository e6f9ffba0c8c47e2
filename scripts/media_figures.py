"""The README's pictures of videos and the web page, from the head-world model (re-run when it changes).

    python scripts/media_figures.py [--model models/heads] [--out docs]

Writes OUT/video_stills.png (top: 8 frames of a 16-frame EG3D-orbit turntable; bottom: an 8-frame interpolation
between two anchors, camera included) and OUT/web_page.png (`cli.py web`'s page in headless Chromium, after
moving the yaw slider). The person is the head world's demo person (headworld.params.DEMO_PERSON_SEED) under
three appearances, as W anchors of the base model (an adapter with zero LoRA change), in a temporary folder.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ANCHORS = (("neutral", None, (0.0, 0.0)), ("photo3", 3, (0.35, 0.05)), ("photo5", 5, (-0.35, -0.05)))


def demo_person(G, path: Path) -> Path:
    """An adapter file for the demo person: W anchors from the world's parameter code, no LoRA change."""
    from generator.adapter_file import Anchors, save_adapter
    from formats.cameras import lookat_label
    from generator.lora import PersonAdapter
    from headworld.latent import params_to_z
    from headworld.params import DEMO_PERSON_SEED, Appearance, Identity
    identity = Identity.from_seed(DEMO_PERSON_SEED)
    apps = [Appearance.neutral() if p is None else Appearance.from_seed(DEMO_PERSON_SEED, p) for _, p, _ in ANCHORS]
    u = torch.tensor([list(identity.values) + list(a.values) for a in apps])
    filler = torch.randn(len(apps), G.z_dim - u.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ws = G.mapping(params_to_z(u, G.z_dim, filler), torch.zeros(len(apps), G.c_dim))
    cams = torch.from_numpy(np.stack([lookat_label(*pose) for _, _, pose in ANCHORS]))
    return save_adapter(path, PersonAdapter.create(G), G, Anchors(ws, cams, [n for n, _, _ in ANCHORS]))


def video_stills(G, adapter: Path, out: Path) -> None:
    from generator.adapter_file import load_adapter
    from generator.imaging import grid, save_png
    from generator.lora import attach
    from generator.video import interpolation_frames, turntable_frames
    from generator.views import anchor_latent
    person, anchors, _ = load_adapter(adapter, G)
    attach(G, person)
    a, b = anchor_latent(G, anchors, "neutral"), anchor_latent(G, anchors, "photo3")
    turntable = list(turntable_frames(G, a[0], 16))[::2]
    interpolation = list(interpolation_frames(G, a[0], a[1], b[0], b[1], 8))
    attach(G, None)
    save_png(grid(turntable + interpolation, 8), out)


def page_screenshot(G, people: Path, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from fixtures.browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_FLAGS
    from web.app import WebApp
    from web.server import ServerOptions, WebServer
    server = WebServer(WebApp(G, people), ServerOptions(port=0)).start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory() as profile:
        for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}",):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            driver.get(server.url)
            view = driver.find_element(By.ID, "view")
            for _ in range(25):
                driver.find_element(By.ID, "yaw").send_keys(Keys.ARROW_RIGHT)
            deadline = time.monotonic() + 120
            while "yaw=0.25&" not in (view.get_attribute("data-request") or "") or \
                    int(driver.find_element(By.ID, "interp").get_attribute("data-renders")) < 1:
                if time.monotonic() > deadline:
                    raise TimeoutError("the page did not render")
                time.sleep(0.2)
            time.sleep(0.5)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
            server.stop()


def main(argv: list[str] | None = None) -> int:
    from generator.model_dir import build_generator
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models/heads")
    ap.add_argument("--out", type=Path, default=REPO / "docs")
    args = ap.parse_args(argv)
    G = build_generator(model=args.model).eval()
    with tempfile.TemporaryDirectory() as people:
        adapter = demo_person(G, Path(people) / "demo_person.safetensors")
        video_stills(G, adapter, args.out / "video_stills.png")
        page_screenshot(G, Path(people), args.out / "web_page.png")
    print(f"wrote {args.out / 'video_stills.png'} and {args.out / 'web_page.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
