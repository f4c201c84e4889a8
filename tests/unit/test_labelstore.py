"""Label store: validation writes nothing, history and current label, idempotency, CSV, queries, config.

SQLite always; set ANOMALYMATCH_TEST_POSTGRES_URL to a throwaway database (it is wiped) to run the store
tests on PostgreSQL too, e.g. postgresql+psycopg://postgres@/scratch?host=/tmp&port=5432."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from anomalymatch.config import AppConfig, LabelStoreConfig, load_config
from anomalymatch.labels import Label, LabelError, LabelTable, read_labels
from anomalymatch.labelstore import (
    BadLabelError,
    CsvFormat,
    IdempotencyConflictError,
    LabelEntry,
    LabelStore,
    LabelStoreError,
    UnknownCampaignError,
    UnknownImageError,
    resolve_labelstore_url,
)
from tests.helpers.labelstore import STORE_KINDS, open_store

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
IDS = [f"field{f}/img{i:03d}.png" for f in range(2) for i in range(10)]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabelStore]:
    yield from open_store(request.param, tmp_path, IDS)


def test_sqlite_defaults_and_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALYMATCH_HOME", str(tmp_path / "home"))
    config = load_config()
    assert config.labelstore == LabelStoreConfig() and config.to_dict()["labelstore"]["url"] is None
    assert resolve_labelstore_url(config.labelstore, config.data_path) == f"sqlite:///{tmp_path}/home/labels.db"
    with LabelStore.from_config(config.labelstore, config.data_path) as store:
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert (tmp_path / "home" / "labels.db").is_file()
    other = load_config(overrides={"labelstore.url": "sqlite:///elsewhere.db"})
    assert other.labelstore.url == "sqlite:///elsewhere.db"
    assert other.config_hash() == AppConfig().config_hash()  # where labels live is not part of the recipe
    with pytest.raises(ValueError, match="unknown key"):
        load_config(overrides={"labelstore.uri": "x"})


def test_register_images_is_idempotent(store: LabelStore) -> None:
    assert store.n_images() == 20
    assert store.register_images([IDS[0], "new.png", "new.png"]) == 1
    assert store.unknown_ids(["new.png", "ghost.png", IDS[3]]) == ["ghost.png"]


def test_unknown_image_rejected_and_nothing_written(store: LabelStore) -> None:
    store.add_labels([LabelEntry(IDS[0], "anomaly", "ann", T0)])
    batch = [
        LabelEntry(IDS[1], "anomaly", "ann"),
        LabelEntry("ghost/b.png", "nominal"),
        LabelEntry("ghost/a.png", "nominal"),
    ]
    with pytest.raises(
        UnknownImageError, match=r"2 image ids are not registered.*\['ghost/a.png', 'ghost/b.png'\]"
    ) as err:
        store.add_labels(batch, key="k-unknown")
    assert err.value.ids == ["ghost/a.png", "ghost/b.png"] and isinstance(err.value, LabelStoreError)
    assert store.last_seq() == 1 and store.labelled_ids() == {IDS[0]}
    # the key was not consumed by the rejected batch
    assert store.add_labels(batch[:1], key="k-unknown").added == 1


def test_bad_label_value_rejected_and_nothing_written(store: LabelStore) -> None:
    batch = [
        {"image_id": IDS[0], "label": "anomaly"},
        {"image_id": IDS[1], "label": "maybe"},
        {"image_id": IDS[2], "label": "1"},
        {"image_id": IDS[3], "label": "maybe"},
    ]
    with pytest.raises(BadLabelError, match=r"'maybe' \(entries \[1, 3\]\); '1' \(entries \[2\]\)") as err:
        store.add_labels(batch)
    assert err.value.values == ["maybe", "1"]
    assert isinstance(err.value, LabelError) and isinstance(err.value, LabelStoreError)
    assert store.last_seq() == 0 and store.history() == []
    for bad, message in [
        ({"image_id": IDS[0]}, "needs image_id and label"),
        ({"image_id": IDS[0], "label": "anomaly", "score": 1}, r"unknown fields \['score'\]"),
        ({"image_id": "", "label": "anomaly"}, "non-empty"),
        ({"image_id": IDS[0], "label": "anomaly", "time": "yesterday"}, "ISO 8601"),
    ]:
        with pytest.raises(BadLabelError, match=message):
            store.add_labels([bad])
    assert store.last_seq() == 0


def test_history_keeps_everything_current_is_latest(store: LabelStore) -> None:
    a, b = IDS[0], IDS[1]
    store.add_labels([LabelEntry(a, "anomaly", "ann", T0, "looks merging")])
    store.add_labels([LabelEntry(a, "nominal", "bo", T0 + timedelta(hours=1), "just a pair")])
    store.add_labels([LabelEntry(b, "nominal", "bo", T0 + timedelta(hours=2))])
    current = store.current_labels()
    assert current.as_dict() == {a: Label.NOMINAL, b: Label.NOMINAL}
    assert current.extra["user"] == ("bo", "bo") and current.extra["comment"] == ("just a pair", "")
    assert store.current_labels(with_extra=False).extra == {}
    # posted last with an earlier client time: the store's order decides, the client time is only recorded
    store.add_labels([LabelEntry(a, "anomaly", "cy", T0 + timedelta(minutes=30))])
    history = store.history(a)
    assert [(r.seq, r.label, r.user) for r in history] == [
        (1, Label.ANOMALY, "ann"),
        (2, Label.NOMINAL, "bo"),
        (4, Label.ANOMALY, "cy"),
    ]
    assert history[0].comment == "looks merging" and history[0].time == T0
    assert history[2].time == T0 + timedelta(minutes=30) and history[2].recorded_at > history[1].recorded_at
    assert store.current_labels().as_dict()[a] is Label.ANOMALY
    assert len(store.history()) == 4 and store.labelled_ids() == {a, b}


def test_a_far_future_client_time_does_not_pin_the_label(store: LabelStore) -> None:
    """Issue 12: a label sent with time 2999-01-01 used to stay current forever; a later correction wins."""
    a = IDS[0]
    store.add_labels([{"image_id": a, "label": "anomaly", "user": "ann", "time": "2999-01-01T00:00:00Z"}])
    store.add_labels([{"image_id": a, "label": "nominal", "user": "bo"}])
    assert store.current_labels().as_dict()[a] is Label.NOMINAL
    assert store.history(a)[0].time.year == 2999  # the client's time is kept for the record


def test_two_labels_for_one_image_in_one_batch_are_refused(store: LabelStore) -> None:
    a, b = IDS[0], IDS[1]
    with pytest.raises(BadLabelError, match="two different labels in one batch"):
        store.add_labels(
            [
                {"image_id": a, "label": "anomaly"},
                {"image_id": b, "label": "nominal"},
                {"image_id": a, "label": "nominal"},
            ]
        )
    assert store.last_seq() == 0  # nothing of the batch was written
    assert store.add_labels([{"image_id": a, "label": "anomaly"}, {"image_id": a, "label": "anomaly"}]).added == 1


def test_idempotent_reposts(store: LabelStore) -> None:
    batch = [LabelEntry(IDS[0], "anomaly", "ann"), LabelEntry(IDS[1], "normal", "ann")]
    first = store.add_labels(batch, key="client-42")
    assert (first.added, first.skipped, first.replayed, first.last_seq) == (2, 0, False, 2)
    again = store.add_labels(batch, key="client-42")
    assert (again.added, again.replayed) == (0, True)
    with pytest.raises(IdempotencyConflictError, match="client-42.*different batch"):
        store.add_labels(batch[:1], key="client-42")
    # without a key, an identical (image, label, user, time) event is stored once, also within a batch
    timed = [
        LabelEntry(IDS[2], "anomaly", "bo", T0),
        {"image_id": IDS[2], "label": "ANOMALY", "user": "bo", "time": "2024-05-01T14:00:00+02:00"},
    ]
    assert store.add_labels(timed).added == 1
    result = store.add_labels(timed + [LabelEntry(IDS[3], "nominal", "bo", T0)])
    assert (result.added, result.skipped) == (1, 2)
    assert len(store.history()) == 4 and store.last_seq() == store.history()[-1].seq  # PostgreSQL: gaps


def test_labels_since_sequence_and_time(store: LabelStore) -> None:
    assert store.last_seq() == 0 and store.count_labels_since(0) == 0
    store.add_labels([LabelEntry(i, "nominal") for i in IDS[:3]])
    mark = store.last_seq()
    between = datetime.now(UTC)
    store.add_labels([LabelEntry(i, "anomaly", "bo") for i in IDS[3:5]])
    assert mark == 3 and store.count_labels_since(mark) == 2
    assert [r.image_id for r in store.labels_since(mark)] == IDS[3:5]
    assert store.count_labels_since(between) == 2 and len(store.labels_since()) == 5


def test_reference_csv_round_trip(store: LabelStore, tmp_path: Path) -> None:
    # the reference tool writes basenames; they resolve to the registered ids when unique
    reference = tmp_path / "labeled_data.csv"
    reference.write_text("filename,label\nimg001.png,anomaly\nfield0/img002.png,normal\nfield1/img003.png,normal\n")
    with pytest.raises(BadLabelError, match="several source images"):  # img001.png is in both fields
        store.import_csv(reference)
    store.register_images(["deep/sky/solo.png"])
    reference.write_text("filename,label\nfield0/img001.png,anomaly\nsolo.png,normal\nfield1/img003.png,normal\n")
    result = store.import_csv(reference, user="ref")
    assert result.added == 3 and store.import_csv(reference, user="ref").replayed
    exported = store.export_csv(tmp_path / "out" / "labeled_data.csv")
    assert exported.read_text() == (
        "filename,label\ndeep/sky/solo.png,normal\nfield0/img001.png,anomaly\nfield1/img003.png,normal\n"
    )
    assert read_labels(exported) == store.current_labels(with_extra=False)
    with LabelStore(f"sqlite:///{tmp_path / 'copy.db'}") as copy:
        copy.register_images([*IDS, "deep/sky/solo.png"])
        copy.import_csv(exported)
        assert copy.current_labels(with_extra=False) == store.current_labels(with_extra=False)
    # unchanged rows are skipped when a grown file is imported again
    reference.write_text(reference.read_text() + "field1/img004.png,anomaly\n")
    assert (store.import_csv(reference, user="ref").added, len(store.history())) == (1, 4)


def test_own_csv_format_round_trip(store: LabelStore, tmp_path: Path) -> None:
    store.add_labels(
        [
            LabelEntry(IDS[0], "anomaly", "ann", T0, "arc, faint"),
            LabelEntry(IDS[1], "nominal", "bo", T0 + timedelta(seconds=1)),
        ]
    )
    path = store.export_csv(tmp_path / "ours.csv", CsvFormat.ANOMALYMATCH)
    assert path.read_text().splitlines()[:2] == [
        "filename,label,user,time,comment",
        f'{IDS[0]},anomaly,ann,2024-05-01T12:00:00.000000Z,"arc, faint"',
    ]
    assert store.import_csv(path, key="again").added == 0  # same (image, label, user, time): no duplicates
    with LabelStore(f"sqlite:///{tmp_path / 'copy.db'}") as copy:
        copy.register_images(IDS)
        assert copy.import_csv(path).added == 2
        assert [(r.image_id, r.user, r.time, r.comment) for r in copy.history()] == [
            (r.image_id, r.user, r.time, r.comment) for r in store.history()
        ]
    history = store.export_history(tmp_path / "history.csv").read_text().splitlines()
    assert history[0] == "seq,filename,label,user,time,comment,recorded_at,batch_key" and len(history) == 3


def test_import_errors_write_nothing(store: LabelStore, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,label\nfield0/img001.png,anomaly\nfield0/img002.png,maybe\n")
    with pytest.raises(BadLabelError, match="'maybe' in rows \\[3\\]"):
        store.import_csv(bad)
    bad.write_text("filename,label\nfield0/img001.png,anomaly\nghost.png,normal\n")
    with pytest.raises(UnknownImageError, match=r"\['ghost.png'\]"):
        store.import_csv(bad)
    bad.write_text("filename,class\nfield0/img001.png,4\n")
    assert store.history() == []
    assert store.import_csv(bad, label_column="class", label_map={"4": "anomaly"}).added == 1


def test_candidates(store: LabelStore, tmp_path: Path) -> None:
    scores = np.linspace(0.0, 0.95, len(IDS))  # IDS[-1] scores highest
    store.add_scores("3", IDS, scores)
    store.add_scores("3", IDS[:1], [0.51])  # a re-score replaces
    store.add_labels([LabelEntry(IDS[-1], "anomaly")])
    top = store.select_candidates("3", 3)
    assert [c.image_id for c in top] == [IDS[-2], IDS[-3], IDS[-4]] and top[0].score == pytest.approx(scores[-2])
    assert [c.image_id for c in store.select_candidates("3", 2, "uncertain")] == [IDS[10], IDS[0]]
    explore = store.select_candidates("3", 5, "explore", seed=7)
    assert explore == store.select_candidates("3", 5, "explore", seed=7) != store.select_candidates("3", 5, "explore")
    assert len({c.image_id for c in explore}) == 5 and IDS[-1] not in {c.image_id for c in explore}
    assert len(store.select_candidates("3", 100, "explore")) == len(IDS) - 1
    assert store.select_candidates("unknown-version", 5) == []
    with pytest.raises(ValueError):
        store.select_candidates("3", 5, "random")
    with pytest.raises(LabelStoreError, match="finite"):
        store.add_scores("4", IDS[:2], [0.1, float("nan")])

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image_id": IDS, "score": scores[::-1]}), tmp_path / "scores.parquet")
    assert store.import_scores_parquet(tmp_path / "scores.parquet", "4") == len(IDS)
    assert store.select_candidates("4", 1)[0].image_id == IDS[0]
    with pytest.raises(LabelStoreError, match="needs columns"):
        store.import_scores_parquet(tmp_path / "scores.parquet", "4", id_column="id")


def test_campaigns(store: LabelStore) -> None:
    made = store.create_campaign("gz1-merger", {"picks": 10}, notes="first pass")
    assert made.config == {"picks": 10} and made.notes == "first pass" and made.created.tzinfo is not None
    with pytest.raises(LabelStoreError, match="already exists"):
        store.create_campaign("gz1-merger")
    assert store.create_campaign("gz1-merger", exist_ok=True) == made
    assert store.register_images(["c/1.png"], campaign="gz1-merger") == 1
    assert [c.name for c in store.list_campaigns()] == ["gz1-merger"]
    with pytest.raises(UnknownCampaignError, match="no campaign 'nope'"):
        store.get_campaign("nope")
    with pytest.raises(UnknownCampaignError):
        store.register_images(["c/2.png"], campaign="nope")


def test_training_table_is_a_label_table(store: LabelStore) -> None:
    store.add_labels([LabelEntry(i, "anomaly" if n % 4 == 0 else "nominal") for n, i in enumerate(IDS)])
    table = store.current_labels()
    assert isinstance(table, LabelTable) and table.ids == tuple(sorted(IDS)) and table.n_anomalies == 5
    assert table.sha256() == LabelTable.from_pairs(zip(table.ids, table.labels)).sha256()


def test_pending_since_counts_new_labels_and_finds_the_oldest(store: LabelStore) -> None:
    assert store.pending_since(0) == (0, None)
    store.add_labels([LabelEntry(IDS[0], "anomaly", "ann")])
    first = store.history()[0].recorded_at
    store.add_labels([LabelEntry(IDS[1], "nominal", "bo"), LabelEntry(IDS[2], "nominal", "bo")])
    assert store.pending_since(0) == (3, first)
    n, oldest = store.pending_since(1)
    assert n == 2 and oldest == store.history()[1].recorded_at and oldest >= first
    assert store.pending_since(store.last_seq()) == (0, None)
