"""The labelling web app in a real browser: Playwright driving Debian's Chromium (headless) against a real
``bentoml serve`` with a small trained model, a real label store and, for the retrain test, a real watcher.

Screenshots of the queue, the detail view, the dashboard and the admin page go to ``test-artifacts/``
(``ANOMALYMATCH_TEST_ARTIFACTS`` overrides it)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from anomalymatch.campaign_images import setup_campaign
from anomalymatch.labelstore import LabelEntry, LabelStore
from anomalymatch.users import add_user
from serving.launch import start_service
from serving.watcher import start_watcher, stop_watcher
from tests.helpers.retrain import pick, tiny_config, write_campaign_images

CHROMIUM = os.environ.get("ANOMALYMATCH_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
MIN_LABELS = 25
ARTIFACTS = Path(os.environ.get("ANOMALYMATCH_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


class World:
    def __init__(self, root: Path) -> None:
        self.truth = write_campaign_images(root / "images", 80)
        config = tiny_config(root, min_labels=MIN_LABELS, poll_s=1.0)
        self.config = config.replace(serving=replace(config.serving, port=0, reload_interval_s=0.5))
        self.store = LabelStore.from_config(self.config.labelstore, self.config.data_path)
        setup_campaign(self.store, "web", [root / "images"], self.config.preprocess)
        t = self.truth
        self.seed = pick(t, 1, True, 1) + pick(t, 1, False, 2) + pick(t, 0, True, 2) + pick(t, 0, False, 3)
        self.store.add_labels([LabelEntry(i, self.label_of(i), "seed") for i in self.seed], key="seed")
        self.tokens = {n: add_user(self.store, n, r) for n, r in [("ann", "labeller"), ("bob", "labeller")]}
        self.tokens["boss"] = add_user(self.store, "boss", "admin")
        self.root = root
        self.url = ""

    def label_of(self, image_id: str) -> str:
        return "anomaly" if self.truth[image_id] else "nominal"

    def labels_by(self, user: str) -> list:
        return [r for r in self.store.history() if r.user == user]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from training.retrain import RetrainWatcher

    w = World(tmp_path_factory.mktemp("webapp"))
    boot = RetrainWatcher(w.config, w.store).run_once(force=True)  # the first champion and its scores
    assert boot.version == "1" and boot.promoted, boot
    with start_service(w.config, log_path=w.root / "serve.log") as svc:
        w.url = svc.url
        yield w
    w.store.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _signed_in(browser, world: World, user: str):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(world.url + "/ui/")
    page.fill("#token", world.tokens[user])
    page.click("#signin-form button")
    page.wait_for_selector(".tile.sel")
    ERRORS[page] = errors
    return context, page


ERRORS: dict = {}  # page -> uncaught JavaScript errors


def _selected(page) -> str:
    return page.get_attribute(".tile.sel", "data-id")


def _wait_sent(page, timeout_ms: int = 20_000) -> None:
    page.wait_for_selector("#pending", state="hidden", timeout=timeout_ms)


def test_label_twenty_with_the_keyboard_and_undo_one(browser, world: World) -> None:
    context, page = _signed_in(browser, world, "ann")
    unlabelled = len(world.truth) - len(world.seed)
    assert page.locator(".tile").count() == 60  # one page; scrolling to its end fetches the rest
    page.eval_on_selector("#grid-wrap", "e => e.scrollTop = e.scrollHeight")
    page.wait_for_function(f"() => document.querySelectorAll('.tile').length === {unlabelled}")
    page.eval_on_selector("#grid-wrap", "e => e.scrollTop = 0")
    page.wait_for_timeout(300)  # thumbnails painted for the screenshot
    page.screenshot(path=str(ARTIFACTS / "queue.png"))
    given: list[tuple[str, str]] = []
    for _ in range(20):
        image_id = _selected(page)
        label = world.label_of(image_id)
        page.keyboard.press("a" if label == "anomaly" else "n")
        page.wait_for_function("id => document.querySelector('.tile.sel')?.dataset.id !== id", arg=image_id)
        given.append((image_id, label))
    assert len({i for i, _ in given}) == 20 and not {i for i, _ in given} & set(world.seed)
    _wait_sent(page)
    page.keyboard.press("u")  # the last label comes back to the queue, selected
    page.wait_for_function("id => document.querySelector('.tile.sel')?.dataset.id === id", arg=given[-1][0])
    assert page.text_content("#counter") == "19 labels"
    stored = world.labels_by("ann")
    assert [(r.image_id, r.label.value) for r in stored] == given[:19]
    assert page.locator(".tile.sel").count() == 1
    page.keyboard.press("s")  # skip: nothing stored
    page.keyboard.press("ArrowLeft")
    assert _selected(page) == given[-1][0] and len(world.labels_by("ann")) == 19
    page.keyboard.press("c")  # a comment travels with the label of this image
    page.fill("#comment", "bright square, edge of field")
    page.keyboard.press("Enter")
    page.wait_for_selector("#info:has-text('bright square')")
    page.screenshot(path=str(ARTIFACTS / "detail.png"))
    page.keyboard.press("a" if given[-1][1] == "anomaly" else "n")
    _wait_sent(page)
    last = world.labels_by("ann")[-1]
    assert (last.image_id, last.label.value, last.comment) == (*given[-1], "bright square, edge of field")
    assert page.text_content("#counter") == "20 labels" and not ERRORS[page]
    context.close()


def test_two_experts_disagree_and_the_admin_sees_it(browser, world: World) -> None:
    ann, page_a = _signed_in(browser, world, "ann")
    bob, page_b = _signed_in(browser, world, "bob")
    target = _selected(page_a)
    assert _selected(page_b) == target  # both see the same top of the ranking
    page_a.keyboard.press("a")
    page_b.keyboard.press("n")
    _wait_sent(page_a), _wait_sent(page_b)
    boss, page = _signed_in(browser, world, "boss")
    page.goto(world.url + "/ui/#admin")
    row = page.wait_for_selector(f'.dis[data-id="{target}"]')
    text = row.text_content()
    assert "ann: anomaly" in text and "bob: nominal" in text
    page.screenshot(path=str(ARTIFACTS / "admin.png"))
    page.select_option("#policy", "admin")  # the admin's label decides, then the admin settles it
    page.wait_for_selector("#policy-status:has-text('saved: admin')")
    truth = world.label_of(target)
    row.query_selector(f'[data-settle="{truth}"]').click()
    page.wait_for_selector(f'.dis[data-id="{target}"]', state="detached")  # the admin's label settles it
    current = world.store.current_labels()
    assert dict(zip(current.ids, (lab.value for lab in current.labels)))[target] == truth
    assert world.store.label_policy().value == "admin"
    world.store.set_label_policy("latest")
    for c in (ann, bob, boss):
        c.close()


def test_a_label_post_lost_on_the_network_is_retried_and_stored_once(browser, world: World) -> None:
    context, page = _signed_in(browser, world, "bob")
    failures: list[str] = []

    def flaky(route):
        if not failures:  # the first post reaches the server, but its answer is lost
            route.fetch()
            failures.append(route.request.post_data)
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route("**/ui/api/label", flaky)
    image_id = _selected(page)
    before = len(world.labels_by("bob"))
    page.keyboard.press("a" if world.label_of(image_id) == "anomaly" else "n")
    _wait_sent(page)
    assert failures and image_id in failures[0]
    mine = [r for r in world.labels_by("bob") if r.image_id == image_id]
    assert len(mine) == 1 and len(world.labels_by("bob")) == before + 1
    assert page.text_content("#counter") == "1 label"
    context.close()


def test_enough_labels_retrain_and_the_dashboard_follows_without_reload(browser, world: World) -> None:
    watcher = start_watcher(world.config, world.root / "watcher.log")
    try:
        dash_ctx, dash = _signed_in(browser, world, "boss")
        dash.goto(world.url + "/ui/#dashboard")
        dash.wait_for_selector("#d-status")
        assert dash.text_content("#d-model") == "1"
        context, page = _signed_in(browser, world, "ann")
        status = world.store.count_labels_since(len(world.seed))
        for _ in range(max(0, MIN_LABELS - status)):
            image_id = _selected(page)
            page.keyboard.press("a" if world.label_of(image_id) == "anomaly" else "n")
            page.wait_for_function("id => document.querySelector('.tile.sel')?.dataset.id !== id", arg=image_id)
        _wait_sent(page)
        dash.wait_for_selector("#d-status:has-text('running')", timeout=60_000)
        dash.wait_for_selector("#d-model:has-text('2')", timeout=240_000)
        assert dash.text_content("#d-status") in ("idle", "queued", "running")
        dash.wait_for_selector("#d-versions tr:has(td:first-child:text-is('2')):has-text('champion')")  # lineage too
        page.wait_for_selector("#banner:has-text('Model version 2')", timeout=30_000)  # offers the new ranking
        dash.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        assert not ERRORS[dash] and not ERRORS[page]
        context.close(), dash_ctx.close()
    except BaseException:
        log = world.root / "watcher.log"
        print("--- watcher log ---\n", log.read_text()[-4000:] if log.exists() else "(none)")
        raise
    finally:
        stop_watcher(watcher)


def test_more_like_this_by_id_by_upload_and_as_a_queue(browser, world: World) -> None:
    import httpx

    headers = {"authorization": f"Bearer {world.tokens['ann']}"}
    anomaly = next(i for i in world.seed if world.truth[i])
    version = httpx.post(f"{world.url}/info", json={}).json()["model_version"]
    by_id = httpx.post(f"{world.url}/similar", json={"image_id": anomaly, "k": 10}, headers=headers).json()
    assert by_id["model_version"] == version and len(by_id["candidates"]) == 10
    assert anomaly not in {c["image_id"] for c in by_id["candidates"]}
    sims = [c["similarity"] for c in by_id["candidates"]]
    assert sims == sorted(sims, reverse=True)
    upload = (world.root / "images" / anomaly).read_bytes()
    by_upload = httpx.post(
        f"{world.url}/similar_upload",
        files={"images": (anomaly, upload, "image/png")},
        data={"k": "3"},
        headers=headers,
    ).json()
    assert by_upload["candidates"][0]["image_id"] == anomaly  # the archive's copy of the uploaded file
    assert by_upload["candidates"][0]["similarity"] > 0.999
    missing = httpx.post(f"{world.url}/similar", json={"image_id": "nope.png"}, headers=headers)
    assert missing.status_code == 404 and "no stored embedding" in missing.json()["error"]
    assert httpx.post(f"{world.url}/similar", json={"image_id": anomaly}).status_code == 401

    context, page = _signed_in(browser, world, "ann")
    page.select_option("#strategy", "similar")
    page.wait_for_selector(".tile .score:has-text('sim')")
    shown = page.locator(".tile").evaluate_all("tiles => tiles.map(t => t.dataset.id)")
    assert shown and not set(shown) & world.store.labelled_ids()
    context.close()


def test_why_this_score_from_the_service_and_in_the_detail_view(browser, world: World) -> None:
    import io

    import httpx
    from PIL import Image

    headers = {"authorization": f"Bearer {world.tokens['ann']}"}
    image_id = next(i for i in world.truth if world.truth[i])
    response = httpx.post(f"{world.url}/saliency", json={"image_id": image_id}, headers=headers)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (40, 40)  # over the image at its own size
    bad = httpx.post(f"{world.url}/saliency", json={"image_id": image_id, "stretch": "sqrt"}, headers=headers)
    assert bad.status_code == 400 and "unknown stretch" in bad.json()["error"]

    context, page = _signed_in(browser, world, "ann")
    page.check("#saliency")
    page.wait_for_function(
        "() => { const b = document.querySelector('#big'); "
        "return b.src.includes('api/saliency') && b.complete && b.naturalWidth > 0 }"
    )
    page.screenshot(path=str(ARTIFACTS / "saliency.png"))
    assert not ERRORS[page]
    context.close()
