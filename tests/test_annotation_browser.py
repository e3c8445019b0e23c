"""The annotation page in a real headless Chromium (Debian's chromium package driven by Playwright; nothing is
downloaded): draw a box with the mouse, see the frozen model's mask, save, find the box file on disk; reject an
image; accept a prediction in review. With AUTOMEDSAM_WRITE_DOC_SCREENSHOTS=1 the tests also write the screenshots
documentation/annotating.md shows."""
from __future__ import annotations

import io
import json
import os
import re
import socket
import threading
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import uvicorn
from PIL import Image

from automedsam.annotation import server as annotation_server
from automedsam.annotation.segmenting import segmentations_dir
from automedsam.annotation.server import create_app
from automedsam.annotation.session import AnnotationSession, ReviewItem
from automedsam.annotation.training_job import CallStep, StepStopped, TrainingJob
from automedsam.boxes import mask_to_boxes
from automedsam.conversion import convert_folder
from automedsam.conversion.synthetic import synthetic_case
from automedsam.dataset import load_raw_dataset
from automedsam.errors import AutomedsamError
from automedsam.foundation.cache import PlannedEmbeddingCache
from automedsam.inference.model_folder import open_model_folder
from automedsam.inference.review import rank_by_disagreement
from automedsam.io import Geometry, write_image
from automedsam.paths import preprocessed_dataset_dir
from automedsam.planning.plan_and_preprocess import plan_and_preprocess
from automedsam.samples import case_of
from toy_model import shared_foundation, unannotated_volumes, write_model_folder

CHROMIUM = Path("/usr/bin/chromium")
DOC_IMAGES = Path(__file__).resolve().parents[1] / "documentation" / "images"
SHOTS = 3
TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1280, "height": 760}

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                     "(pip install -e '.[test]')")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM}: browser tests need "
                                "Debian's chromium package (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


def new_context(browser, **options):
    """A context (a browser profile) for the page: Playwright's waits run their JavaScript through eval, which the
    page's Content-Security-Policy refuses; the tests under that policy poll with wait_under_policy instead."""
    return browser.new_context(bypass_csp=True, **{"viewport": VIEWPORT, **options})


def wait_under_policy(page, expression: str) -> None:
    """page.wait_for_function for a page under its Content-Security-Policy: polled from here, since page.evaluate
    goes through the DevTools protocol, which the policy does not cover."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {TIMEOUT_MS} ms: {expression}"
        time.sleep(0.05)


@pytest.fixture
def scans(tmp_path: Path, roots: dict[str, Path]) -> dict[str, list[int]]:
    """Six ultrasound-like images imported unannotated with two labels (as many as the toy model's targets),
    --shots 3 drawn; returns each case's true box."""
    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(4)
    true_boxes = {}
    for index in range(6):
        image, mask = synthetic_case(rng)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"scan{index}.png")
        true_boxes[f"scan{index}"] = list(mask_to_boxes(mask)[0])
    convert_folder(folder, dataset_id=21, name="Scans", label_names=["head", "brain"])
    plan_and_preprocess(21, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    return true_boxes


def serve(session: AnnotationSession, port: int | None = None) -> tuple[str, uvicorn.Server, threading.Thread]:
    """A server for `session` on `port` (a stopped server's, to start again on it), by default on a free one, and
    the address automedsam_annotate would print for it (with its token)."""
    if port is None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    app = create_app(session)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/?token={app.state.token}", server, thread


def stop(server: uvicorn.Server, thread: threading.Thread) -> None:
    """Shut the server down once its requests are answered (the browser is closed first): a mask request still
    running in a worker thread when the interpreter exits would abort the test process."""
    server.should_exit = True
    thread.join(timeout=TIMEOUT_MS / 1000)
    assert not thread.is_alive(), "the annotation server did not stop"


@pytest.fixture
def session(scans) -> AnnotationSession:
    raw = load_raw_dataset(21, check_images=False)
    return AnnotationSession(raw, preprocessed_dataset_dir(raw.name), foundation=shared_foundation)


@contextmanager
def page_on(browser, session: AnnotationSession, **options) -> Iterator:
    """A server for `session` and a page open on it; the browser side is closed first, then the server."""
    url, server, thread = serve(session)
    context = new_context(browser, **options)
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    try:
        opened.goto(url)
        yield opened
    finally:
        context.close()
        stop(server, thread)


@pytest.fixture
def page(browser, session: AnnotationSession) -> Iterator:
    with page_on(browser, session) as opened:
        yield opened


def screen_point(page, x: float, y: float) -> tuple[float, float]:
    """Where image pixel (x, y) (column, row; its centre) is on the screen: a row is the sample's pixel aspect times
    as tall as a column is wide."""
    view = page.evaluate("({...state.view, aspect: state.sample.aspect})")
    bounds = page.locator("#view").bounding_box()
    return (bounds["x"] + view["x"] + (x + 0.5) * view["scale"],
            bounds["y"] + view["y"] + (y + 0.5) * view["scale"] * view["aspect"])


def drag(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*screen_point(page, *start))
    page.mouse.down()
    page.mouse.move(*screen_point(page, *end), steps=6)
    page.mouse.up()


def doc_screenshot(page, name: str) -> None:
    if os.environ.get("AUTOMEDSAM_WRITE_DOC_SCREENSHOTS") == "1":
        page.screenshot(path=str(DOC_IMAGES / name))


def test_draw_a_box_see_the_mask_save_it_and_reject_an_image(page, scans, roots):
    page.wait_for_function("document.getElementById('progress').textContent === '0 of 3 done'")
    page.wait_for_function("state.sample !== null")  # the queue can show before the first sample has loaded
    sample = page.evaluate("state.sample.sample")
    page.wait_for_function("state.plane !== null")
    x0, y0, x1, y1 = scans[sample]
    drag(page, (x0, y0), (x1, y1))
    page.wait_for_function("Number(document.getElementById('view').dataset.overlayPixels) > 0")
    doc_screenshot(page, "annotate_draw.png")
    page.keyboard.press("s")
    page.wait_for_function("document.getElementById('progress').textContent === '1 of 3 done'")
    saved = json.loads((roots["raw"] / "Dataset021_Scans" / "boxesTr" / f"{sample}.json").read_text())
    assert len(saved) == 1 and saved[0]["label"] == 1
    assert np.abs(np.array(saved[0]["box"]) - np.array([x0, y0, x1, y1])).max() <= 1

    page.keyboard.press("n")
    page.wait_for_function(f"state.sample && state.sample.sample !== {json.dumps(sample)}")
    rejected = page.evaluate("state.sample.sample")
    page.keyboard.press("x")
    page.wait_for_function(f"state.sample && state.sample.sample !== {json.dumps(rejected)}")
    record = json.loads((roots["preprocessed"] / "Dataset021_Scans" / "splits.json").read_text())["interactive"]
    assert record["rejected"] == [rejected]
    queue = page.locator("#queue button").evaluate_all("buttons => buttons.map(b => [b.dataset.sample, "
                                                       "b.dataset.status])")
    assert [sid for sid, _ in queue] == record["order"][:SHOTS + 1] and [rejected, "rejected"] in queue
    assert page.locator("#progress").text_content() == f"1 of {SHOTS} done"


def test_a_double_click_adds_the_box_the_model_proposes_another_shows_the_next_and_s_saves_it(page, scans, roots):
    page.wait_for_function("state.plane !== null")
    sample = page.evaluate("state.sample.sample")
    x0, y0, x1, y1 = scans[sample]
    centre = screen_point(page, (x0 + x1) / 2, (y0 + y1) / 2)
    page.mouse.dblclick(*centre)
    page.wait_for_function("state.boxes.length === 1")
    proposals = page.evaluate("state.proposal.boxes")
    first = page.evaluate("state.boxes[0]")
    px0, py0, px1, py1 = first["box"]
    overlap = max(0, min(x1, px1) - max(x0, px0) + 1) * max(0, min(y1, py1) - max(y0, py0) + 1)
    union = (x1 - x0 + 1) * (y1 - y0 + 1) + (px1 - px0 + 1) * (py1 - py0 + 1) - overlap
    assert first == {"label": page.evaluate("state.label"), "box": proposals[0]} and len(proposals) > 1
    assert overlap / union > 0.5  # the head, or the brain inside it
    page.wait_for_function("Number(document.getElementById('view').dataset.overlayPixels) > 0")
    page.mouse.dblclick(*centre)  # on the proposed box: the next proposal replaces it
    second = ",".join(map(str, proposals[1]))
    page.wait_for_function(f"state.boxes.length === 1 && state.boxes[0].box.join() === '{second}'")
    drag(page, (2, 2), (12, 12))
    page.mouse.dblclick(*screen_point(page, 7, 7))  # on a drawn box: selects it, proposes nothing
    page.wait_for_timeout(500)
    boxes = page.evaluate("[state.boxes.map((entry) => entry.box), state.selected]")
    assert boxes == [[proposals[1], [2, 2, 12, 12]], 1]
    page.keyboard.press("s")
    page.wait_for_function("!state.dirty")
    saved = json.loads((roots["raw"] / "Dataset021_Scans" / "boxesTr" / f"{sample}.json").read_text())
    assert [entry["box"] for entry in saved] == [proposals[1], [2, 2, 12, 12]]


def test_the_page_loads_without_errors_in_the_browser_console(browser, session):
    url, server, thread = serve(session)
    context = browser.new_context(viewport=VIEWPORT)  # under the page's Content-Security-Policy
    errors: list[str] = []
    try:
        opened = context.new_page()
        opened.set_default_timeout(TIMEOUT_MS)
        opened.on("console", lambda entry: errors.append(entry.text) if entry.type == "error" else None)
        opened.on("pageerror", lambda error: errors.append(str(error)))
        opened.goto(url)
        wait_under_policy(opened, "state.sample !== null && state.plane !== null")
    finally:
        context.close()
        stop(server, thread)
    assert errors == []


def test_move_resize_and_delete_a_box_with_the_mouse_and_keys(page, scans, roots):
    page.wait_for_function("state.plane !== null")
    drag(page, (20, 20), (60, 50))
    assert page.evaluate("state.boxes.map(b => b.box)") == [[20, 20, 60, 50]]
    drag(page, (40, 35), (45, 38))                      # inside: moves by (5, 3)
    assert page.evaluate("state.boxes[0].box") == [25, 23, 65, 53]
    page.mouse.move(*screen_point(page, 65.5, 53.5))   # bottom-right corner: resizes
    page.mouse.down()
    page.mouse.move(*screen_point(page, 75.5, 60.5), steps=4)
    page.mouse.up()
    assert page.evaluate("state.boxes[0].box") == [25, 23, 75, 60]
    page.keyboard.press("Delete")
    assert page.evaluate("state.boxes.length") == 0


def test_draw_one_label_then_another_inside_it_and_relabel_a_box_on_purpose(page, scans, roots):
    """The multi-label loop: draw label 1, press 2, draw label 2 inside the first box and from its very edge (LV
    inside MYO); neither the key nor the nested drags may change the first box. Shift + a label's key relabels."""
    page.wait_for_function("state.plane !== null")
    drag(page, (20, 20), (60, 50))
    page.keyboard.press("2")
    assert page.evaluate("state.boxes.map(b => [b.label, b.box])") == [[1, [20, 20, 60, 50]]]
    drag(page, (30, 28), (50, 42))                      # inside the label-1 box: a new label-2 box
    drag(page, (21, 21), (26, 26))                      # on the label-1 box's corner: a new label-2 box too
    assert page.evaluate("state.boxes.map(b => [b.label, b.box])") == [
        [1, [20, 20, 60, 50]], [2, [30, 28, 50, 42]], [2, [21, 21, 26, 26]]]
    drag(page, (40, 35), (42, 36))                      # inside a label-2 box, label 2 chosen: moves it
    assert page.evaluate("state.boxes.map(b => b.box)") == [[20, 20, 60, 50], [32, 29, 52, 43], [21, 21, 26, 26]]
    page.keyboard.press("1")
    page.mouse.click(*screen_point(page, 55, 45))       # label 1 chosen: a click inside its box selects it
    page.keyboard.press("Shift+Digit2")
    assert page.evaluate("state.boxes.map(b => b.label)") == [2, 2, 2]


def box_every_queued_sample(session: AnnotationSession, scans: dict[str, list[int]], *, label: int = 1) -> None:
    """Save each queued sample's true box with `label`: Train and Review start once every drawn sample is done."""
    for sid in session.queue():
        session.save(sid, [{"label": label, "box": scans[sid]}], version="none")


def click_train(page) -> None:
    """Click Train once the page allows it: its run state read, every drawn sample done."""
    page.wait_for_function("state.training !== null && !document.getElementById('train').disabled")
    page.click("#train")


def start_toy_review(session: AnnotationSession, model_dir: Path, *, samples: int) -> list[dict]:
    """Review the first `samples` unlabelled samples with the toy model (ranking itself is tested through the API;
    a sample or two keep these tests quick)."""
    ranked = rank_by_disagreement(open_model_folder(model_dir), [(sid, session.normalised_plane(sid))
                                                                  for sid in session.unlabelled()[:samples]],
                                  cache=PlannedEmbeddingCache(session.preprocessed_dir, session.plans),
                                  foundation=shared_foundation(), progress=False)
    session.start_review([ReviewItem(item["sample_id"], item["disagreement"], item["boxes"], item["label_map"])
                          for item in ranked])
    return ranked


def test_review_adds_a_sample_passed_by_only_once_accepted(browser, session, scans, roots):
    """N on a review sample passes it by (the proposed boxes were saved, adding it, before); A adds it."""
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset="Dataset021_Scans")
    ranked = start_toy_review(session, model_dir, samples=1)
    with page_on(browser, session) as page:
        page.wait_for_function("state.sample && state.sample.proposed && state.plane !== null")
        page.wait_for_function("Number(document.getElementById('view').dataset.overlayPixels) > 0")
        assert page.locator("#accept").is_visible() and not page.locator("#reject").is_visible()
        page.click("#keys summary")
        assert page.locator("#help-accept").is_visible() and not page.locator("#help-reject").is_visible()
        doc_screenshot(page, "annotate_review.png")
        first = page.evaluate("state.sample.sample")
        assert first == ranked[0]["sample_id"]
        page.evaluate("state.view.scale *= 2")  # a zoom the user set
        zoomed = page.evaluate("state.view.scale")
        page.keyboard.press("n")  # the last sample: N says so and keeps the view
        page.wait_for_function("document.getElementById('status').textContent.includes('is the last sample')")
        assert page.evaluate("state.view.scale") == zoomed
        splits_path = roots["preprocessed"] / "Dataset021_Scans" / "splits.json"
        assert json.loads(splits_path.read_text())["interactive"]["added"] == []
        assert page.locator("#progress").text_content() == "0 of 1 done"
        page.keyboard.press("a")
        page.wait_for_function("document.getElementById('progress').textContent === '1 of 1 done'")
    record = json.loads((roots["preprocessed"] / "Dataset021_Scans" / "splits.json").read_text())["interactive"]
    assert record["added"] == [first]
    assert json.loads((roots["raw"] / "Dataset021_Scans" / "boxesTr" / f"{first}.json").read_text()) == \
        ranked[0]["boxes"]


