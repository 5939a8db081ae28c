"""Regenerate every App screenshot of the README from the synthetic demo dataset.

    .venv/bin/python docs/screenshots.py

Makes the demo dataset first if it is missing (``maskinversion demo --synthetic``: the model trained in
this repository, offline), installs the plugin for the App it starts (a plugins folder linking this
repository, unless FIFTYONE_PLUGINS_DIR already has it), starts the real App on localhost and drives
Debian's headless Chromium with Playwright the way a curator works: the operators from the operator
browser (backtick key), the MaskInversion panel in the sample modal and in the grid. Writes
docs/screenshots/<name>.png for every name in SHOTS.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"
PORT = int(os.environ.get("MI_SCREENSHOT_PORT", "5159"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
SEARCH = "a photo of a red circle"
# what each screenshot shows (the README's captions say the same)
SHOTS = {
    "mislabeled.png": "find_mislabeled: annotation and prediction on each tile, with the class mistakenness",
    "panel-mislabeled-summary.png": "the operator's summary (the sort named) over the mislabeled view",
    "panel.png": "the panel on the most likely mislabeled region",
    "badmasks.png": "find_bad_masks: mask mistakenness and reason on each tile",
    "panel-badmask.png": "the panel on the most likely bad mask: its components and reason",
    "tooltip.png": "the hover tooltip of that region: the verdicts first",
    "search.png": "text search: the view bar reads the words",
    "missing.png": "the suggested missing regions with their confidence",
    "region-heatmaps.png": "show_region_heatmaps on a selected patch",
    "heatmaps.png": "the heatmaps dataset: viridis colour scale, label and Dice on each tile",
    "heatmaps-colorscale.png": "one region's heatmap in the sample modal",
    "panel-grid.png": "the panel in the grid: the runs and their review views",
}


def _plugins_dir() -> None:
    """Make the App find this repository's plugin (before fiftyone is imported: it reads the variable)."""
    current = os.environ.get("FIFTYONE_PLUGINS_DIR")
    if current and any((Path(p) / "maskinversion").exists() for p in current.split(os.pathsep)):
        return
    folder = Path(tempfile.mkdtemp(prefix="mi-screenshot-plugins-"))
    (folder / "maskinversion").symlink_to(REPO, target_is_directory=True)
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(folder)


os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")  # no analytics banner over the screenshots
_plugins_dir()

import fiftyone as fo  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

import fiftyone_maskinversion.fo as mifo  # noqa: E402
from fiftyone_maskinversion.demo import DEMO_DATASET, run_demo  # noqa: E402
from fiftyone_maskinversion.fo.appearance import heatmaps_look  # noqa: E402


class Curator:
    """The few App gestures the screenshots need, each waiting for what the page shows."""

    def __init__(self, page):
        self.page = page

    def shot(self, name):
        assert name in SHOTS, name
        time.sleep(2)
        self.page.screenshot(path=str(OUT / name))
        print("wrote", OUT / name, "-", SHOTS[name])

    def open(self, url):
        self.page.goto(url)
        self.page.wait_for_selector("text=last_modified_at", timeout=120_000)
        self.escape()
        time.sleep(2)

    def escape(self):
        self.page.keyboard.press("Escape")
        dismiss = self.page.get_by_text("Dismiss", exact=True)
        if dismiss.count() and dismiss.first.is_visible():
            dismiss.first.click()

    def close_result(self):
        close = self.page.get_by_role("button", name="Close")
        if close.count() and close.first.is_visible():
            close.first.click()
            time.sleep(1)

    def operator(self, label, shown, fill=None, timeout=180_000):
        """Run an operator from the operator browser; ``shown``: a selector its result puts on the page."""
        self.close_result()
        self.escape()
        self.page.keyboard.press("`")
        self.page.keyboard.type(label.split(": ", 1)[1])
        self.page.get_by_text(label).first.click()
        execute = self.page.get_by_role("button", name="Execute")
        execute.wait_for(timeout=30_000)
        time.sleep(2)  # the form resolves its dynamic inputs
        if fill:
            fill(self.page)
            time.sleep(1)
        execute.click()
        self.page.wait_for_selector(shown, timeout=timeout)
        time.sleep(2)

    def open_tile(self):
        self.close_result()
        self.escape()
        self.page.locator("[data-cy='looker']").first.click()
        self.page.wait_for_selector("[data-cy='modal']", timeout=30_000)
        time.sleep(3)

    def panel(self):
        tab = self.page.locator("[data-cy='panel-tab-maskinversion_panel']")
        if tab.count():
            tab.first.click()
        else:
            self.page.locator("[data-cy='modal'] [data-cy='new-panel-btn']").first.click()
            self.page.get_by_text("MaskInversion", exact=True).last.click()
        self.page.wait_for_selector("text=Accept prediction", timeout=60_000)
        time.sleep(3)

    def hover_region(self):
        box = self.page.locator("[data-cy='modal-looker-container']").first.bounding_box()
        content = self.page.locator("[data-cy='sample-canvas-tooltip-content']")
        for fy in range(1, 12):
            for fx in range(1, 12):
                self.page.mouse.move(box["x"] + fx * box["width"] / 12, box["y"] + fy * box["height"] / 12)
                if content.count() and content.first.is_visible():
                    return
                time.sleep(0.1)
        raise RuntimeError("no tooltip showed over the region")

    def close_modal(self):
        self.close_result()
        for _ in range(3):
            self.page.mouse.click(8, 890)
            self.page.keyboard.press("Escape")
            try:
                self.page.wait_for_selector("[data-cy='modal']", state="hidden", timeout=5_000)
                return
            except Exception:
                continue

    def select_first(self):
        self.escape()
        self.page.locator("[data-cy='looker']").first.hover()
        self.page.locator("[data-cy='looker-checkbox-']").first.click()
        time.sleep(2)


