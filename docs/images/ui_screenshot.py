"""Regenerate docs/images/ui-screenshot.png: `lookalike serve` over public-domain photos.

The photos come from scikit-image's ``skimage.data`` (public domain / CC0 test images); each is
stored with a crop and a mirror image so that the gallery shows near-duplicates. Needs the dev
extra (scikit-image, Playwright), Debian's Chromium and the offline model::

    .venv/bin/python docs/images/ui_screenshot.py
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageOps
from playwright.sync_api import expect, sync_playwright
from skimage import data

OUT = Path(__file__).resolve().parent / "ui-screenshot.png"
PHOTOS = {  # skimage.data name -> label
    "astronaut": "person", "coffee": "food", "chelsea": "cat", "rocket": "space",
    "hubble_deep_field": "space", "immunohistochemistry": "science", "retina": "science",
    "camera": "person", "coins": "object", "clock": "object", "horse": "animal",
    "moon": "space", "brick": "texture", "gravel": "texture", "grass": "texture",
}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="lookalike-shot-"))
    photos = work / "photos"
    photos.mkdir()
    rows = ["path,label"]
    for name, label in PHOTOS.items():
        img = Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")
        w, h = img.size
        variants = {
            name: img,
            f"{name}-crop": img.crop((w // 8, h // 8, w - w // 8, h - h // 8)),
            f"{name}-mirror": ImageOps.mirror(img),
        }
        for stem, variant in variants.items():
            variant.save(photos / f"{stem}.jpg", quality=90)
            rows.append(f"photos/{stem}.jpg,{label}")
    (work / "photos.csv").write_text("\n".join(rows) + "\n")
    query = work / "my-cat.jpg"  # not in the index: a tighter, smaller crop of the cat photo
    chelsea = Image.fromarray(np.asarray(data.chelsea()))
    chelsea.crop((60, 20, 380, 290)).resize((240, 202)).save(query, quality=80)

    store = work / "index.lookalike"
    lookalike = [sys.executable, "-m", "lookalike"]
    subprocess.run([*lookalike, "index", "--csv", str(work / "photos.csv"), "--store", str(store),
                    "--embedder", "efficientnet-lite0", "-q"], check=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(work / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([*lookalike, "serve", "--store", str(store), "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url)
            page.locator("#query input[type=file]").set_input_files(str(query))
            expect(page.locator("#gallery img")).to_have_count(10, timeout=60_000)
            page.locator("#gallery img").first.click()
            expect(page.locator("#selected img")).to_be_visible(timeout=30_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(OUT), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