def test_a_predicted_label_id_above_255_is_overlaid_in_its_own_colour(browser, tmp_path, roots):
    """The page read the prediction as bytes: label 300 was painted as label 44, in another structure's colour."""
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for index in range(3):
        Image.fromarray((synthetic_case(rng)[0] * 255).astype(np.uint8)).save(folder / f"scan{index}.png")
    target = convert_folder(folder, dataset_id=22, name="BigLabels", label_names=["a", "big"])
    meta = json.loads((target / "dataset.json").read_text())
    (target / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "a": 1, "big": 300}}))
    plan_and_preprocess(22, shots=2, folds=2, num_workers=1, plan_only=True, progress=False)
    raw = load_raw_dataset(22, check_images=False)
    session = AnnotationSession(raw, preprocessed_dataset_dir(raw.name), foundation=shared_foundation)
    sample = session.unlabelled()[0]
    label_map = np.zeros(session.normalised_plane(sample).shape[:2], np.uint16)
    label_map[2:6, 2:6], label_map[8:12, 8:12] = 300, 1
    session.start_review([ReviewItem(sample, 0.5, [], label_map)])
    with page_on(browser, session) as page:
        page.wait_for_function("Number(document.getElementById('view').dataset.overlayPixels) > 0")
        assert page.evaluate("Array.from(new Set(state.prediction)).sort((a, b) => a - b)") == [0, 1, 300]
        painted = page.evaluate("[[3, 3], [9, 9]].map(([x, y]) => Array.from("
                                "state.overlayCanvas.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3)))")
        expected = [[0x40, 0xc4, 0xff], [0xff, 0x52, 0x52]]  # big and a: the 2nd and the 1st colours
        # the canvas keeps the translucent overlay premultiplied: its colours come back rounded
        assert np.abs(np.array(painted) - np.array(expected)).max() <= 3, painted


def test_the_printed_address_opens_the_page_and_leaves_the_address_bar(browser, session, scans, roots):
    """Without a token the server answered anyone; with it, the token would stay in the address bar (history,
    screenshots). Drawing, the mask and saving work under the page's Content-Security-Policy."""
    url, server, thread = serve(session)
    bare = url.split("?")[0]
    context = browser.new_context(viewport=VIEWPORT)
    errors: list[str] = []
    try:
        opened = context.new_page()
        opened.set_default_timeout(TIMEOUT_MS)
        opened.goto(bare)
        assert "the address that automedsam_annotate printed" in opened.locator("body").text_content()
        assert opened.locator("#view").count() == 0
        opened.on("console", lambda entry: errors.append(entry.text) if entry.type == "error" else None)
        opened.on("pageerror", lambda error: errors.append(str(error)))
        opened.goto(url)
        wait_under_policy(opened, "state.sample !== null && state.plane !== null && state.loading === null")
        shown = opened.evaluate("state.sample.sample")  # the address names it: a reload shows it again
        assert opened.url == f"{bare}#{shown}" and opened.evaluate("document.cookie") == ""  # HttpOnly: no script
        opened.reload()  # the cookie opens it again
        wait_under_policy(opened, "state.sample !== null && state.plane !== null && state.loading === null")
        sample = opened.evaluate("state.sample.sample")
        drag(opened, (20, 20), (60, 50))
        wait_under_policy(opened, "Number(document.getElementById('view').dataset.overlayPixels) > 0")
        opened.keyboard.press("s")
        wait_under_policy(opened, "!state.dirty")
    finally:
        context.close()
        stop(server, thread)
    assert errors == [] and saved_boxes(roots, sample) == [[20, 20, 60, 50]]


@contextmanager
def two_tabs_on(browser, session: AnnotationSession) -> Iterator[list]:
    """Two tabs of one browser open on a server for `session`, each showing its first sample; closed, then the
    server stopped."""
    url, server, thread = serve(session)
    context = new_context(browser)
    try:
        tabs = [context.new_page(), context.new_page()]
        for tab in tabs:
            tab.set_default_timeout(TIMEOUT_MS)
            tab.goto(url)
            tab.wait_for_function("state.plane !== null")
        yield tabs
    finally:
        context.close()
        stop(server, thread)


def test_two_tabs_saving_the_same_sample_keep_both_boxes(browser, session, scans, roots):
    with two_tabs_on(browser, session) as tabs:
        sample = tabs[0].evaluate("state.sample.sample")
        assert tabs[1].evaluate("state.sample.sample") == sample
        for tab, (start, end) in zip(tabs, [((20, 20), (60, 50)), ((100, 60), (150, 120))]):
            tab.bring_to_front()  # a background tab's animation frames are throttled: its view may not be fitted yet
            tab.evaluate("new Promise(requestAnimationFrame)")
            drag(tab, start, end)
        for tab in tabs:
            tab.keyboard.press("s")
            tab.wait_for_function("!state.dirty")
    saved = json.loads((roots["raw"] / "Dataset021_Scans" / "boxesTr" / f"{sample}.json").read_text())
    assert sorted(entry["box"] for entry in saved) == [[20, 20, 60, 50], [100, 60, 150, 120]]


def slow_responses_for(page, sample: str, milliseconds: int = 800) -> None:
    """Answer every request about `sample` late, as a large volume read from disk is."""
    page.evaluate("""([slow, delay]) => {
        const original = window.fetch;
        window.fetch = async (path, options) => {
            if (String(path).includes(encodeURIComponent(slow))) await new Promise((done) => setTimeout(done, delay));
            return original(path, options);
        };
    }""", [sample, milliseconds])


def slow_requests(page, method: str, part: str, milliseconds: int = 1500) -> None:
    """Answer the page's `method` requests whose path holds `part` late (a slow disk, a loaded server)."""
    page.evaluate("""([method, part, delay]) => {
        const original = window.fetch;
        window.fetch = async (path, options) => {
            if ((options || {}).method === method && String(path).includes(part)) {
                await new Promise((done) => setTimeout(done, delay));
            }
            return original(path, options);
        };
    }""", [method, part, milliseconds])


def late_answers(page, method: str, part: str, milliseconds: int = 1500) -> None:
    """Give the page the server's answers to its `method` requests whose path holds `part` late: the server has
    done the request already (a slow network)."""
    page.evaluate("""([method, part, delay]) => {
        const original = window.fetch;
        window.fetch = async (path, options) => {
            const response = await original(path, options);
            if ((options || {}).method === method && String(path).includes(part)) {
                await new Promise((done) => setTimeout(done, delay));
            }
            return response;
        };
    }""", [method, part, milliseconds])


def saved_boxes(roots, sample: str) -> list[list[int]]:
    path = roots["raw"] / "Dataset021_Scans" / "boxesTr" / f"{sample}.json"
    return sorted(entry["box"] for entry in json.loads(path.read_text()))


def test_a_box_drawn_while_the_save_is_on_its_way_is_saved_too(page, scans, roots):
    """The answer to S cleared the unsaved mark of a box drawn after S was pressed; N then dropped it."""
    page.wait_for_function("state.plane !== null")
    sample = page.evaluate("state.sample.sample")
    slow_requests(page, "PUT", "/boxes")
    drag(page, (20, 20), (60, 50))
    page.keyboard.press("s")
    drag(page, (100, 60), (150, 120))
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Saved')")  # S answered
    assert page.evaluate("state.dirty")
    page.keyboard.press("n")
    page.wait_for_function(f"state.sample && state.sample.sample !== {json.dumps(sample)}")
    assert saved_boxes(roots, sample) == [[20, 20, 60, 50], [100, 60, 150, 120]]


def test_next_pressed_while_the_save_is_on_its_way_waits_for_it_then_moves_on(page, scans, roots):
    """N during S's request was refused ("Saving: a moment."), and the message then said "Saved": the press was
    lost without a word."""
    page.wait_for_function("state.plane !== null")
    sample = page.evaluate("state.sample.sample")
    slow_requests(page, "PUT", "/boxes")
    drag(page, (20, 20), (60, 50))
    page.keyboard.press("s")
    page.keyboard.press("n")
    page.wait_for_function(f"state.sample && state.sample.sample !== {json.dumps(sample)}")
    assert saved_boxes(roots, sample) == [[20, 20, 60, 50]]


def test_a_box_drawn_and_deleted_again_lets_the_sample_pass_by(page, scans, roots):
    """An empty 2D save is refused (X says No structure): the page had nothing to save, yet N kept asking."""
    page.wait_for_function("state.plane !== null")
    sample = page.evaluate("state.sample.sample")
    drag(page, (20, 20), (60, 50))
    page.keyboard.press("Delete")
    page.keyboard.press("n")
    page.wait_for_function(f"state.sample && state.sample.sample !== {json.dumps(sample)}")
    assert not (roots["raw"] / "Dataset021_Scans" / "boxesTr" / f"{sample}.json").exists()


def test_a_box_moved_in_one_tab_is_not_brought_back_by_the_other_tabs_save(browser, session, scans, roots):
    """The merge after a conflict was a union: the moved box's old place came back as a second structure."""
    with two_tabs_on(browser, session) as tabs:
        sample = tabs[0].evaluate("state.sample.sample")
        tabs[0].bring_to_front()
        tabs[0].evaluate("new Promise(requestAnimationFrame)")
        drag(tabs[0], (20, 20), (60, 50))
        tabs[0].keyboard.press("s")
        tabs[0].wait_for_function("!state.dirty")
        tabs[1].bring_to_front()
        tabs[1].evaluate("new Promise(requestAnimationFrame)")
        drag(tabs[1], (100, 60), (150, 120))
        tabs[1].keyboard.press("s")  # a conflict: the first tab's box joins this tab's
        tabs[1].wait_for_function("!state.dirty && state.boxes.length === 2")
        tabs[0].bring_to_front()
        tabs[0].evaluate("new Promise(requestAnimationFrame)")
        drag(tabs[0], (40, 35), (45, 38))  # moves the box by (5, 3)
        tabs[0].keyboard.press("s")
        tabs[0].wait_for_function("!state.dirty")
    assert saved_boxes(roots, sample) == [[25, 23, 65, 53], [100, 60, 150, 120]]


