"""The labelling endpoints' logic on a real SQLite label store and real image files: candidates exclude
labelled images, every kind of bad write gets a clear 4xx and writes nothing, the token is required,
images come back as their original bytes, and the module stays torch-free."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from anomalymatch.campaign_images import setup_campaign
from anomalymatch.config import AppConfig, LabelStoreConfig, RetrainConfig
from anomalymatch.labelstore import LabelStore
from anomalymatch.retrain_state import RetrainState, state_path, write_state
from anomalymatch.users import Role
from serving.labels_api import (
    LabelsApi,
    bearer_token,
    fetch_image,
    get_candidates,
    post_labels,
    retrain_status,
)
from serving.uploads import RequestError
from tests.helpers.images import encode_png, gradient_rgb

IDS = [f"img{i}.png" for i in range(8)]


@pytest.fixture
def store(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(IDS):
        (folder / name).write_bytes(encode_png(gradient_rgb(20, 24, seed=i)))
    store = LabelStore(f"sqlite:///{tmp_path / 'labels.db'}")
    setup_campaign(store, "c", [folder])
    store.add_scores("3", IDS, np.linspace(0.05, 0.95, len(IDS)))  # img7 highest, img3/img4 nearest 0.5
    yield store
    store.close()


def _status(fn, *args, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args, **kwargs)
    return info.value


def test_candidates_by_strategy_exclude_labelled_images(store):
    top = get_candidates(store, "3", 3)
    assert top["model_version"] == "3" and top["strategy"] == "top"
    assert [c["image_id"] for c in top["candidates"]] == ["img7.png", "img6.png", "img5.png"]
    assert [c["rank"] for c in top["candidates"]] == [1, 2, 3]
    uncertain = get_candidates(store, "3", 2, "uncertain")["candidates"]
    assert {c["image_id"] for c in uncertain} == {"img3.png", "img4.png"}
    explore = get_candidates(store, "3", 8, "explore")["candidates"]
    assert sorted(c["image_id"] for c in explore) == sorted(IDS)

    post_labels(store, [{"image_id": "img7.png", "label": "anomaly"}, {"image_id": "img3.png", "label": "nominal"}])
    for strategy in ("top", "uncertain", "explore"):
        got = {c["image_id"] for c in get_candidates(store, "3", 8, strategy)["candidates"]}
        assert got == set(IDS) - {"img7.png", "img3.png"}, strategy
    empty = get_candidates(store, "99", 5)
    assert empty["candidates"] == [] and "no unlabelled images scored by model version '99'" in empty["message"]


def test_bad_candidate_requests_are_400(store):
    assert _status(get_candidates, store, "3", 0).status == 400
    assert _status(get_candidates, store, "3", 10_000).status == 400
    err = _status(get_candidates, store, "3", 5, "best")
    assert err.status == 400 and "top" in err.message and "explore" in err.message


def test_unknown_image_or_label_value_is_422_and_writes_nothing(store):
    err = _status(
        post_labels, store, [{"image_id": "img1.png", "label": "anomaly"}, {"image_id": "nope.png", "label": "anomaly"}]
    )
    assert (
        err.status == 422
        and "nope.png" in err.message
        and err.detail == [{"id": "nope.png", "reason": "unknown image id"}]
    )
    err = _status(
        post_labels, store, [{"image_id": "img1.png", "label": "anomaly"}, {"image_id": "img2.png", "label": "weird"}]
    )
    assert err.status == 422 and "'weird'" in err.message and "anomaly" in err.message
    assert err.detail[0]["value"] == "weird"
    err = _status(post_labels, store, [{"image_id": "img1.png", "label": "anomaly", "colour": "red"}])
    assert err.status == 422 and "colour" in err.message
    assert store.last_seq() == 0  # nothing of any refused batch was written

    assert _status(post_labels, store, []).status == 400
    assert _status(post_labels, store, ["img1.png"]).status == 400
    assert _status(post_labels, store, [{"image_id": "img1.png", "label": "anomaly"}] * 10_001).status == 413


def test_idempotent_posts_and_conflicting_keys(store):
    batch = [{"image_id": "img1.png", "label": "anomaly", "time": "2024-05-01T12:00:00Z", "comment": "arc"}]
    first = post_labels(store, batch, key="k1", user="ann")
    assert first["added"] == 1 and not first["replayed"] and first["last_seq"] == 1
    again = post_labels(store, batch, key="k1", user="ann")
    assert again["added"] == 0 and again["replayed"]
    err = _status(post_labels, store, [{"image_id": "img2.png", "label": "nominal"}], key="k1")
    assert err.status == 409 and "k1" in err.message
    assert store.history("img1.png")[0].user == "ann" and store.last_seq() == 1


def test_conflicting_labels_in_one_post_are_a_422_and_a_future_time_does_not_win(store):
    both = [{"image_id": "img4.png", "label": "anomaly"}, {"image_id": "img4.png", "label": "nominal"}]
    err = _status(post_labels, store, both, user="ann")
    assert err.status == 422 and "img4.png" in err.message and store.history("img4.png") == []
    post_labels(store, [{"image_id": "img4.png", "label": "anomaly", "time": "2999-01-01T00:00:00Z"}], user="ann")
    post_labels(store, [{"image_id": "img4.png", "label": "nominal"}], user="bo")
    assert store.current_labels().as_dict()["img4.png"].value == "nominal"


def test_token_rules(tmp_path, monkeypatch, store):
    assert bearer_token("Bearer s3cret") == "s3cret" and bearer_token("bearer  s3cret ") == "s3cret"
    assert bearer_token(None) == "" and bearer_token("Basic abc") == ""
    monkeypatch.setenv("MY_TOKEN_ENV", "s3cret")
    api = LabelsApi(AppConfig(data_dir=str(tmp_path), labelstore=LabelStoreConfig(token_env="MY_TOKEN_ENV")))
    assert api.require("Bearer s3cret", Role.LABELLER).role is Role.ADMIN  # the shared token: one admin
    assert _status(api.require, None, Role.LABELLER).status == 401
    assert _status(api.require, "Bearer wrong", Role.LABELLER).status == 401
    assert _status(api.require, "Bearer \u00e9t\u00e9", Role.LABELLER).status == 401  # non-ASCII: a 401, no 500
    monkeypatch.delenv("MY_TOKEN_ENV")
    err = _status(api.require, "Bearer anything", Role.LABELLER)
    assert err.status == 403  # open mode: writes are off whatever token is sent
    assert api.require("Bearer anything", Role.VIEWER) is None  # and reads ignore a token they do not need
    assert _status(api.require, "Bearer \u00e9t\u00e9", Role.LABELLER).status == 403  # non-ASCII: no 500
    err = _status(api.require, None, Role.LABELLER)
    assert err.status == 403 and "$MY_TOKEN_ENV" in err.message and "users add" in err.message
    assert api.require(None, Role.VIEWER) is None  # open mode: reads need no token
    api.close()


def test_labels_api_needs_the_token_from_env_or_file(tmp_path, monkeypatch, store):
    monkeypatch.delenv("TEST_LABEL_TOKEN", raising=False)
    token_file = tmp_path / "token.txt"
    token_file.write_text("from-file\n")
    config = AppConfig(
        data_dir=str(tmp_path), labelstore=LabelStoreConfig(token_env="TEST_LABEL_TOKEN", token_file=str(token_file))
    )
    api = LabelsApi(config)
    entry = [{"image_id": "img1.png", "label": "anomaly"}]
    assert _status(api.post, entry, "", "", None).status == 401
    assert _status(api.post, entry, "", "", "Bearer nope").status == 401
    out = api.post(entry, "", "ann", "Bearer from-file")
    assert out["added"] == 1 and out["retrain"] == "idle"
    monkeypatch.setenv("TEST_LABEL_TOKEN", "from-env")  # the environment wins over the file
    assert _status(api.post, entry, "", "", "Bearer from-file").status == 401
    assert api.post([{"image_id": "img2.png", "label": "nominal"}], "", "", "Bearer from-env")["added"] == 1
    monkeypatch.delenv("TEST_LABEL_TOKEN")
    token_file.unlink()  # a deleted token file is the operator's problem: 503 naming it, nothing stored
    err = _status(api.post, [{"image_id": "img3.png", "label": "nominal"}], "", "", "Bearer from-file")
    assert err.status == 503 and "token.txt" in err.message
    assert "img3.png" not in api.store.current_labels().ids
    api.close()


def test_images_come_back_as_original_bytes_or_png(tmp_path, store):
    from PIL import Image

    from anomalymatch.campaign_images import ImageLibrary

    library = ImageLibrary(store)
    got = fetch_image(store, library, "img2.png")
    assert got.data == (tmp_path / "images" / "img2.png").read_bytes()
    assert got.media_type == "image/png" and got.filename == "img2.png"
    png = fetch_image(store, library, "img2.png", render_png=True)
    import io

    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.data)).convert("RGB")), gradient_rgb(20, 24, seed=2))
    assert _status(fetch_image, store, library, "missing.png").status == 404
    store.register_images(["registered-elsewhere.png"])
    assert _status(fetch_image, store, library, "registered-elsewhere.png").status == 404
    library.close()


def test_raw_hdf5_rows_are_served_as_png(tmp_path, hdf5_files):
    from anomalymatch.campaign_images import ImageLibrary

    store = LabelStore(f"sqlite:///{tmp_path / 'h5.db'}")
    fixture = hdf5_files["raw_u8"]
    setup_campaign(store, "h5", [fixture.path])
    got = fetch_image(store, ImageLibrary(store), fixture.ids[1])
    assert got.media_type == "image/png" and got.filename == f"{fixture.ids[1]}.png" and got.data[:4] == b"\x89PNG"


def test_retrain_status_reads_the_watchers_state(tmp_path, store):
    cfg = RetrainConfig(min_labels=1)
    path = state_path(tmp_path)
    assert retrain_status(path, store, cfg)["status"] == "idle"
    write_state(path, RetrainState(status="failed", last_error="RuntimeError: boom", last_version="4"))
    report = retrain_status(path, store, cfg)
    assert report["status"] == "failed" and report["last_error"] == "RuntimeError: boom"
    assert report["last_version"] == "4"


def test_labels_api_is_torch_free():
    code = (
        "import sys, serving.labels_api, serving.watcher, labeling.client, labeling.cli, "
        "anomalymatch.retrain_state; "
        "bad = [m for m in ('torch', 'mlflow') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_image_endpoint_never_leaves_the_roots_and_serves_only_images(tmp_path):
    """Issue 12: a registered id that is a symlink to a file outside was served (as image/jpeg, no token);
    a campaign outside the service's data roots was served too; an undecodable file with png=true was a 500."""
    from anomalymatch.campaign_images import ImageLibrary

    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (outside / "photo.png").write_bytes(encode_png(gradient_rgb(8, 8)))
    folder = tmp_path / "archive" / "images"
    folder.mkdir(parents=True)
    (folder / "ok.png").write_bytes(encode_png(gradient_rgb(12, 12)))
    (folder / "notes.png").write_text("not an image at all")  # named like one
    (folder / "leak.jpg").symlink_to(secret)
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    store = LabelStore(f"sqlite:///{tmp_path / 'roots.db'}")
    setup_campaign(store, "c", [folder])  # the admin's CLI registers what the folder shows, links included
    assert {"leak.jpg", "linked/photo.png"} <= set(store.labelled_ids() | _registered(store))
    for library in (ImageLibrary(store), ImageLibrary(store, roots=[tmp_path / "archive"])):
        assert fetch_image(store, library, "ok.png").media_type == "image/png"
        for escaped in ("leak.jpg", "linked/photo.png"):
            assert _status(fetch_image, store, library, escaped).status == 404
        assert _status(fetch_image, store, library, "notes.png").status == 422  # not image bytes: never served
        assert _status(fetch_image, store, library, "notes.png", render_png=True).status == 422
        library.close()
    elsewhere = ImageLibrary(store, roots=[tmp_path / "somewhere-else"])  # the campaign is outside the roots
    assert _status(fetch_image, store, elsewhere, "ok.png").status == 404
    store.close()


