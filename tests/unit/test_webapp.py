"""The web app's API on a real label store and real image files (Starlette's test client, no browser):
roles, the session cookie, clear 4xx for bad input without side effects, undo rules, rendering, export."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from anomalymatch.campaign_images import setup_campaign
from anomalymatch.catalogue import CatalogueRow
from anomalymatch.config import AppConfig, LabelStoreConfig, RetrainConfig
from anomalymatch.users import add_user
from serving import webapp
from serving.labels_api import LabelsApi
from tests.helpers.images import encode_png, gradient_rgb

IDS = [f"img{i}.png" for i in range(30)]


@pytest.fixture
def bench(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(IDS):
        (folder / name).write_bytes(encode_png(gradient_rgb(20, 24, seed=i)))
    (folder / "broken.png").write_bytes(encode_png(gradient_rgb(8, 8, seed=0))[:30])
    config = AppConfig(
        data_dir=str(tmp_path / "home"),
        labelstore=LabelStoreConfig(),
        retrain=RetrainConfig(min_labels=5),
    )
    api = LabelsApi(config)
    setup_campaign(api.store, "c", [folder])
    api.store.add_scores("3", IDS, np.linspace(0.05, 0.95, len(IDS)))
    tokens = {n: add_user(api.store, n, r) for n, r in [("vic", "viewer"), ("ann", "labeller"), ("boss", "admin")]}
    served = SimpleNamespace(version="3", scorer=None)  # the scores are stored; nothing here runs the model
    webapp.app.state.workbench = webapp.Workbench(api, lambda: served, f"sqlite:///{tmp_path / 'none.db'}", "am")
    yield api, tokens
    webapp.app.state.workbench = None
    api.close()


SITE = Starlette(routes=[Mount("/ui", webapp.app)])  # mounted as the service mounts it


def _client(tokens: dict, user: str | None) -> TestClient:
    client = TestClient(SITE, base_url="http://testserver/ui")
    if user:
        client.headers["authorization"] = f"Bearer {tokens[user]}"
    return client


def test_sign_in_sets_a_strict_httponly_cookie_that_then_authenticates(bench) -> None:
    api, tokens = bench
    client = _client(tokens, None)
    assert client.get("/api/me").status_code == 401
    bad = client.post("/api/signin", json={"token": "nope"})
    assert bad.status_code == 401 and "unknown token" in bad.json()["error"]
    ok = client.post("/api/signin", json={"token": tokens["ann"]})
    assert ok.json() == {"user": "ann", "role": "labeller", "open": False, "shared": False}
    cookie = ok.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
    assert client.get("/api/me").json()["user"] == "ann"  # the cookie alone
    client.post("/api/signout", json={})
    assert client.get("/api/me").status_code == 401


def test_cross_site_simple_posts_and_open_mode_admin_actions_are_refused(bench, tmp_path) -> None:
    api, tokens = bench
    boss = _client(tokens, "boss")
    plain = boss.post("/api/settings", content=b'{"label_policy": "majority"}', headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and api.store.label_policy().value == "latest"
    form = _client(tokens, None).post("/api/signin", data={"token": tokens["boss"]})
    assert form.status_code == 415 and "set-cookie" not in form.headers
    from anomalymatch.users import remove_user

    for name in tokens:
        remove_user(api.store, name)  # open mode: no users, no shared token
    anyone = _client(tokens, None)
    assert anyone.get("/api/queue", params={"limit": 2}).status_code == 200  # reading is open
    refused = anyone.post("/api/settings", json={"label_policy": "majority"})
    assert refused.status_code == 403 and "signed-in admin" in refused.json()["error"]
    assert anyone.get("/api/disagreements").status_code == 403
    label = {"image_id": "img1.png", "label": "anomaly", "key": "k-open-001"}
    assert anyone.post("/api/label", json=label).status_code == 403
    assert api.store.label_policy().value == "latest" and api.store.history() == []


def test_queue_pages_thumbnails_and_renders(bench) -> None:
    api, tokens = bench
    client = _client(tokens, "vic")
    first = client.get("/api/queue", params={"limit": 10}).json()
    second = client.get("/api/queue", params={"limit": 10, "offset": 10}).json()
    assert [c["image_id"] for c in first["candidates"]] == [f"img{i}.png" for i in range(29, 19, -1)]
    assert [c["rank"] for c in second["candidates"]] == list(range(11, 21))
    thumb = client.get("/api/thumb", params={"id": "img3.png", "stretch": "asinh", "size": 16})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (24, 20)  # 16 snaps to 64: a 24x20 image is not enlarged
    plain = np.asarray(Image.open(io.BytesIO(client.get("/api/render", params={"id": "img3.png"}).content)))
    only_red = client.get("/api/render", params={"id": "img3.png", "channels": "100", "invert": "1"})
    red = np.asarray(Image.open(io.BytesIO(only_red.content)))
    assert plain.shape == red.shape == (20, 24, 3) and (red[..., 1:] == 0).all()
    assert (red[..., 0] == 255 - plain[..., 0]).all()


@pytest.mark.parametrize(
    ("path", "params", "status", "words"),
    [
        ("/api/thumb", {"id": "img1.png", "stretch": "sqrt"}, 400, "unknown stretch"),
        ("/api/render", {"id": "img1.png", "brightness": "nan"}, 400, "brightness must be from"),
        ("/api/render", {"id": "img1.png", "channels": "1x1"}, 400, "channels is three"),
        ("/api/thumb", {"id": "../../etc/passwd"}, 404, "not registered"),
        ("/api/thumb", {"id": "broken.png"}, 422, "cannot be shown"),
        ("/api/queue", {"limit": "0"}, 400, "limit must be from 1"),
        ("/api/queue", {"strategy": "best"}, 400, "unknown strategy"),
        ("/api/image", {"id": ""}, 400, "send 'id'"),
        ("/api/disagreements", {}, 403, "needs the admin role"),
    ],
)
def test_bad_requests_get_a_clear_error(bench, path, params, status, words) -> None:
    api, tokens = bench
    response = _client(tokens, "ann").get(path, params=params)
    assert response.status_code == status and words in response.json()["error"], response.text


def test_labels_are_idempotent_by_key_and_only_their_author_undoes_them(bench) -> None:
    api, tokens = bench
    ann, boss, vic = _client(tokens, "ann"), _client(tokens, "boss"), _client(tokens, "vic")
    body = {"image_id": "img29.png", "label": "anomaly", "key": "k-0001-abc", "comment": "arc"}
    assert vic.post("/api/label", json=body).status_code == 403
    first = ann.post("/api/label", json=body).json()
    again = ann.post("/api/label", json=body).json()
    assert first["stored"] and not again["stored"] and again["replayed"] and again["seq"] == first["seq"]
    assert [(r.user, r.comment) for r in api.store.history("img29.png")] == [("ann", "arc")]
    for bad, words in [
        ({**body, "key": "short"}, "send 'key'"),
        ({**body, "key": "k-0002-abc", "label": "maybe"}, "'maybe'"),
        ({**body, "key": "k-0003-abc", "image_id": "nope.png"}, "nope.png"),
    ]:
        response = ann.post("/api/label", json=bad)
        assert response.status_code in (400, 422) and words in response.json()["error"], response.text
    broken = ann.post("/api/label", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 400
    assert len(api.store.history()) == 1  # nothing else stored
    boss_label = boss.post("/api/label", json={**body, "key": "k-0004-abc", "label": "nominal"}).json()
    refused = ann.post("/api/undo", json={"seq": boss_label["seq"]})
    assert refused.status_code == 403 and "only its author" in refused.json()["error"]
    assert ann.post("/api/undo", json={"seq": first["seq"]}).json()["withdrawn"]["image_id"] == "img29.png"
    api.store.add_labels([{"image_id": "img27.png", "label": "anomaly", "user": "ann"}])  # not through the app
    kept = ann.post("/api/undo", json={"seq": api.store.last_seq()})
    assert kept.status_code == 403 and "it stays" in kept.json()["error"]
    assert boss.post("/api/undo", json={"seq": 999}).status_code == 404
    assert [r.user for r in api.store.history("img29.png")] == ["boss"]
    assert len(api.store.history("img27.png")) == 1


def test_settings_need_an_admin_and_export_lists_the_anomalies(bench) -> None:
    api, tokens = bench
    ann, boss = _client(tokens, "ann"), _client(tokens, "boss")
    assert ann.post("/api/settings", json={"label_policy": "majority"}).status_code == 403
    assert boss.post("/api/settings", json={"label_policy": "loud"}).status_code == 400
    assert boss.post("/api/settings", json={"label_policy": "majority"}).json()["label_policy"] == "majority"
    assert ann.get("/api/settings").json()["label_policy"] == "majority"
    for k, (image_id, label) in enumerate(
        [("img29.png", "anomaly"), ("img28.png", "nominal"), ("img5.png", "anomaly")]
    ):
        ann.post("/api/label", json={"image_id": image_id, "label": label, "key": f"export-{k:04d}"})
    api.store.attach_catalogue([CatalogueRow("img29.png", 150.25, -2.5, {"z": "0.3"})])
    rows = ann.get("/api/export.csv").text.splitlines()
    assert rows[0] == "image_id,label,user,time,comment,score,ra,dec,z"
    assert [r.split(",")[0] for r in rows[1:]] == ["img29.png", "img5.png"]
    assert rows[1].endswith(",150.250000,-2.500000,0.3") and rows[2].endswith(",,,")
    detail = ann.get("/api/image", params={"id": "img29.png"}).json()
    assert detail["catalogue"] == {"z": "0.3"} and "legacysurvey" in detail["links"]
    dash = ann.get("/api/dashboard").json()
    assert dash["counts"] == {"images": 31, "labels": 3, "labelled_images": 3, "anomalies": 2}
    assert dash["discovery"] == {"x": [1, 2, 3], "y": [1, 1, 2]}
    assert dash["evaluation"]["n"] == 3 and dash["evaluation"]["auroc"] == 0.5  # img5 low, img29 high
    assert dash["versions"] == {"items": []}  # nothing registered yet