def to_front(tab) -> None:
    """Bring `tab` to the front and wait a frame: a background tab's animation frames are throttled."""
    tab.bring_to_front()
    tab.evaluate("new Promise(requestAnimationFrame)")


def both_tabs_holding(tabs: list, boxes: list[tuple[tuple[int, int], tuple[int, int]]]) -> None:
    """The first tab draws `boxes` and saves them; the second shows its sample again, so both tabs hold them."""
    to_front(tabs[0])
    for start, end in boxes:
        drag(tabs[0], start, end)
    tabs[0].keyboard.press("s")
    tabs[0].wait_for_function("!state.dirty")
    to_front(tabs[1])
    tabs[1].evaluate("goTo(state.index)")
    assert tabs[1].evaluate("state.boxes.length") == len(boxes)


def test_a_box_the_other_tab_moved_is_not_kept_at_its_old_place_by_this_tabs_save(browser, session, scans, roots):
    """The merge after a conflict kept this tab's untouched copy of a box the other tab had moved, and added the
    moved one: two boxes for one structure, one of them stale."""
    with two_tabs_on(browser, session) as tabs:
        sample = tabs[0].evaluate("state.sample.sample")
        both_tabs_holding(tabs, [((20, 20), (60, 50))])
        drag(tabs[1], (40, 35), (45, 38))  # moves the box by (5, 3)
        tabs[1].keyboard.press("s")
        tabs[1].wait_for_function("!state.dirty")
        to_front(tabs[0])
        drag(tabs[0], (100, 60), (150, 120))  # the first box untouched here
        tabs[0].keyboard.press("s")  # a conflict: the moved box replaces this tab's copy of it
        tabs[0].wait_for_function("!state.dirty")
        assert sorted(tabs[0].evaluate("state.boxes.map((entry) => entry.box)")) == \
            [[25, 23, 65, 53], [100, 60, 150, 120]]
    assert saved_boxes(roots, sample) == [[25, 23, 65, 53], [100, 60, 150, 120]]


def test_a_box_the_other_tab_deleted_is_not_brought_back_by_this_tabs_save(browser, session, scans, roots):
    """The merge after a conflict kept this tab's untouched copy of a box the other tab had deleted. (A 2D image's
    last box cannot be saved away, so the other tab keeps a second box.)"""
    with two_tabs_on(browser, session) as tabs:
        sample = tabs[0].evaluate("state.sample.sample")
        both_tabs_holding(tabs, [((20, 20), (60, 50)), ((100, 60), (150, 120))])
        tabs[1].mouse.click(*screen_point(tabs[1], 40, 35))  # selects the first box
        tabs[1].keyboard.press("Delete")
        tabs[1].keyboard.press("s")
        tabs[1].wait_for_function("!state.dirty")
        to_front(tabs[0])
        drag(tabs[0], (170, 20), (220, 60))  # the first box untouched here
        tabs[0].keyboard.press("s")  # a conflict: the deleted box goes here too
        tabs[0].wait_for_function("!state.dirty")
    assert saved_boxes(roots, sample) == [[100, 60, 150, 120], [170, 20, 220, 60]]


def test_a_merge_whose_save_failed_keeps_the_servers_boxes_as_its_base(browser, session, scans, roots):
    """After a conflict the merged boxes were saved again; when that save failed (a run started meanwhile: 423), the
    boxes merged in from the other tab counted as this tab's own, so a box the other tab deleted later came back."""
    with two_tabs_on(browser, session) as tabs:
        sample = tabs[0].evaluate("state.sample.sample")
        both_tabs_holding(tabs, [((20, 20), (60, 50)), ((100, 60), (150, 120))])
        drag(tabs[1], (40, 35), (45, 38))  # moves the first box by (5, 3)
        tabs[1].keyboard.press("s")
        tabs[1].wait_for_function("!state.dirty")
        puts = []

        def refuse_the_retry(route) -> None:
            puts.append(route.request.method == "PUT")
            if sum(puts) == 2:
                route.fulfill(status=423, content_type="application/json", body='{"detail": "Training is running"}')
            else:
                route.continue_()
        to_front(tabs[0])
        tabs[0].route("**/boxes", refuse_the_retry)
        drag(tabs[0], (170, 20), (220, 60))
        tabs[0].keyboard.press("s")  # a conflict, merged; the merged save is refused
        tabs[0].wait_for_function("document.getElementById('status').className === 'error'")
        tabs[0].unroute("**/boxes")
        to_front(tabs[1])
        tabs[1].mouse.click(*screen_point(tabs[1], 45, 38))  # selects the moved box
        tabs[1].keyboard.press("Delete")
        tabs[1].keyboard.press("s")
        tabs[1].wait_for_function("!state.dirty")
        to_front(tabs[0])
        tabs[0].keyboard.press("s")  # a conflict again: the deleted box goes here too
        tabs[0].wait_for_function("!state.dirty")
    assert saved_boxes(roots, sample) == [[100, 60, 150, 120], [170, 20, 220, 60]]


@pytest.mark.parametrize(("then", "confirmed"), [("s", None), ("x", True), ("n", False), ("n", True)])
def test_no_structure_pressed_in_another_tab_is_not_saved_over_unasked(browser, session, scans, roots, then,
                                                                       confirmed):
    """The other tab's save met the conflict, merged its boxes into the empty list No structure had recorded, saved
    them and said "Merged ...": the sample was restored and neither tab said so. It keeps its boxes unsaved and says
    why; S again saves them over it, X keeps it marked. N then saved them over it on the way out, unasked: it asks."""
    asked: list[str] = []

    def answer(dialog) -> None:
        asked.append(dialog.message)
        if confirmed:
            dialog.accept()
        else:
            dialog.dismiss()
    with two_tabs_on(browser, session) as tabs:
        sample = tabs[0].evaluate("state.sample.sample")
        to_front(tabs[0])
        tabs[0].click("#reject")
        tabs[0].wait_for_function(f"state.sample && state.sample.sample !== {json.dumps(sample)}")
        assert saved_boxes(roots, sample) == [] and sample in splits_record(roots)["rejected"]
        to_front(tabs[1])
        drag(tabs[1], (20, 20), (60, 50))
        tabs[1].keyboard.press("s")
        tabs[1].wait_for_function("document.getElementById('status').className === 'error'")
        assert "marked No structure in another tab" in tabs[1].locator("#status").text_content()
        assert tabs[1].evaluate("state.dirty") and tabs[1].evaluate("state.boxes.length") == 1
        assert saved_boxes(roots, sample) == [] and sample in splits_record(roots)["rejected"]
        tabs[1].on("dialog", answer)
        tabs[1].keyboard.press(then)
        tabs[1].wait_for_function("!state.dirty && document.getElementById('status').className !== 'error'")
    assert len(asked) == (then != "s")  # X: discard the box?  N: save it over the No structure?
    if then == "n":
        assert "marked No structure in another tab" in asked[0]
    if then == "s" or confirmed and then == "n":  # asked for: saved over it, the sample rejoins the queue
        assert saved_boxes(roots, sample) == [[20, 20, 60, 50]] and sample not in splits_record(roots)["rejected"]
    else:
        assert saved_boxes(roots, sample) == [] and sample in splits_record(roots)["rejected"]


def test_an_empty_save_over_another_tabs_no_structure_shows_it_marked_and_n_moves_on(browser, session, scans, roots):
    """A tab showing the saved box deleted it after another tab's No structure and pressed S: refused ("marked No
    structure already"), it stayed unsaved, so N, P and the queue met the same refusal until a reload. It takes the
    sample as the server holds it: marked, not dirty, at the server's version (for Restore)."""
    with two_tabs_on(browser, session) as tabs:
        sample = tabs[0].evaluate("state.sample.sample")
        both_tabs_holding(tabs, [((20, 20), (60, 50))])
        to_front(tabs[0])
        tabs[0].on("dialog", lambda dialog: dialog.accept())  # discard the box?
        tabs[0].click("#reject")
        tabs[0].wait_for_function(f"state.sample && state.sample.sample !== {json.dumps(sample)}")
        to_front(tabs[1])
        tabs[1].mouse.click(*screen_point(tabs[1], 40, 35))  # selects the box
        tabs[1].keyboard.press("Delete")
        tabs[1].keyboard.press("s")
        tabs[1].wait_for_function("document.getElementById('status').textContent.includes('marked No structure')")
        assert tabs[1].evaluate("!state.dirty && isRejected()") and tabs[1].is_visible("#restore")
        assert "Restore" in tabs[1].locator("#status").text_content()
        assert tabs[1].locator(f"#queue button[data-sample={json.dumps(sample)}]").get_attribute(
            "data-status") == "rejected"
        server_version = tabs[1].evaluate("async () => (await (await fetch(samplePath(state.sample.sample), "
                                          "{headers: pageHeaders()})).json()).version")
        assert tabs[1].evaluate("state.version") == server_version
        tabs[1].keyboard.press("n")
        tabs[1].wait_for_function(f"state.sample.sample !== {json.dumps(sample)} && state.loading === null")
        assert tabs[1].locator("#status").get_attribute("class") != "error"
    assert saved_boxes(roots, sample) == [] and sample in splits_record(roots)["rejected"]


def test_an_empty_slice_saved_over_another_tabs_no_structure_shows_it_marked(browser, tmp_path, roots):
    """A volume's slice without boxes, saved after another tab marked it No structure: the page said "these boxes were
    not saved" of none and stayed unsaved. It takes the slice as marked, as for a 2D image."""
    with two_tabs_on(browser, volume_session(tmp_path)) as tabs:
        sample = tabs[0].evaluate("state.sample.sample")
        to_front(tabs[0])
        tabs[0].on("dialog", lambda dialog: dialog.accept())
        tabs[0].keyboard.press("x")
        tabs[0].wait_for_function(f"state.sample && state.sample.sample !== {json.dumps(sample)}")
        to_front(tabs[1])
        assert tabs[1].evaluate("[state.sample.sample, state.boxes.length]") == [sample, 0]
        tabs[1].keyboard.press("s")
        tabs[1].wait_for_function("document.getElementById('status').textContent.includes('marked No structure')")
        assert "these boxes" not in tabs[1].locator("#status").text_content()
        assert tabs[1].evaluate("!state.dirty && isRejected()") and tabs[1].is_visible("#restore")
        tabs[1].keyboard.press("n")
        tabs[1].wait_for_function(f"state.sample.sample !== {json.dumps(sample)} && state.loading === null")
        assert tabs[1].locator("#status").get_attribute("class") != "error"
    assert sample in json.loads((roots["preprocessed"] / "Dataset022_Vols" / "splits.json").read_text())[
        "interactive"]["rejected"]


def test_a_boxs_mask_arrives_even_when_an_earlier_box_is_deleted_meanwhile(page, scans, roots):
    page.wait_for_function("state.plane !== null")
    slow_requests(page, "POST", "/segment")
    drag(page, (20, 20), (60, 50))
    drag(page, (100, 60), (150, 120))
    page.mouse.click(*screen_point(page, 40, 35))  # selects the first box
    page.keyboard.press("Delete")
    page.wait_for_function("state.boxes.length === 1 && state.masks[0] !== null", timeout=10_000)


def test_a_damaged_box_file_is_named_on_the_page_instead_of_a_blank_page(browser, session, scans, roots):
    sample = session.queue()[0]
    folder = roots["raw"] / "Dataset021_Scans" / "boxesTr"
    folder.mkdir(exist_ok=True)
    (folder / f"{sample}.json").write_text('{"boxes": []}')
    errors: list[str] = []
    with page_on(browser, session) as opened:
        opened.on("pageerror", lambda error: errors.append(str(error)))
        opened.wait_for_function("document.getElementById('status').textContent.includes('JSON list')")
    assert errors == []


def test_pressing_next_again_while_a_sample_loads_shows_the_sample_the_queue_points_at(page, scans):
    """N N pressed quickly: the second sample answering after the third must not replace it (the queue marked the
    third while the image and the boxes saved were the second's)."""
    page.wait_for_function("state.plane !== null")
    queue = page.evaluate("state.overview.samples.map((entry) => entry.sample)")
    slow_responses_for(page, queue[1])
    page.keyboard.press("n")
    page.keyboard.press("n")
    page.wait_for_function(f"state.sample.sample === {json.dumps(queue[2])}")
    page.wait_for_timeout(1500)  # the second sample's late answers have arrived
    assert page.evaluate("[state.sample.sample, state.overview.samples[state.index].sample]") == [queue[2], queue[2]]
    assert page.locator("#queue button.current").get_attribute("data-sample") == queue[2]