def _registered(store):
    import sqlalchemy as sa

    with store._read() as conn:
        return set(conn.execute(sa.text("SELECT image_id FROM images")).scalars())


def test_per_user_tokens_roles_and_the_authenticated_name_on_labels(tmp_path, monkeypatch, capsys):
    """Issue 12: tokens per user with roles; only a hash is stored; labels carry the authenticated user
    (not a name sent in the body); the shared token keeps working as one admin."""
    import sqlalchemy as sa

    from anomalymatch.cli import main

    monkeypatch.delenv("ANOMALYMATCH_LABEL_TOKEN", raising=False)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(IDS):
        (folder / name).write_bytes(encode_png(gradient_rgb(20, 24, seed=i)))
    home = tmp_path / "home"
    home.mkdir()
    with LabelStore(f"sqlite:///{home / 'labels.db'}") as store:
        setup_campaign(store, "c", [folder])
        store.add_scores("3", IDS, np.linspace(0.05, 0.95, len(IDS)))
    tokens = {}
    for name, role in (("vera", "viewer"), ("lars", "labeller"), ("ada", "admin")):
        assert main(["users", "add", name, "--role", role, "--data-dir", str(home)]) == 0
        tokens[name] = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["users", "add", "vera", "--role", "admin", "--data-dir", str(home)]) == 1
    assert "exists" in capsys.readouterr().err
    api = LabelsApi(AppConfig(data_dir=str(home)))
    with api.store._read() as conn:
        stored = conn.execute(sa.text("SELECT token_sha256 FROM users")).scalars().all()
    assert len(stored) == 3 and not set(tokens.values()) & set(stored)  # hashes only, never the tokens

    def bearer(name):
        return f"Bearer {tokens[name]}"

    entry = [{"image_id": "img1.png", "label": "anomaly", "user": "mallory"}]
    assert _status(api.post, entry, "", "mallory", None).status == 401  # users exist: a token is needed
    assert _status(api.post, entry, "", "", bearer("vera")).status == 403  # a viewer may not label
    assert _status(api.require, None, Role.VIEWER).status == 401  # reads need a token now too
    assert api.require(bearer("vera"), Role.VIEWER).name == "vera"
    assert _status(api.require, bearer("lars"), Role.ADMIN).status == 403  # bulk jobs: admins only
    assert api.require(bearer("ada"), Role.ADMIN).name == "ada"
    api.post(entry, "", "mallory", bearer("lars"))
    assert [r.user for r in api.store.history("img1.png")] == ["lars"]  # who authenticated, not the body
    monkeypatch.setenv("ANOMALYMATCH_LABEL_TOKEN", "shared")
    api.post([{"image_id": "img2.png", "label": "nominal"}], "", "bo", "Bearer shared")
    assert api.store.history("img2.png")[0].user == "bo"  # the shared token: the sent name, as before
    assert main(["users", "remove", "lars", "--data-dir", str(home)]) == 0
    assert _status(api.post, entry, "", "", bearer("lars")).status == 401  # a removed user's token is dead
    assert main(["users", "list", "--data-dir", str(home)]) == 0
    assert [line.split("\t")[:2] for line in capsys.readouterr().out.strip().splitlines()[-2:]] == [
        ["ada", "admin"],
        ["vera", "viewer"],
    ]
    api.close()