def main() -> None:
    if DEMO_DATASET not in fo.list_datasets():
        run_demo(synthetic=True)
    dataset = fo.load_dataset(DEMO_DATASET)
    dataset.persistent = True
    if mifo.list_region_runs(dataset)[0].brain_key is None:
        mifo.build_region_index(dataset, "ground_truth")  # text search in words from the App
    OUT.mkdir(exist_ok=True)
    session = fo.launch_app(dataset, port=PORT, address="127.0.0.1", auto=False)
    url = f"http://127.0.0.1:{PORT}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            app = Curator(browser.new_page(viewport={"width": 1400, "height": 900}))
            app.open(f"{url}/datasets/{DEMO_DATASET}")

            mislabeled = len(mifo.find_mislabeled(dataset, "ground_truth"))
            app.operator("MaskInversion: show likely mislabeled regions", f"text={mislabeled} patches")
            app.shot("panel-mislabeled-summary.png")
            app.close_result()
            app.shot("mislabeled.png")
            app.open_tile()
            app.panel()
            app.shot("panel.png")
            app.close_modal()

            scored = dataset.count("ground_truth.detections.mi_embedding_mask_mistakenness")
            app.operator("MaskInversion: find bad masks and missing regions", f"text={scored} patches")
            app.close_result()
            app.shot("badmasks.png")
            app.open_tile()
            app.hover_region()
            app.shot("tooltip.png")
            app.close_modal()  # reopened, the sample view is laid out for the panel beside it
            app.open_tile()
            app.panel()
            app.shot("panel-badmask.png")
            app.close_modal()

            def query(page):
                page.locator("[role='dialog'] input[type='string'][value='']").first.fill(SEARCH)
                page.locator("input[value='25']").fill("12")
            app.operator("MaskInversion: search regions by text or region", "text=12 patches", fill=query)
            app.close_result()
            app.shot("search.png")

            suggested = len(mifo.find_missing_regions(dataset, "ground_truth"))
            app.operator("MaskInversion: show suggested missing regions", f"text={suggested} patches")
            app.close_result()
            app.shot("missing.png")

            app.operator("MaskInversion: show likely mislabeled regions", f"text={mislabeled} patches")
            app.close_result()
            app.select_first()
            app.operator("MaskInversion: show heatmaps of the selection", "img[src^='data:image/png']")
            app.shot("region-heatmaps.png")

            companion = mifo.heatmaps_dataset(dataset)
            heatmaps_look(companion)  # as the package opens it (set once; the user's changes are kept)
            app.open(f"{url}/datasets/{companion.name}")
            app.shot("heatmaps.png")
            app.open_tile()
            app.shot("heatmaps-colorscale.png")
            app.close_modal()

            app.open(f"{url}/datasets/{DEMO_DATASET}")
            app.page.locator("[data-cy='new-panel-btn']").first.click()
            app.page.get_by_text("MaskInversion", exact=True).last.click()
            app.page.get_by_role("button", name="Missing regions").first.wait_for(timeout=60_000)
            app.shot("panel-grid.png")
            browser.close()
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