def test_keys_work_after_choosing_a_label_in_the_list_or_setting_a_slider(page, scans, roots):
    """Up after choosing a label in the list changed the label back (the list kept the focus), and S, N or a label's
    key pressed on a slider did nothing."""
    page.wait_for_function("state.plane !== null")
    page.focus("#label")
    page.select_option("#label", "2")
    page.keyboard.press("ArrowUp")
    assert page.evaluate("[state.label, document.getElementById('label').value]") == [2, "2"]
    page.focus("#width")  # as Tab reaches it
    width = page.evaluate("document.getElementById('width').value")
    page.keyboard.press("ArrowLeft")  # the slider's own key: narrows the window
    assert int(page.evaluate("document.getElementById('width').value")) < int(width)
    page.keyboard.press("1")
    assert page.evaluate("state.label") == 1
    drag(page, (20, 20), (60, 50))
    page.focus("#level")
    page.keyboard.press("s")
    page.wait_for_function("!state.dirty")
    assert page.locator("#progress").text_content() == "1 of 3 done"


def test_letter_keys_work_with_caps_lock_and_the_help_names_the_modes_keys(page, scans, roots):
    """With Caps Lock on the letters arrive upper-case: S, N and the others did nothing."""
    page.wait_for_function("state.plane !== null")
    page.click("#keys summary")
    assert page.locator("#help-reject").is_visible() and not page.locator("#help-accept").is_visible()
    drag(page, (20, 20), (60, 50))
    page.keyboard.press("Shift+S")
    page.wait_for_function("!state.dirty")
    assert page.locator("#progress").text_content() == "1 of 3 done"


def test_a_stopped_or_failing_server_is_reported_and_the_boxes_stay_unsaved(page, scans, roots):
    """S with the server stopped did nothing visible (the page still said "Unsaved changes (S saves)"), and a server
    failure said only "request failed"."""
    page.wait_for_function("state.plane !== null")
    drag(page, (20, 20), (60, 50))
    # every status shown is recorded: the run poll's "answers again" may replace an error before a check sees it
    page.evaluate("window.shown = []; const show = message; "
                  "message = (text, kind) => { window.shown.push([text, kind]); show(text, kind); }")
    errors = "window.shown.filter(([text, kind]) => kind === 'error').map(([text]) => text)"
    page.route("**/boxes", lambda route: route.abort())
    page.keyboard.press("s")
    page.wait_for_function(f"{errors}.length === 1")
    assert "No answer from automedsam_annotate" in page.evaluate(errors)[0]
    page.unroute("**/boxes")
    page.route("**/boxes", lambda route: route.fulfill(status=500, body="Internal Server Error",
                                                       content_type="text/plain"))
    page.keyboard.press("s")
    page.wait_for_function(f"{errors}.length === 2")
    assert "HTTP 500" in page.evaluate(errors)[1]
    assert page.evaluate("[state.dirty, state.boxes.length]") == [True, 1]


def test_a_sample_that_fails_to_load_leaves_the_queue_on_the_sample_shown(page, scans, roots):
    """The queue marked the sample asked for even when it failed to load, while the page still showed the previous
    one (and N then counted from the sample that was not shown)."""
    page.wait_for_function("state.plane !== null")
    queue = page.evaluate("state.overview.samples.map((entry) => entry.sample)")
    page.route(f"**/{queue[1]}/pixels*", lambda route: route.fulfill(status=500, body="Internal Server Error",
                                                                    content_type="text/plain"))
    page.keyboard.press("n")
    page.wait_for_function("document.getElementById('status').className === 'error'")
    assert page.evaluate("[state.sample.sample, state.overview.samples[state.index].sample]") == [queue[0], queue[0]]
    assert page.locator("#queue button.current").get_attribute("data-sample") == queue[0]
    page.unroute(f"**/{queue[1]}/pixels*")
    page.keyboard.press("n")
    page.wait_for_function(f"state.sample.sample === {json.dumps(queue[1])}")


def test_the_width_slider_widens_the_window_past_the_image_range(page, scans, roots):
    """The slider stopped at the image's range, though a right-drag could widen the window further."""
    page.wait_for_function("state.plane !== null")
    low, high = page.evaluate("state.sample.range")
    page.eval_on_selector("#width", "(slider) => { slider.value = slider.max; "
                                    "slider.dispatchEvent(new Event('input')); }")
    window = page.evaluate("state.window")
    assert window[1] - window[0] == pytest.approx(2 * (high - low))


def test_rejecting_a_sample_with_boxes_asks_first(page, scans, roots):
    """X on a sample with boxes discarded them at once, and the sample left the queue: no way back in the page."""
    page.wait_for_function("state.plane !== null")
    sample = page.evaluate("state.sample.sample")
    drag(page, (20, 20), (60, 50))
    questions: list[str] = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.dismiss()))
    page.keyboard.press("x")
    page.wait_for_timeout(500)
    splits_path = roots["preprocessed"] / "Dataset021_Scans" / "splits.json"
    assert "1 box(es)" in questions[0] and json.loads(splits_path.read_text())["interactive"]["rejected"] == []
    assert page.evaluate("[state.sample.sample, state.boxes.length]") == [sample, 1]
    page.once("dialog", lambda dialog: dialog.accept())
    page.keyboard.press("x")
    page.wait_for_function(f"state.sample.sample !== {json.dumps(sample)}")
    assert json.loads(splits_path.read_text())["interactive"]["rejected"] == [sample]


def test_delete_on_another_slice_of_a_volume_removes_no_box_unseen(browser, tmp_path, roots):
    """A box selected on the sample's slice, Down to a neighbouring slice (boxes not shown there), Delete: the
    unseen box was deleted."""
    unannotated_volumes(tmp_path / "vols", dataset_id=22, shots=2)
    raw = load_raw_dataset(22, check_images=False)
    url, server, thread = serve(AnnotationSession(raw, preprocessed_dataset_dir(raw.name),
                                                  foundation=shared_foundation))
    context = new_context(browser)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_function("state.plane !== null")
        sample_slice = page.evaluate("state.sample.slice")
        drag(page, (5, 5), (20, 15))
        assert page.evaluate("state.selected") == 0
        page.keyboard.press("ArrowDown" if sample_slice > 0 else "ArrowUp")
        page.wait_for_function(f"state.slice !== {sample_slice}")
        page.keyboard.press("Delete")
        assert page.evaluate("state.boxes.length") == 1
        page.keyboard.press("Home")
        page.wait_for_function(f"state.slice === {sample_slice}")
        assert page.locator("#slice").text_content() == f"slice {sample_slice} (sample)"
    finally:
        context.close()
        stop(server, thread)


def drawn_image_bounds(page) -> dict[str, float]:
    """Where the image lies on the screen, measured on a screenshot of the canvas (whose background is #111): x, y,
    width and height in CSS pixels."""
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#view").screenshot())).convert("RGB"))
    rows, columns = np.nonzero(np.any(shot != 0x11, axis=-1))
    canvas = page.locator("#view").bounding_box()
    return {"x": canvas["x"] + columns.min(), "y": canvas["y"] + rows.min(),
            "width": float(columns.max() - columns.min() + 1), "height": float(rows.max() - rows.min() + 1)}


def test_anisotropic_pixels_are_drawn_at_their_physical_aspect_and_boxes_saved_in_pixels(browser, tmp_path, roots):
    """88 x 56 slices of 1.25 x 1.9 mm pixels cover about 110 x 106 mm, but were drawn 1.57:1 with square pixels: the
    anatomy stretched by half, and the boxes drawn against it. A box dragged and resized where the pixels are drawn
    must still be saved in pixels."""
    folder = tmp_path / "aniso"
    folder.mkdir()
    volume = np.full((4, 56, 88), 0.5, np.float32)  # black once windowed, a white frame: all of it unlike #111
    volume[:, [0, -1], :] = volume[:, :, [0, -1]] = 1.0
    geometry = Geometry(spacing=(1.25, 1.9, 3.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()),
                        kind="sitk")
    for index in range(2):
        write_image(folder / f"vol{index}.nii.gz", volume, geometry)
    convert_folder(folder, dataset_id=23, name="Aniso", label_names=["organ"])
    plan_and_preprocess(23, shots=2, folds=2, num_workers=1, plan_only=True, progress=False)
    raw = load_raw_dataset(23, check_images=False)
    session = AnnotationSession(raw, preprocessed_dataset_dir(raw.name), foundation=shared_foundation)
    with page_on(browser, session) as page:
        page.wait_for_function("state.plane !== null && state.loading === null")
        sample, slice_index = page.evaluate("[state.sample.sample, state.sample.slice]")
        image = drawn_image_bounds(page)
        assert image["height"] / image["width"] == pytest.approx((56 * 1.9) / (88 * 1.25), abs=0.02)
        column, row = image["width"] / 88, image["height"] / 56

        def on_screen(x: float, y: float) -> tuple[float, float]:
            return image["x"] + x * column, image["y"] + y * row
        page.mouse.move(*on_screen(10.5, 8.5))
        page.mouse.down()
        page.mouse.move(*on_screen(60.5, 40.5), steps=6)
        page.mouse.up()
        assert page.evaluate("state.boxes.map((entry) => entry.box)") == [[10, 8, 60, 40]]
        page.mouse.move(*on_screen(35, 41 + 4 / row))  # 4 screen pixels below the bottom edge: grabs it
        page.mouse.down()
        page.mouse.move(*on_screen(35, 47 + 4 / row), steps=6)
        page.mouse.up()
        page.keyboard.press("s")
        page.wait_for_function("!state.dirty")
    saved = json.loads((roots["raw"] / "Dataset023_Aniso" / "boxesTr" / f"{case_of(sample)}.json").read_text())
    assert saved == [{"label": 1, "box": [10, 8, 60, 46], "slice": slice_index}]


def test_train_from_the_page_shows_progress_then_the_review_and_downloads_the_model(browser, session, scans, roots,
                                                                                     monkeypatch):
    """Train waits for the last box, shows where the run is, then the page shows the review; Download model saves
    the zip. The steps are stand-ins (the real commands are tested through the API): this is the page's side."""
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset="Dataset021_Scans")
    for fold in (0, 1):
        (model_dir / f"fold_{fold}" / "log.json").write_text(json.dumps({"epochs": [], "summary": {}}))
    proceed = threading.Event()

    def train(output, stop):
        output("epoch    3/100  loss 0.5000  lr 1.0e-03  0.1 s")
        proceed.wait(TIMEOUT_MS / 1000)

    def rank(output, stop):
        start_toy_review(session, model_dir, samples=2)
    monkeypatch.setattr(annotation_server, "training_steps", lambda session, settings: [
        CallStep("Training fold 1 of 2", train), CallStep("Ranking the unlabelled samples for review", rank)])
    drawn = session.queue()
    for sid in drawn[:-1]:
        session.save(sid, [{"label": 1, "box": scans[sid]}], version="none")
    with page_on(browser, session, accept_downloads=True) as page:
        page.wait_for_function("state.training !== null && state.sample !== null")
        assert page.locator("#train").is_disabled()
        assert "1 of the 3 drawn samples still need boxes" in page.locator("#train").get_attribute("title")
        assert page.evaluate("state.sample.sample") == drawn[-1]  # the page opened on the sample left to do
        x0, y0, x1, y1 = scans[drawn[-1]]
        drag(page, (x0, y0), (x1, y1))
        page.keyboard.press("s")
        page.wait_for_function("!document.getElementById('train').disabled")
        page.click("#train")
        page.wait_for_function("document.getElementById('training').textContent.includes('epoch 3/100')")
        assert page.locator("#training").text_content().startswith("Training fold 1 of 2 (step 1 of 2")
        assert page.locator("#train").text_content() == "Stop training" and page.locator("#download").is_disabled()
        doc_screenshot(page, "annotate_train.png")
        boxes = page.evaluate("state.boxes.length")
        drag(page, (x0 + 2, y0 + 2), (x0 + 12, y0 + 12))  # the server would refuse to save it: not drawn at all
        assert page.evaluate("[state.boxes.length, state.dirty]") == [boxes, False]
        assert page.locator("#status").text_content().startswith("Training is running")
        proceed.set()
        page.wait_for_function("document.getElementById('status').textContent.startsWith('The unlabelled samples')")
        assert page.locator("#mode").text_content() == "review: worst first"
        assert page.locator("#progress").text_content() == "0 of 2 done"
        assert page.locator("#training").text_content().startswith("Finished in")
        assert not page.locator("#review").is_visible()  # in review already
        page.once("dialog", lambda dialog: dialog.accept(dialog.default_value))  # the name the zip carries
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == "Dataset021_Scans_default__toyPlans.zip"
        with zipfile.ZipFile(download.value.path()) as archive:
            assert "fold_1/checkpoint_final.pt" in archive.namelist()
    assert json.loads((roots["raw"] / "Dataset021_Scans" / "boxesTr" / f"{drawn[-1]}.json").read_text())


