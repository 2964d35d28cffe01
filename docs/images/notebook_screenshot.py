"""Regenerate docs/images/notebook-results.png: examples/notebook.ipynb's search grid.

Runs the notebook as shipped (offline model, its own public-domain sample photos from
scikit-image) in a fresh kernel with nbclient, exports it to HTML with nbconvert (no server),
and photographs the search cell of that HTML file in headless Chromium. Needs the dev extra,
the offline extra, nbconvert (``pip install nbconvert``; installed with ``pip install
--target DIR``, set ``PYTHONPATH=DIR`` and ``JUPYTER_PATH=DIR/share/jupyter`` so that it finds
its templates) and Debian's Chromium::

    .venv/bin/python docs/images/notebook_screenshot.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbclient
import nbformat
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "notebook-results.png"


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="lookalike-notebook-"))
    examples = work / "examples"
    examples.mkdir()
    shutil.copy(ROOT / "examples" / "sample_photos.py", examples)
    notebook = nbformat.read(ROOT / "examples" / "notebook.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(examples)}}).execute()
    executed = examples / "notebook.ipynb"
    nbformat.write(notebook, executed)
    subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", str(executed)], check=True)
    page_file = examples / "notebook.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1060, "height": 900}, device_scale_factor=1)
        page.route("http*://**", lambda route: route.abort())  # the export is self-contained
        page.goto(page_file.as_uri(), wait_until="load")
        cell = page.locator(".jp-Cell").filter(has_text="hits = index.search(QUERY, k=10)").first
        cell.screenshot(path=str(OUT))
        browser.close()
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
