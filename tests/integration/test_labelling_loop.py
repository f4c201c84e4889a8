"""The labelling loop end to end on embedded defaults (SQLite label store and MLflow store, local artifacts,
CPU): a real ``bentoml serve`` and a real ``anomalymatch retrain --watch`` process. Pull 20 candidates with
the CLI, label them, push them; the watcher trains a new version from the champion, registers, gates and
promotes it; the service serves it; the posted labels are in the new run's labels artifact."""

from __future__ import annotations

import csv
import time
from dataclasses import replace

import pytest

from anomalymatch.campaign_images import setup_campaign
from anomalymatch.cli import main as cli
from anomalymatch.labelstore import LabelEntry, LabelStore
from labeling.client import Client, ServiceError
from serving import client as scoring
from serving.launch import start_service
from serving.watcher import start_watcher, stop_watcher
from tests.helpers.retrain import pick, tiny_config, write_campaign_images

pytestmark = pytest.mark.slow
TOKEN = "e2e-s3cret"


def _wait(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_pull_label_push_retrain_promote_serve(tmp_path, monkeypatch, capsys):
    import mlflow

    from training.retrain import RetrainWatcher

    truth = write_campaign_images(tmp_path / "images", 40)
    config = tiny_config(tmp_path, min_labels=20, poll_s=1.0)
    config = config.replace(serving=replace(config.serving, port=0, reload_interval_s=0.5))
    store = LabelStore.from_config(config.labelstore, config.data_path)
    setup_campaign(store, "e2e", [tmp_path / "images"], config.preprocess)
    first = pick(truth, 1, True, 1) + pick(truth, 1, False, 2) + pick(truth, 0, True, 2) + pick(truth, 0, False, 3)
    store.add_labels([LabelEntry(i, "anomaly" if truth[i] else "nominal", "seed") for i in first], key="seed")
    boot = RetrainWatcher(config, store).run_once(force=True)  # the first champion
    assert boot.version == "1" and boot.promoted, boot

    monkeypatch.setenv(config.labelstore.token_env, TOKEN)
    with start_service(config, log_path=tmp_path / "serve.log") as svc:
        watcher = start_watcher(config, tmp_path / "watcher.log")
        try:
            _run_loop(svc.url, config, store, truth, first, tmp_path, capsys, mlflow)
        except BaseException:
            print("--- watcher log ---\n", (tmp_path / "watcher.log").read_text()[-6000:])
            print("--- service log ---\n", svc.log()[-4000:])
            raise
        finally:
            stop_watcher(watcher)


def _run_loop(url, config, store, truth, first, tmp_path, capsys, mlflow):
    with Client(url, token=TOKEN) as client:
        assert client.status()["status"] == "idle" and client.status()["last_version"] == "1"

        # Bad writes get a clear 4xx; nothing is stored.
        some = [i for i in truth if i not in first][0]
        for token, status in (("", 401), ("wrong", 401)):
            with pytest.raises(ServiceError) as err:
                Client(url, token=token).label({some: "anomaly"})
            assert err.value.status == status
        with pytest.raises(ServiceError) as err:
            client.label({"no-such-image.png": "anomaly"})
        assert err.value.status == 422 and "no-such-image.png" in str(err.value)
        with pytest.raises(ServiceError) as err:
            client.label([{"image_id": some, "label": "maybe"}])
        assert err.value.status == 422 and "'maybe'" in str(err.value)
        assert store.last_seq() == len(first)
        with pytest.raises(ServiceError) as err:
            client.image("no-such-image.png")
        assert err.value.status == 404
        with pytest.raises(ServiceError) as err:
            client.candidates(n=5, strategy="best")
        assert err.value.status == 400 and "explore" in str(err.value)

        # Pull 20 candidates with the CLI: images plus a sheet; none of them is labelled yet.
        out = tmp_path / "sheet"
        assert cli(["label", "--url", url, "pull", "--n", "20", "--out", str(out)]) == 0
        with (out / "labels.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 20 and not {r["filename"] for r in rows} & set(first)
        for row in rows:
            assert (out / row["local_file"]).read_bytes() == (tmp_path / "images" / row["filename"]).read_bytes()
            row["label"] = "anomaly" if truth[row["filename"]] else "nominal"
        with (out / "labels.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        capsys.readouterr()
        assert cli(["label", "--url", url, "push", str(out / "labels.csv"), "--user", "expert"]) == 0
        assert "20 label(s) stored" in capsys.readouterr().out
        assert cli(["label", "--url", url, "push", str(out / "labels.csv"), "--user", "expert"]) == 0
        assert "already pushed" in capsys.readouterr().out  # idempotent re-push
        posted = {r["filename"]: r["label"] for r in rows}

        # The watcher trains, registers, gates and promotes version 2; the service swaps to it.
        status = _wait(
            lambda: (s := client.status())["last_version"] == "2" and s["status"] != "running" and s,
            420,
            "the watcher to retrain",
        )
        assert status["status"] == "idle" and status["last_promoted"], status
        assert status["trained_seq"] == len(first) + 20 and not status["last_error"]
        _wait(lambda: scoring.info(url)["model_version"] == "2", 60, "the service to serve version 2", 0.5)
        fresh = client.candidates(n=20)
        assert fresh and {r["model_version"] for r in fresh} == {"2"}
        assert not {r["image_id"] for r in fresh} & (set(first) | set(posted))

        # The notebook widget on the same service: keys post each label at once; curves from a test set.
        from labeling.widget import LabelWidget

        test_set = {i: "anomaly" if truth[i] else "nominal" for i in sorted(truth)[:8]}  # both classes
        widget = LabelWidget(client, n=3, user="notebook", test_set=test_set)
        assert bytes(widget.roc.value).startswith(b"\x89PNG") and bytes(widget.pr.value).startswith(b"\x89PNG")
        start = widget.current["image_id"]
        shown = widget.image.value
        widget.contrast.value = 3.0
        assert widget.image.value != shown  # the controls redraw the image
        widget.saliency.value = True  # the service's occlusion map of the served model
        assert bytes(widget.image.value).startswith(b"\x89PNG") and widget.image.value != shown
        widget.saliency.value = False
        widget.key("s"), widget.key("b")
        assert widget.current["image_id"] == start
        widget.key("a"), widget.key("x"), widget.press("nominal")
        second = fresh[1]["image_id"]
        assert widget.decisions == {start: "anomaly", second: "nominal"}
        stored = {r.image_id: (r.label.value, r.user) for r in store.labels_since(len(first) + 20)}
        assert stored == {start: ("anomaly", "notebook"), second: ("nominal", "notebook")}

    mlflow_client = mlflow.MlflowClient(config.tracking.tracking_uri)
    mv = mlflow_client.get_model_version("anomalymatch", "2")
    assert str(mlflow_client.get_registered_model("anomalymatch").aliases["champion"]) == "2"
    assert mv.tags["parent_version"] == "1"
    local = mlflow_client.download_artifacts(mv.run_id, "labels/labels.csv", str(tmp_path / "artifact"))
    with open(local, newline="") as fh:
        logged = {row["filename"]: row["label"] for row in csv.DictReader(fh)}
    assert {k: logged.get(k) for k in posted} == posted