def test_download_model_asks_for_the_name_the_zip_carries_and_says_why_a_name_is_refused(browser, session, scans,
                                                                                        roots):
    """The dataset's name may identify a patient: the page asks for the name the shared model carries (the
    dataset's own offered), as automedsam_export_model --name; a name it refuses is said on the page."""
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset="Dataset021_Scans")
    for fold in (0, 1):
        (model_dir / f"fold_{fold}" / "log.json").write_text(json.dumps({"epochs": [], "summary": {}}))
    offered = []

    def name_it(name: str):
        def answer(dialog) -> None:
            offered.append(dialog.default_value)
            dialog.accept(name)
        return answer
    with page_on(browser, session, accept_downloads=True) as page:
        page.wait_for_function("!document.getElementById('download').disabled")
        page.once("dialog", name_it("Shared"))
        with page.expect_download() as download:
            page.click("#download")
        assert download.value.suggested_filename == "Dataset021_Shared_default__toyPlans.zip"
        with zipfile.ZipFile(download.value.path()) as archive:
            assert json.loads(archive.read("model_card.json"))["dataset"] == "Dataset021_Shared"
        page.once("dialog", name_it("a b"))
        page.click("#download")
        page.wait_for_function("document.getElementById('status').textContent.includes('is invalid')")
        assert "'a b'" in page.locator("#status").text_content()
    assert offered == ["Dataset021_Scans", "Dataset021_Scans"]


def test_a_drag_begun_while_the_next_sample_loads_draws_no_box_on_it(page, scans, roots):
    """N, then a drag at once on the image still on screen: the next sample arrives mid-drag, and the drag, begun on
    the previous image's view, must not end as a box of the new sample (in the wrong place, saved with it)."""
    page.wait_for_function("state.plane !== null")
    queue = page.evaluate("state.overview.samples.map((entry) => entry.sample)")
    slow_responses_for(page, queue[1], 1500)
    x0, y0, x1, y1 = scans[queue[0]]
    page.keyboard.press("n")
    page.mouse.move(*screen_point(page, x0, y0))
    page.mouse.down()
    page.mouse.move(*screen_point(page, x1, y1), steps=4)
    assert page.evaluate("state.sample.sample") == queue[0]  # still loading
    assert "Loading" in page.locator("#status").text_content()
    page.wait_for_function(f"state.sample.sample === {json.dumps(queue[1])}")
    page.mouse.up()
    assert page.evaluate("[state.boxes.length, state.dirty]") == [0, False]
    assert not (roots["raw"] / "Dataset021_Scans" / "boxesTr" / f"{queue[1]}.json").exists()


def test_review_from_the_page_ranks_with_the_trained_model_without_training(browser, session, scans, roots,
                                                                            monkeypatch):
    """A server started without --review, a model trained before: Review shows its review, no terminal needed."""
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset="Dataset021_Scans")
    # the model was trained on them: Review waits for every drawn sample's boxes
    box_every_queued_sample(session, scans)
    ranked_with = []

    def rank(output, stop):
        ranked_with.append(model_dir)
        start_toy_review(session, model_dir, samples=1)
    monkeypatch.setattr(annotation_server, "review_steps", lambda session, settings: [
        CallStep("Ranking the unlabelled samples for review", rank)])
    monkeypatch.setattr(annotation_server, "training_steps", lambda session, settings: pytest.fail("trained"))
    with page_on(browser, session) as page:
        page.wait_for_function("state.training !== null && !document.getElementById('review').disabled")
        assert page.locator("#mode").text_content() == "annotate"
        page.click("#review")
        page.wait_for_function("document.getElementById('mode').textContent === 'review: worst first'")
        page.wait_for_function("state.sample !== null && state.sample.proposed !== null")
        assert ranked_with == [model_dir] and not page.locator("#review").is_visible()


def test_review_waits_like_train_for_the_last_drawn_sample_and_says_why(browser, session, scans, roots):
    """Review stayed enabled while a drawn sample still needed boxes: a click was refused (422, a console error)."""
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset021_Scans")
    drawn = session.queue()
    for sid in drawn[:-1]:
        session.save(sid, [{"label": 1, "box": scans[sid]}], version="none")
    with page_on(browser, session) as page:
        refused, errors, reviews = [], [], []
        page.on("response", lambda response: refused.append(response.url) if response.status >= 400 else None)
        page.on("console", lambda entry: errors.append(entry.text) if entry.type == "error" else None)
        page.on("request", lambda request: reviews.append(request) if request.url.endswith("/api/review") else None)
        page.wait_for_function("state.training !== null && state.sample !== null && state.plane !== null")
        assert not page.locator("#download").is_disabled()  # the model is there
        blocker = page.locator("#train").get_attribute("title")
        assert blocker.startswith("1 of the 3 drawn samples still need boxes")
        assert page.locator("#review").is_disabled() and page.locator("#review").get_attribute("title") == blocker
        page.click("#review", force=True)  # a disabled button sends nothing
        x0, y0, x1, y1 = scans[drawn[-1]]
        drag(page, (x0, y0), (x1, y1))
        page.keyboard.press("s")
        page.wait_for_function("!document.getElementById('review').disabled")
        assert page.locator("#review").get_attribute("title").startswith("Rank the unlabelled samples")
    assert reviews == [] and refused == [] and errors == []


def test_the_header_shows_the_last_epochs_loss_and_box_dice_beside_the_live_bar(browser, session, scans, roots,
                                                                              monkeypatch):
    """The redrawn progress bar hid the epoch lines: their loss and validation box Dice reached only the tooltip. An
    epoch that did not validate shows the last box Dice measured, naming its epoch."""
    proceed = threading.Event()

    def train(output, stop):
        output("epoch    1/3  loss 1.9900  lr 1.0e-03  val box Dice 0.500  inside 0.900  0.1 s")
        output("epoch    2/3  loss 1.5000  lr 1.0e-03  0.1 s")
        output("training \u2501\u2501\u2501\u2501\u2501\u2501 3/3 0:00:16 0:00:08", live=True)
        proceed.wait(TIMEOUT_MS / 1000)
    monkeypatch.setattr(annotation_server, "training_steps", lambda session, settings: [
        CallStep("Training fold 1 of 2", train)])
    box_every_queued_sample(session, scans)
    with page_on(browser, session) as page:
        try:
            click_train(page)
            page.wait_for_function("document.getElementById('training').textContent.includes('3/3')")
            header = page.locator("#training").text_content()
        finally:
            proceed.set()
        page.wait_for_function("document.getElementById('train').textContent === 'Train'")
    assert header.startswith("Training fold 1 of 2 (step 1 of 1, ")
    assert header.endswith(": training 3/3 0:00:16 0:00:08 \u00b7 epoch 2/3 loss 1.5000 val box Dice 0.500 (epoch 1/3)")


def test_a_run_started_in_one_tab_shows_in_another(browser, session, scans, roots, monkeypatch):
    """The second tab did not know of the run until it saved (and was refused) or was reloaded."""
    proceed = threading.Event()
    monkeypatch.setattr(annotation_server, "training_steps", lambda session, settings: [
        CallStep("Training fold 1 of 2", lambda output, stop: proceed.wait(TIMEOUT_MS / 1000))])
    box_every_queued_sample(session, scans)
    url, server, thread = serve(session)
    contexts = [new_context(browser) for _ in range(2)]
    first, second = [context.new_page() for context in contexts]
    try:
        for page in (first, second):
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.wait_for_function("state.training !== null && !document.getElementById('train').disabled")
        first.click("#train")
        second.wait_for_function("document.getElementById('train').textContent === 'Stop training'", timeout=15_000)
        assert second.locator("#training").text_content().startswith("Training fold 1 of 2")
        proceed.set()
        second.wait_for_function("document.getElementById('train').textContent === 'Train'", timeout=15_000)
    finally:
        proceed.set()
        for context in contexts:
            context.close()
        stop(server, thread)


def test_a_proposal_answered_after_train_started_adds_no_box(browser, session, scans, roots, monkeypatch):
    """A double-click's proposal still on its way when Train starts must not become a box: the run reads the boxes,
    and the box would be shown unsaved, then saved after the run without having been part of it."""
    proceed = threading.Event()
    monkeypatch.setattr(annotation_server, "training_steps", lambda session, settings: [
        CallStep("Training fold 1 of 2", lambda output, stop: proceed.wait(TIMEOUT_MS / 1000))])
    # label 2: a double-click with label 1 chosen lands on no box
    box_every_queued_sample(session, scans, label=2)
    held = []
    with page_on(browser, session) as page:
        try:
            page.wait_for_function("state.training !== null && !document.getElementById('train').disabled "
                                   "&& state.sample !== null && state.plane !== null")
            page.route("**/propose", lambda route: held.append(route))
            x0, y0, x1, y1 = scans[page.evaluate("state.sample.sample")]
            page.mouse.dblclick(*screen_point(page, (x0 + x1) / 2, (y0 + y1) / 2))
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Outlining')")
            page.click("#train")
            page.wait_for_function("state.training.state === 'running'")
            boxes = page.evaluate("state.boxes.length")
            held[0].fulfill(status=200, content_type="application/json",
                            body=json.dumps({"boxes": [[x0, y0, x1, y1]]}))
            page.wait_for_timeout(500)
            assert page.evaluate("[state.boxes.length, state.dirty, state.proposal]") == [boxes, False, None]
        finally:
            proceed.set()


class FailingCommand:
    """A stand-in preprocessing that fails on a corrupt image, printing what the real command prints."""
    title = "Preprocessing the boxes"

    def run(self, output, stop):
        for line in ("$ automedsam_plan_and_preprocess -d Dataset021_Scans", "Error: The dataset has problems in "
                     "1 case(s):", "  - scan1: scan1_0000.png could not be read", "Fix or remove these files."):
            output(line)
        raise AutomedsamError("automedsam_plan_and_preprocess -d Dataset021_Scans failed (exit code 2)")


@pytest.mark.parametrize("ended_before_the_answer", [False, True])
def test_a_failed_step_says_why_in_the_commands_own_words(browser, session, scans, roots, monkeypatch,
                                                          ended_before_the_answer):
    """A command that fails on a corrupt image: the page gives its error and the file list, not only an exit code,
    also when the run has already failed by the time Train's own answer arrives (no poll ever sees it running)."""
    if ended_before_the_answer:
        started = TrainingJob.start

        def start_and_wait(job, steps, *, run="training"):
            started(job, steps, run=run)
            job._thread.join()
        monkeypatch.setattr(TrainingJob, "start", start_and_wait)
    monkeypatch.setattr(annotation_server, "training_steps", lambda session, settings: [FailingCommand()])
    box_every_queued_sample(session, scans)
    with page_on(browser, session) as page:
        click_train(page)
        page.wait_for_function("document.getElementById('status').className === 'error'")
        said = page.locator("#status").text_content()
        assert said.startswith("Preprocessing the boxes failed: Error: The dataset has problems in 1 case(s): - scan1")
        assert "Fix or remove these files." in said and "page_training.log" in said
        assert page.locator("#training").text_content().startswith("Preprocessing the boxes failed")
        assert page.locator("#train").text_content() == "Train"


def test_segment_images_runs_in_the_background_then_the_label_maps_download_as_one_zip(browser, session, scans,
                                                                                        roots, monkeypatch):
    """Segment images keeps the sample on screen, says what the command wrote, and Download segmentations saves
    the zip. The step is a stand-in (the real command is tested through the API): this is the page's side."""
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset021_Scans")
    proceed = threading.Event()
    folder = segmentations_dir(session)

    def segment(output, stop):
        proceed.wait(TIMEOUT_MS / 1000)
        folder.mkdir(parents=True)
        for name in ("scan0.png", "scan1.png"):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / name)
        output(f"Wrote 2 segmentation(s) to {folder} with the boxes of Dataset021_Scans: 1 outlined from the "
               "annotator's boxes, 0 marked as not showing the structure (left empty), 1 segmented by the model")
    monkeypatch.setattr(annotation_server, "segmentation_steps", lambda session, settings: [
        CallStep("Segmenting the images", segment)])
    with page_on(browser, session, accept_downloads=True) as page:
        page.wait_for_function("state.training !== null && state.sample !== null")
        assert page.locator("#download-segmentations").is_disabled()
        page.keyboard.press("n")
        page.wait_for_function("state.index === 1 && state.loading === null")
        page.click("#segment")
        page.wait_for_function("document.getElementById('train').textContent === 'Stop segmentation'")
        assert page.locator("#segment").is_disabled()
        proceed.set()
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Wrote 2 segmentation')")
        assert page.locator("#status").text_content().endswith("Download segmentations gives them as one zip.")
        assert page.evaluate("state.index") == 1  # the annotator's place is kept
        assert page.locator("#train").text_content() == "Train"
        page.wait_for_function("!document.getElementById('download-segmentations').disabled")
        with page.expect_download() as download:
            page.click("#download-segmentations")
        assert download.value.suggested_filename == "Dataset021_Scans_segmentations.zip"
        with zipfile.ZipFile(download.value.path()) as archive:
            assert sorted(archive.namelist()) == ["scan0.png", "scan1.png"]


