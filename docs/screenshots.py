"""Regenerate the README's App screenshots from the demo dataset (run `maskinversion demo` first).

    .venv/bin/python docs/screenshots.py

Starts the real App on localhost, drives Debian's headless Chromium with Playwright and writes
docs/screenshots/{heatmaps,mislabeled,badmasks,search}.png (review views with the package's colour scheme).
"""

import os
import time
from pathlib import Path

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")  # no analytics banner over the screenshots

import fiftyone as fo  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

import fiftyone_maskinversion.fo as mifo  # noqa: E402
from fiftyone_maskinversion.demo import DEMO_DATASET  # noqa: E402
from fiftyone_maskinversion.fo.appearance import review_color_scheme  # noqa: E402

OUT = Path(__file__).resolve().parent / "screenshots"
PORT = 5159
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def main() -> None:
    dataset = fo.load_dataset(DEMO_DATASET)
    heatmaps = mifo.heatmaps_dataset(dataset)
    session = fo.launch_app(heatmaps, port=PORT, address="127.0.0.1", auto=False)
    OUT.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"http://127.0.0.1:{PORT}/")
        page.wait_for_selector("text=last_modified_at", timeout=120_000)
        if page.get_by_text("Dismiss", exact=True).count():
            page.get_by_text("Dismiss", exact=True).first.click()
        review = review_color_scheme(dataset)
        shots = [
            ("heatmaps.png", heatmaps.sort_by("dice", reverse=True), None),
            ("mislabeled.png", mifo.find_mislabeled(dataset, "ground_truth"), review),
            ("badmasks.png", mifo.find_bad_masks(dataset, "ground_truth"), review),
            ("search.png", mifo.search_regions(dataset, "ground_truth", text="a photo of a red circle", k=12), review),
        ]
        for name, view, scheme in shots:
            session.view = view
            if scheme is not None:
                session.color_scheme = scheme
            time.sleep(8)
            page.screenshot(path=str(OUT / name))
            print("wrote", OUT / name)
        browser.close()
    session.close()


if __name__ == "__main__":
    main()