def reload_after_the_run(page) -> None:
    """F5 once the run has ended: the page opened again, its sample shown and the run's state known."""
    page.reload()
    page.wait_for_function("state.training !== null && state.sample !== null && state.loading === null")


def test_a_failed_run_still_says_why_after_a_reload(browser, session, scans, roots, monkeypatch):
    """A page reloaded (or opened) after a failed run gives the command's reason, not only its exit code."""
    monkeypatch.setattr(annotation_server, "training_steps", lambda session, settings: [FailingCommand()])
    box_every_queued_sample(session, scans)
    with page_on(browser, session) as page:
        click_train(page)
        page.wait_for_function("state.training.state === 'failed'")
        reload_after_the_run(page)
        page.wait_for_function("document.getElementById('status').textContent.includes('could not be read')",
                               timeout=10_000)
        said = page.locator("#status").text_content()
        assert said.startswith("Preprocessing the boxes failed: Error: The dataset has problems in 1 case(s)")
        assert "page_training.log" in said and page.locator("#status").get_attribute("class") == "error"


def test_segment_images_still_says_what_it_wrote_after_a_reload(browser, session, scans, roots, monkeypatch):
    """The summary of a finished Segment images (which images to check first) survives F5."""
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset021_Scans")
    summary = ("Wrote 2 segmentation(s) to segmentations with the boxes of Dataset021_Scans: 1 outlined from the "
               "annotator's boxes, 1 segmented by the model; check those first")
    monkeypatch.setattr(annotation_server, "segmentation_steps", lambda session, settings: [
        CallStep("Segmenting the images", lambda output, stop: output(summary))])
    with page_on(browser, session) as page:
        page.wait_for_function("state.training !== null && !document.getElementById('segment').disabled")
        page.click("#segment")
        page.wait_for_function("state.training.state === 'finished'")
        reload_after_the_run(page)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Wrote 2 segmentation')",
                               timeout=10_000)
        assert page.locator("#status").text_content() == f"{summary} Download segmentations gives them as one zip."


def test_double_clicking_train_starts_the_run_once_without_a_refusal(browser, session, scans, roots, monkeypatch):
    """The second click of a double-click, sent before the first's answer, was answered "Training is already
    running" in red: the user's own start refused."""
    proceed = threading.Event()
    monkeypatch.setattr(annotation_server, "training_steps", lambda session, settings: [
        CallStep("Training fold 1 of 2", lambda output, stop: proceed.wait(TIMEOUT_MS / 1000))])
    box_every_queued_sample(session, scans)
    starts: list[str] = []
    with page_on(browser, session) as page:
        try:
            page.on("request", lambda request: starts.append(request.url) if request.method == "POST"
                    and request.url.endswith("/api/training") else None)
            page.wait_for_function("state.training !== null && !document.getElementById('train').disabled")
            page.dblclick("#train")
            page.wait_for_function("document.getElementById('train').textContent === 'Stop training'")
            page.wait_for_timeout(1000)  # the answer a second start would have got
            assert len(starts) == 1
            assert page.locator("#status").get_attribute("class") != "error"
            assert page.locator("#status").text_content().startswith("Training started")
        finally:
            proceed.set()


def test_a_reload_in_review_shows_the_sample_shown_before(browser, session, scans, roots):
    """F5 went back to the first sample of the review: the address names the sample shown."""
    model_dir = write_model_folder(roots["results"], shared_foundation(), dataset="Dataset021_Scans")
    ranked = start_toy_review(session, model_dir, samples=3)
    with page_on(browser, session) as page:
        page.wait_for_function("state.sample !== null && state.loading === null")
        for position in (1, 2):
            page.keyboard.press("n")
            page.wait_for_function(f"state.index === {position} && state.loading === null")
        third = ranked[2]["sample_id"]
        assert page.evaluate("state.sample.sample") == third
        page.reload()
        page.wait_for_function("state.sample !== null && state.loading === null")
        assert page.evaluate("state.sample.sample") == third and page.evaluate("state.index") == 2


def test_a_long_message_leaves_the_image_most_of_a_small_window(page, scans, roots):
    """A failure naming 20 files (thousands of characters, on the run line and the status line) left the image 0 px
    high: both scroll within a few lines."""
    page.set_viewport_size({"width": 800, "height": 600})
    page.wait_for_function("state.sample !== null && state.loading === null")
    files = [f"  - scan{index}: /data/automedsam/raw/Dataset021_Scans/imagesTr/scan{index}_0000.png could not be "
             "read; the file is corrupt, truncated or not really an image of its extension." for index in range(20)]
    text = "Preprocessing the boxes failed: Error: The dataset has problems in 20 case(s): " + " ".join(files)
    page.evaluate("(text) => showTrainingProblem(text)", text)
    assert page.locator("#status").text_content() == text
    assert page.locator("#view").bounding_box()["height"] >= 0.4 * 600


def splits_record(roots) -> dict:
    return json.loads((roots["preprocessed"] / "Dataset021_Scans" / "splits.json").read_text())["interactive"]


def proposed_review(session: AnnotationSession, scans: dict[str, list[int]], *, samples: int) -> list[str]:
    """A review of the first `samples` unlabelled samples, each proposed with its true box (no model needed)."""
    chosen = session.unlabelled()[:samples]
    session.start_review([ReviewItem(sid, 0.9 - 0.1 * rank, [{"label": 1, "box": scans[sid]}],
                                     np.zeros(session.normalised_plane(sid).shape[:2], np.uint8))
                          for rank, sid in enumerate(chosen)])
    return chosen


def press_enter_and_space(page) -> None:
    for key in ("Enter", " "):
        page.keyboard.press(key)
    page.wait_for_timeout(800)  # a click the keys set off would have been answered by now


def test_enter_or_space_after_clicking_no_structure_rejects_no_other_sample(page, scans, roots):
    """The clicked button kept the focus: Enter clicked it again, on the next sample, which nobody had looked at."""
    page.wait_for_function("state.sample !== null && state.loading === null")
    first = page.evaluate("state.sample.sample")
    page.click("#reject")
    page.wait_for_function(f"state.sample.sample !== {json.dumps(first)} && state.loading === null")
    press_enter_and_space(page)
    assert splits_record(roots)["rejected"] == [first]


def test_enter_or_space_after_clicking_accept_adds_no_other_sample(browser, session, scans, roots):
    first, second = proposed_review(session, scans, samples=2)
    with page_on(browser, session) as page:
        page.wait_for_function("state.sample !== null && state.loading === null")
        page.click("#accept")
        page.wait_for_function(f"state.sample.sample === {json.dumps(second)} && state.loading === null")
        press_enter_and_space(page)
        assert splits_record(roots)["added"] == [first]


def test_in_review_deleting_the_boxes_of_an_accepted_sample_takes_it_out_and_lets_the_page_move_on(
        browser, session, scans, roots):
    """The empty save was refused, and every move (N, P, the queue, Train) waits for the save: the page was stuck."""
    first, second = proposed_review(session, scans, samples=2)
    with page_on(browser, session) as page:
        page.wait_for_function("state.sample !== null && state.loading === null")
        page.keyboard.press("a")
        page.wait_for_function(f"state.sample.sample === {json.dumps(second)} && state.loading === null")
        page.keyboard.press("p")
        page.wait_for_function(f"state.sample.sample === {json.dumps(first)} && state.loading === null")
        x0, y0, x1, y1 = scans[first]
        page.mouse.click(*screen_point(page, (x0 + x1) / 2, (y0 + y1) / 2))  # selects the saved box
        page.keyboard.press("Delete")
        page.keyboard.press("n")
        page.wait_for_function(f"state.sample.sample === {json.dumps(second)} && state.loading === null")
        assert page.locator("#progress").text_content() == "0 of 2 done"
    assert splits_record(roots)["added"] == []
    assert not (roots["raw"] / "Dataset021_Scans" / "boxesTr" / f"{first}.json").exists()


def test_no_structure_pressed_right_after_save_rejects_the_saved_sample(page, scans, roots):
    """X during S's request sent the version from before the save: the server answered that another tab had changed
    the boxes, and the sample stayed unrejected."""
    page.wait_for_function("state.plane !== null")
    sample = page.evaluate("state.sample.sample")
    late_answers(page, "PUT", "/boxes")
    drag(page, (20, 20), (60, 50))
    page.once("dialog", lambda dialog: dialog.accept())
    page.keyboard.press("s")
    page.keyboard.press("x")
    page.wait_for_function(f"state.sample.sample !== {json.dumps(sample)} && state.loading === null", timeout=15_000)
    assert splits_record(roots)["rejected"] == [sample]
    assert "another tab" not in page.locator("#status").text_content()


@pytest.mark.parametrize("ending", ["nothing to rank", "stopped"])
def test_a_review_run_that_ends_without_a_review_says_so_not_training(browser, session, scans, roots, monkeypatch,
                                                                     ending):
    """Every run but Segment images ended with the training's words: "Training finished." for a review with no
    sample left to rank, "Training stopped: ... Train starts again" for a stopped review."""
    write_model_folder(roots["results"], shared_foundation(), dataset="Dataset021_Scans")
    # the model was trained on them: Review waits for every drawn sample's boxes
    box_every_queued_sample(session, scans)
    said = "Every sample is labelled: nothing is left to review."

    def rank(output, stop):
        if ending == "stopped":
            stop.wait(TIMEOUT_MS / 1000)
            raise StepStopped
        output(said)
    monkeypatch.setattr(annotation_server, "review_steps", lambda session, settings: [
        CallStep("Ranking the unlabelled samples for review", rank)])
    with page_on(browser, session) as page:
        page.wait_for_function("state.training !== null && !document.getElementById('review').disabled")
        page.click("#review")
        if ending == "stopped":
            page.wait_for_function("document.getElementById('train').textContent === 'Stop review'")
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#train")
        page.wait_for_function("document.getElementById('train').textContent === 'Train'")
        page.wait_for_function("/finished|stopped/.test(document.getElementById('status').textContent)")
        status = page.locator("#status").text_content()
    assert status.startswith("Review stopped: " if ending == "stopped" else f"Review finished: {said}")
    assert "Train" not in status


def test_a_click_jitter_on_a_zoomed_out_image_draws_no_box(page, scans, roots):
    """The smallest box was 2 image pixels: on a large image fitted at a third of its size, a deselecting click that
    moved one screen pixel drew a 3 x 3 box, saved as an annotation."""
    page.wait_for_function("state.plane !== null")
    page.evaluate("state.view = { scale: 0.3, x: 10, y: 10 }; state.fitted = false; draw()")
    bounds = page.locator("#view").bounding_box()
    start = (bounds["x"] + 30, bounds["y"] + 30)
    for moved, boxes in ((1, 0), (2, 0), (12, 1)):  # two jitters, then a real (if small) drag
        page.mouse.move(*start)
        page.mouse.down()
        page.mouse.move(start[0] + moved, start[1] + moved, steps=2)
        page.mouse.up()
        assert page.evaluate("state.boxes.length") == boxes, f"moved {moved} screen pixels"


def test_a_sample_marked_no_structure_stays_listed_and_restore_brings_it_back(page, scans, roots):
    """An X could not be undone: the sample left the queue, with nothing on the page to bring it back."""
    page.wait_for_function("state.sample !== null && state.loading === null")
    rejected = page.evaluate("state.sample.sample")
    page.keyboard.press("x")
    page.wait_for_function(f"state.sample.sample !== {json.dumps(rejected)} && state.loading === null")
    entry = page.locator(f"#queue button[data-sample={json.dumps(rejected)}]")
    assert entry.get_attribute("data-status") == "rejected"
    assert not page.locator("#restore").is_visible()
    entry.click()
    page.wait_for_function(f"state.sample.sample === {json.dumps(rejected)} && state.loading === null")
    assert page.locator("#restore").is_visible() and not page.locator("#reject").is_visible()
    drag(page, (20, 20), (60, 50))
    assert page.evaluate("state.boxes.length") == 0  # Restore first: its boxes were discarded with the X
    page.click("#restore")
    page.wait_for_function("document.getElementById('status').textContent.includes('is back in the queue')")
    assert page.evaluate("[state.sample.sample, state.sample.status]") == [rejected, "todo"]
    assert page.locator("#reject").is_visible() and not page.locator("#restore").is_visible()
    assert splits_record(roots)["rejected"] == []
    queue = page.locator("#queue button").evaluate_all("buttons => buttons.map(b => b.dataset.sample)")
    assert queue == splits_record(roots)["order"][:SHOTS]


def test_s_on_a_sample_marked_no_structure_says_it_is_marked_already_and_sends_nothing(page, scans, roots):
    """S on an image marked No structure said nothing (or, sent, "No box to save ... press X"): X is done already."""
    page.wait_for_function("state.sample !== null && state.loading === null")
    rejected = page.evaluate("state.sample.sample")
    page.keyboard.press("x")
    page.wait_for_function(f"state.sample.sample !== {json.dumps(rejected)} && state.loading === null")
    page.locator(f"#queue button[data-sample={json.dumps(rejected)}]").click()
    page.wait_for_function(f"state.sample.sample === {json.dumps(rejected)} && state.loading === null")
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if request.method == "PUT" else None)
    page.keyboard.press("s")
    page.wait_for_function("document.getElementById('status').textContent.includes('marked No structure already')")
    status = page.locator("#status").text_content()
    assert "Restore" in status and "press X" not in status and sent == []
    assert splits_record(roots)["rejected"] == [rejected]


def test_no_structure_in_review_says_to_pass_the_sample_by_and_records_nothing(browser, session, scans, roots):
    """X did nothing in review and said nothing: the record of No structure is the draw's (session.reject)."""
    first, _ = proposed_review(session, scans, samples=2)
    with page_on(browser, session) as page:
        page.wait_for_function("state.sample !== null && state.loading === null")
        page.keyboard.press("x")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('No structure is for the "
                               "drawn samples: in review, press N to pass this one by')", timeout=5_000)
        assert page.evaluate("[state.sample.sample, state.dirty]") == [first, False]
    assert splits_record(roots)["rejected"] == [] and splits_record(roots)["added"] == []


@pytest.mark.parametrize("where", ["beside", "on"])
def test_a_double_click_in_review_replaces_the_ensembles_box_it_overlaps_and_keeps_its_others(browser, session,
                                                                                             scans, roots, where):
    """The proposal of a double-click beside the ensemble's misplaced box was added next to it, and A saved both:
    the misplaced box entered the training set. On that box, the double-click only selected it."""
    sample = session.unlabelled()[0]
    x0, y0, x1, y1 = scans[sample]
    quarter = (y1 - y0) // 4  # a band of the structure: the click at its centre lies beside it or on it
    misplaced = [x0, y0, x1, y0 + quarter] if where == "beside" else [x0, y0 + quarter, x1, y1 - quarter]
    corner = [2, 2, 20, 20]  # a box elsewhere, which the double-click leaves to the annotator
    session.start_review([ReviewItem(sample, 0.9, [{"label": 1, "box": misplaced}, {"label": 1, "box": corner}],
                                     np.zeros(session.normalised_plane(sample).shape[:2], np.uint8))])
    with page_on(browser, session) as page:
        page.wait_for_function("state.plane !== null && state.boxes.length === 2")
        page.mouse.dblclick(*screen_point(page, (x0 + x1) / 2, (y0 + y1) / 2))
        page.wait_for_function("state.proposal !== null", timeout=15_000)
        proposed = page.evaluate("state.proposal.boxes[0]")
        assert page.evaluate("state.boxes.map((entry) => entry.box)") == [corner, proposed]
        said = page.locator("#status").text_content()
        assert "in place of the ensemble's box(es) it overlaps" in said and "1 other box(es) stay" in said
        page.keyboard.press("a")
        page.wait_for_function("document.getElementById('progress').textContent === '1 of 1 done'")
    saved = json.loads((roots["raw"] / "Dataset021_Scans" / "boxesTr" / f"{sample}.json").read_text())
    assert [entry["box"] for entry in saved] == [corner, proposed]


def test_the_stop_question_says_the_model_trained_before_comes_back(browser, session, scans, roots, monkeypatch):
    """It said "The folds trained so far stay", while a stopped Train puts the model trained before back and moves
    the run's folds to previous/ (retraining._bring_back); only a first Train keeps its finished folds."""
    def train(output, stop):
        stop.wait(TIMEOUT_MS / 1000)
        raise StepStopped
    monkeypatch.setattr(annotation_server, "training_steps", lambda session, settings: [
        CallStep("Training fold 1 of 2", train)])
    box_every_queued_sample(session, scans)
    questions: list[str] = []
    with page_on(browser, session) as page:
        click_train(page)
        page.wait_for_function("document.getElementById('train').textContent === 'Stop training'")
        page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
        page.click("#train")
        page.wait_for_function("document.getElementById('train').textContent === 'Train'")
    assert questions == ["Stop the training? Unless every fold has finished, the model trained before is put back in "
                         "place and the folds trained in this run go to previous/ (on the first Train, with no model "
                         "before, the folds finished so far stay). Train starts again from the first step."]


class RestartedServer:
    """automedsam_annotate as a page left open in `context` sees it: stopped (Ctrl+C), then started again on the
    same port, for the same session or another."""

    def __init__(self, session: AnnotationSession, context) -> None:
        self.url, self.server, self.thread = serve(session)
        self.port = self.server.config.port
        self.context = context

    def stop(self) -> None:
        stop(self.server, self.thread)

    def start(self, session: AnnotationSession) -> None:
        """Start again, and open the address it prints (a new token) in another tab, as the user does: the page left
        open shares that tab's cookie."""
        self.url, self.server, self.thread = serve(session, port=self.port)
        tab = self.context.new_page()
        tab.goto(self.url)
        tab.close()


@contextmanager
def page_left_open(browser, session: AnnotationSession) -> Iterator[tuple]:
    """A page open on a server for `session`, its sample shown, and that server to stop and start again; the browser
    side is closed first, then the server running by then."""
    context = new_context(browser)
    served = RestartedServer(session, context)
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    try:
        opened.goto(served.url)
        opened.wait_for_function("state.sample !== null && state.plane !== null && state.loading === null")
        yield opened, served
    finally:
        context.close()
        served.stop()


def reopened(session: AnnotationSession) -> AnnotationSession:
    """The session automedsam_annotate opens on the same dataset when started again (in annotate mode)."""
    return AnnotationSession(load_raw_dataset(session.dataset.name, check_images=False), session.preprocessed_dir,
                             foundation=shared_foundation)


def status_says(page, text: str) -> None:
    page.wait_for_function(f"document.getElementById('status').textContent.includes({json.dumps(text)})",
                           timeout=15_000)


def test_a_tab_left_open_saves_nothing_into_the_dataset_served_next_and_keeps_its_boxes(browser, session, scans,
                                                                                       roots, tmp_path):
    """Its requests named the sample id only: S saved its box into Others, served next on the same port, whose
    images are named alike, and the page said "Saved"."""
    convert_folder(tmp_path / "scans", dataset_id=22, name="Others", label_names=["head", "brain"])
    plan_and_preprocess(22, shots=SHOTS, folds=2, num_workers=1, plan_only=True, progress=False)
    others = load_raw_dataset(22, check_images=False)
    with page_left_open(browser, session) as (page, served):
        sample = page.evaluate("state.sample.sample")
        served.stop()
        served.start(AnnotationSession(others, preprocessed_dataset_dir(others.name), foundation=shared_foundation))
        drag(page, (20, 20), (60, 50))
        page.keyboard.press("s")
        status_says(page, "opened from another automedsam_annotate run")
        status = page.locator("#status").text_content()
        assert "Dataset022_Others in annotate mode" in status and "reload the page" in status
        assert f"Not saved, on this page until it is reloaded: head [20, 20, 60, 50] on {sample}." in status
        assert page.evaluate("[state.dirty, state.boxes.map((entry) => entry.box)]") == [True, [[20, 20, 60, 50]]]
        page.evaluate("refreshTraining()")  # the poll says so too, the page once idle
        page.wait_for_function("document.getElementById('training').textContent.includes('reload the page')")
    assert not (roots["raw"] / "Dataset022_Others" / "boxesTr" / f"{sample}.json").exists()


def test_a_tab_left_open_through_a_restart_of_its_dataset_saves_afterwards(browser, session, scans, roots):
    """The guard against another run's pages must let a page through a plain restart (same dataset, same mode)."""
    with page_left_open(browser, session) as (page, served):
        sample = page.evaluate("state.sample.sample")
        served.stop()
        page.evaluate("refreshTraining()")  # the poll, now rather than in 10 s
        status_says(page, "automedsam_annotate is not answering (stopped?)")
        drag(page, (20, 20), (60, 50))
        served.start(reopened(session))
        page.evaluate("refreshTraining()")
        status_says(page, "automedsam_annotate answers again: S saves the boxes.")
        page.keyboard.press("s")
        page.wait_for_function("!state.dirty")
    assert saved_boxes(roots, sample) == [[20, 20, 60, 50]]


def test_a_server_stopped_during_a_run_is_not_answering_not_training(browser, session, scans, roots, monkeypatch):
    """With the server stopped, the page went on showing the run, and refused boxes because "Training is running";
    once it is started again, the run is over and the boxes drawn meanwhile are saved."""
    proceed = threading.Event()
    monkeypatch.setattr(annotation_server, "training_steps", lambda session, settings: [
        CallStep("Training fold 1 of 2", lambda output, stop: proceed.wait(TIMEOUT_MS / 1000))])
    box_every_queued_sample(session, scans)
    try:
        with page_left_open(browser, session) as (page, served):
            sample = page.evaluate("state.sample.sample")
            click_train(page)
            page.wait_for_function("document.getElementById('train').textContent === 'Stop training'")
            served.stop()
            page.wait_for_function("document.getElementById('training').textContent.startsWith("
                                   "'automedsam_annotate is not answering (stopped?)')", timeout=15_000)
            assert page.locator("#train").text_content() == "Train"
            drag(page, (2, 2), (12, 12))
            assert page.evaluate("[state.dirty, state.boxes.length]") == [True, 2]
            served.start(reopened(session))
            status_says(page, "the server may have been restarted")
            page.wait_for_function("!state.dirty")
            assert page.locator("#train").text_content() == "Train"
    finally:
        proceed.set()
    assert saved_boxes(roots, sample) == sorted([scans[sample], [2, 2, 12, 12]])


def test_a_review_page_after_a_restart_without_review_says_to_reload(browser, session, scans, roots):
    """Restarted without --review (how the review is left), A, N and P on the open review page said only "unknown
    sample ... not in this session's queue", and nothing said to reload."""
    first, _ = proposed_review(session, scans, samples=2)
    with page_left_open(browser, session) as (page, served):
        drag(page, (2, 2), (12, 12))
        served.stop()
        served.start(reopened(session))
        for key in ("a", "n"):
            page.evaluate("message('')")
            page.keyboard.press(key)
            status_says(page, "Dataset021_Scans in annotate mode")
            assert "reload the page" in page.locator("#status").text_content()
            assert page.evaluate("[state.sample.sample, state.dirty, state.boxes.length]") == [first, True, 2]
    assert splits_record(roots)["added"] == []


def test_n_leaves_a_sample_the_restarted_servers_queue_no_longer_holds_once_asked(browser, session, scans, roots):
    """Restarted in review with another ranking, the sample shown could not be saved ("unknown sample"), and N, P
    and the queue waited for that save: the page was stuck on it."""
    first, second = proposed_review(session, scans, samples=2)
    questions: list[str] = []
    answers = iter([False, True])

    def answer(dialog) -> None:
        questions.append(dialog.message)
        dialog.accept() if next(answers) else dialog.dismiss()
    with page_left_open(browser, session) as (page, served):
        drag(page, (2, 2), (12, 12))
        served.stop()
        restarted = reopened(session)  # with --review, ranked anew by another model: the first is not among them
        proposed_review(restarted, scans, samples=2)
        restarted.start_review([item for item in restarted.review if item.sample_id == second])
        served.start(restarted)
        page.on("dialog", answer)
        page.keyboard.press("n")  # asked, and told to stay
        status_says(page, "N or P leaves it (after asking)")
        assert page.evaluate("[state.sample.sample, state.dirty]") == [first, True]
        page.keyboard.press("n")
        page.wait_for_function(f"state.sample.sample === {json.dumps(second)} && state.loading === null")
    assert len(questions) == 2 and questions[0] == questions[1]
    assert questions[0].startswith(f"{first} is no longer in this session's queue: its boxes (")
    assert "head [2, 2, 12, 12]" in questions[0]
    assert not (roots["raw"] / "Dataset021_Scans" / "boxesTr" / f"{first}.json").exists()


def hold(page, key: str, seconds: float) -> None:
    """Hold `key` down: after the first press the keyboard repeats it (event.repeat), about 30 times a second."""
    page.keyboard.down(key)
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        page.wait_for_timeout(33)
        page.keyboard.down(key)
    page.keyboard.up(key)


def test_holding_x_or_pressing_it_twice_marks_only_the_sample_shown(page, scans, roots):
    """The key's repeats, and a second X as the next sample appeared, marked samples nobody had looked at."""
    page.wait_for_function("state.sample !== null && state.loading === null")
    first = page.evaluate("state.sample.sample")
    hold(page, "x", 1.5)
    page.wait_for_timeout(800)
    assert splits_record(roots)["rejected"] == [first]
    page.wait_for_function("state.loading === null")
    second = page.evaluate("state.sample.sample")
    page.keyboard.press("x")
    page.wait_for_function(f"state.sample.sample !== {json.dumps(second)} && state.loading === null")
    page.keyboard.press("x")
    status_says(page, "No structure pressed again right after the last one")
    assert splits_record(roots)["rejected"] == [first, second]
    page.wait_for_timeout(600)  # looked at: X marks it
    third = page.evaluate("state.sample.sample")
    page.keyboard.press("x")
    page.wait_for_function(f"state.sample.sample !== {json.dumps(third)} && state.loading === null")
    assert splits_record(roots)["rejected"] == [first, second, third]


def test_double_clicking_accept_or_holding_a_adds_only_the_sample_shown(browser, session, scans, roots):
    """A double-click on Accept added the next sample too, never shown; held, A added sample after sample."""
    first, second, third = proposed_review(session, scans, samples=3)
    with page_on(browser, session) as page:
        page.wait_for_function("state.sample !== null && state.loading === null")
        page.evaluate("window.shown = []; const load = loadSample; "
                      "loadSample = async (sample) => { const shown = await load(sample); "
                      "if (shown) window.shown.push(sample); return shown; }")
        page.dblclick("#accept")
        page.wait_for_function(f"state.sample.sample === {json.dumps(second)} && state.loading === null")
        page.wait_for_timeout(800)
        assert splits_record(roots)["added"] == [first]
        hold(page, "a", 1.5)
        page.wait_for_timeout(800)
        assert splits_record(roots)["added"] == [first, second]
        assert page.evaluate("[window.shown, state.sample.sample]") == [[second, third], third]


def test_resizing_a_box_stops_at_the_smallest_box_a_drag_may_draw(page, scans, roots):
    """An edge dragged onto the opposite one made a box one pixel wide, which S saved, though a drag that small
    draws no box."""
    page.wait_for_function("state.plane !== null")
    drag(page, (20, 20), (60, 50))
    smallest = page.evaluate("Math.ceil(Math.max(MIN_BOX_PX, MIN_DRAG_PX / state.view.scale))")  # tooSmallForABox
    page.mouse.move(*screen_point(page, 60.5, 35))   # the right edge, onto the left one
    page.mouse.down()
    page.mouse.move(*screen_point(page, 20.1, 35), steps=8)
    page.mouse.up()
    assert smallest >= 2 and page.evaluate("state.boxes[0].box") == [20, 20, 20 + smallest - 1, 50]
    page.keyboard.press("s")
    page.wait_for_function("!state.dirty")
    assert saved_boxes(roots, page.evaluate("state.sample.sample")) == [[20, 20, 20 + smallest - 1, 50]]


def test_a_small_box_dragged_from_its_middle_moves_whole(page, scans, roots):
    """A press in a small box's middle is near all its edges, so the drag grabs them all: it moved the box until
    resizing was held at the smallest size, when it stretched the box towards the drag instead."""
    page.wait_for_function("state.plane !== null")
    smallest = page.evaluate("Math.ceil(Math.max(MIN_BOX_PX, MIN_DRAG_PX / state.view.scale))")
    page.evaluate(f"state.boxes = [{{label: 1, box: [20, 20, {20 + smallest}, {20 + smallest}]}}]; draw()")
    middle = 20 + (smallest + 1) / 2
    grabbed = page.evaluate(f"hit({{x: {middle}, y: {middle}}})")
    assert grabbed["kind"] == "resize" and all(grabbed["edges"].values())
    page.mouse.move(*screen_point(page, middle, middle))
    page.mouse.down()
    page.mouse.move(*screen_point(page, middle + 12, middle + 7), steps=8)
    page.mouse.up()
    assert page.evaluate("state.boxes[0].box") == [32, 27, 32 + smallest, 27 + smallest]


def touch_drag(page, start: tuple[float, float], end: tuple[float, float], *, steps: int = 8) -> None:
    """A finger's drag between two screen points, sent as a touch screen sends it (the DevTools protocol's touch input
    goes through Chromium's gestures, which may take the drag for a scroll; page.touchscreen only taps)."""
    devtools = page.context.new_cdp_session(page)
    devtools.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": start[0], "y": start[1]}]})
    for step in range(1, steps + 1):
        point = {"x": start[0] + (end[0] - start[0]) * step / steps, "y": start[1] + (end[1] - start[1]) * step / steps}
        devtools.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
        page.wait_for_timeout(30)
    devtools.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    devtools.detach()
    page.wait_for_timeout(300)


def test_a_finger_draws_a_box_and_grabs_a_corner_it_covers(browser, session, scans, roots):
    """A finger's drag left a box on the screen that was not among the boxes (Chromium took the drag for a scroll and
    cancelled the pointer after its first move): S saved nothing, and the next hover dragged the box along. A corner
    had to be hit within 7 px, less than a fingertip."""
    with page_on(browser, session, has_touch=True) as page:
        page.wait_for_function("state.sample !== null && state.loading === null && state.plane !== null")
        sample = page.evaluate("state.sample.sample")
        x0, y0, x1, y1 = scans[sample]
        touch_drag(page, screen_point(page, x0, y0), screen_point(page, x1, y1))
        assert page.evaluate("[state.drag, state.boxes.map((entry) => entry.box)]") == [None, [[x0, y0, x1, y1]]]
        corner_x, corner_y = screen_point(page, x0 - 0.5, y0 - 0.5)  # the box's top left corner, then 11 px off it
        touch_drag(page, (corner_x - 11, corner_y - 11), (corner_x - 11, corner_y - 1))
        boxes = page.evaluate("state.boxes.map((entry) => entry.box)")
        assert len(boxes) == 1 and boxes[0][0] == x0 and boxes[0][1] > y0 and boxes[0][2:] == [x1, y1]
        page.keyboard.press("s")
        page.wait_for_function("!state.dirty && !state.saving")
        assert saved_boxes(roots, sample) == boxes


def test_a_cancelled_pointer_ends_the_drag_without_a_new_box_or_a_moved_one(page, scans, roots):
    """A pointer the browser cancels (a touch it took for a scroll) left its drag going: a new box was drawn but not
    among the boxes, a moved box stayed moved, and the next hover went on dragging."""
    page.wait_for_function("state.plane !== null")
    cancel = "document.getElementById('view').dispatchEvent(new PointerEvent('pointercancel', {pointerId: 1}))"
    page.mouse.move(*screen_point(page, 20, 20))
    page.mouse.down()
    page.mouse.move(*screen_point(page, 60, 50), steps=4)
    page.evaluate(cancel)
    assert page.evaluate("[state.drag, state.boxes.length]") == [None, 0]
    page.mouse.up()
    drag(page, (20, 20), (60, 50))
    page.mouse.move(*screen_point(page, 40, 35))
    page.mouse.down()
    page.mouse.move(*screen_point(page, 50, 45), steps=4)
    assert page.evaluate("state.boxes[0].box") != [20, 20, 60, 50]
    page.evaluate(cancel)
    assert page.evaluate("[state.drag, state.boxes.map((entry) => entry.box)]") == [None, [[20, 20, 60, 50]]]
    page.mouse.up()


@pytest.mark.parametrize("viewport, scale", [({"width": 640, "height": 360}, 2), ({"width": 427, "height": 240}, 3)])
def test_at_a_high_browser_zoom_the_image_keeps_half_the_window_and_the_page_scrolls(browser, session, scans, roots,
                                                                                    viewport, scale):
    """A 1280 x 720 window at 200 % browser zoom (640 x 360 CSS pixels) left the image 170 px high, at 300 % 0 px: the
    wrapped header and the help took the rest."""
    with page_on(browser, session, viewport=viewport, device_scale_factor=scale) as page:
        page.wait_for_function("state.sample !== null && state.loading === null && state.plane !== null")
        assert page.locator("#view").bounding_box()["height"] >= 0.5 * viewport["height"]
        for button in page.locator("header button:visible").all():
            button.scroll_into_view_if_needed()
            bounds = button.bounding_box()
            assert 0 <= bounds["y"] and bounds["y"] + bounds["height"] <= viewport["height"]


def volume_session(tmp_path: Path) -> AnnotationSession:
    """Unannotated toy volumes (dataset 22): samples with slices to step through."""
    unannotated_volumes(tmp_path / "vols", dataset_id=22, shots=2)
    raw = load_raw_dataset(22, check_images=False)
    return AnnotationSession(raw, preprocessed_dataset_dir(raw.name), foundation=shared_foundation)


def test_keys_are_the_pages_again_once_a_slider_was_dragged_with_the_mouse(browser, tmp_path, roots):
    """The slider dragged kept the focus: Down narrowed the window instead of showing the previous slice, and Home
    (the sample's slice) set the window 1 wide, the image black and white."""
    with page_on(browser, volume_session(tmp_path)) as page:
        page.wait_for_function("state.sample !== null && state.loading === null && state.plane !== null")
        sample_slice = page.evaluate("state.sample.slice")
        slider = page.locator("#width").bounding_box()
        page.mouse.move(slider["x"] + slider["width"] * 0.5, slider["y"] + slider["height"] / 2)
        page.mouse.down()
        page.mouse.move(slider["x"] + slider["width"] * 0.3, slider["y"] + slider["height"] / 2, steps=4)
        page.mouse.up()
        width = page.evaluate("document.getElementById('width').value")
        page.keyboard.press("ArrowDown" if sample_slice > 0 else "ArrowUp")
        page.wait_for_function(f"state.slice !== {sample_slice}", timeout=5000)
        page.keyboard.press("Home")
        page.wait_for_function(f"state.slice === {sample_slice}", timeout=5000)
        assert page.evaluate("document.getElementById('width').value") == width
        page.focus("#width")  # as Tab reaches it: the arrows are the slider's, Home still the sample's slice
        page.keyboard.press("ArrowLeft")
        width = page.evaluate("document.getElementById('width').value")
        page.keyboard.press("Home")
        assert page.evaluate("document.getElementById('width').value") == width


def test_a_outside_review_says_it_is_for_review_and_saves_nothing(page, scans, roots):
    """A in the annotating mode saved and went to the next sample, and without a box answered with review's words
    ("a sample is added with its boxes")."""
    page.wait_for_function("state.sample !== null && state.loading === null && state.plane !== null")
    sample = page.evaluate("state.sample.sample")
    drag(page, (20, 20), (60, 50))
    page.keyboard.press("a")
    page.wait_for_function("document.getElementById('status').textContent.includes('is for review')", timeout=5000)
    assert page.evaluate("[state.sample.sample, state.dirty]") == [sample, True]


def help_names(key: str) -> str:
    """How the help names a key the page's keydown handler names: Up for ArrowUp, S for s."""
    return key.removeprefix("Arrow") if key.startswith("Arrow") else key.upper() if len(key) == 1 else key


def test_the_help_and_the_guide_name_every_key_the_page_acts_on():
    """Escape, Backspace, PageUp/PageDown and the Left/Right arrows worked but neither the help under the image nor
    documentation/annotating.md named them, and Ctrl+S was only in a tooltip."""
    static = Path(annotation_server.__file__).parent / "static"
    script = (static / "annotate.js").read_text()
    actions = script[script.index("const actions = {"):]
    keys = re.findall(r"\b(\w+): ", actions[:actions.index("};")])
    html = (static / "index.html").read_text()
    help_text = re.sub(r"<[^>]+>", " ", html[html.index('<details id="keys"'):html.index("</details>")])
    guide = (Path(__file__).resolve().parents[1] / "documentation" / "annotating.md").read_text()
    assert {"Escape", "Backspace", "PageUp", "ArrowLeft", "a", "x"} <= set(keys)
    for name in [help_names(key) for key in keys] + ["Ctrl+S"]:
        assert re.search(rf"(?<![\w+]){re.escape(name)}\b", help_text), name
        assert f"`{name}`" in guide, name
