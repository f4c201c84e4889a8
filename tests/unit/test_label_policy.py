"""Several experts on one label store: the label policy picks the training label, disagreements are listed,
an expert withdraws only their own label, and gallery pages of candidates never overlap."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from anomalymatch.labels import Label
from anomalymatch.labelstore import LabelEntry, LabelStore, LabelStoreError
from anomalymatch.users import add_user
from tests.helpers.labelstore import STORE_KINDS, open_store

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
IDS = [f"img{i:03d}.png" for i in range(40)]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabelStore]:
    yield from open_store(request.param, tmp_path, IDS)


def _label(store: LabelStore, image: str, label: str, user: str, minutes: int) -> None:
    store.add_labels([LabelEntry(image, label, user, T0 + timedelta(minutes=minutes))])


def _current(store: LabelStore, policy: str | None = None) -> dict[str, tuple[str, str]]:
    table = store.current_labels(policy=policy)
    return {i: (lab.value, user) for i, lab, user in zip(table.ids, table.labels, table.extra["user"])}


def test_policies_choose_the_training_label(store: LabelStore) -> None:
    add_user(store, "boss", "admin")
    with pytest.raises(LabelStoreError, match="user 'boss' exists"):  # on PostgreSQL too
        add_user(store, "boss", "viewer")
    a, b, c = IDS[:3]
    _label(store, a, "anomaly", "ann", 0)  # a: two anomaly votes, the latest label nominal
    _label(store, a, "anomaly", "bob", 1)
    _label(store, a, "nominal", "cy", 2)
    _label(store, b, "nominal", "boss", 0)  # b: the admin said nominal, then a labeller anomaly
    _label(store, b, "anomaly", "ann", 1)
    _label(store, c, "anomaly", "ann", 0)  # c: ann changed her mind; a 1-1 tie goes to the latest
    _label(store, c, "nominal", "bob", 1)
    _label(store, c, "anomaly", "ann", 2)
    assert store.label_policy().value == "latest"
    assert _current(store) == {a: ("nominal", "cy"), b: ("anomaly", "ann"), c: ("anomaly", "ann")}
    assert _current(store, "majority") == {a: ("anomaly", "bob"), b: ("anomaly", "ann"), c: ("anomaly", "ann")}
    assert _current(store, "admin") == {a: ("nominal", "cy"), b: ("nominal", "boss"), c: ("anomaly", "ann")}
    store.set_label_policy("admin")
    assert store.label_policy().value == "admin" and _current(store)[b] == ("nominal", "boss")
    with pytest.raises(ValueError, match="unknown label policy 'loudest'"):
        store.set_label_policy("loudest")
    assert store.label_policy().value == "admin"  # unchanged by the bad request


def test_disagreements_list_each_experts_latest_label(store: LabelStore) -> None:
    a, b, c = IDS[:3]
    _label(store, a, "anomaly", "ann", 0)
    _label(store, a, "nominal", "bob", 1)
    _label(store, b, "anomaly", "ann", 2)  # one expert changing her mind is not a disagreement
    _label(store, b, "nominal", "ann", 3)
    _label(store, c, "anomaly", "ann", 4)  # disagreed, then agreed
    _label(store, c, "nominal", "bob", 5)
    _label(store, c, "anomaly", "bob", 6)
    found = store.disagreements()
    assert [(d.image_id, d.labels) for d in found] == [(a, {"ann": "anomaly", "bob": "nominal"})]
    add_user(store, "boss", "admin")
    _label(store, a, "nominal", "boss", 7)  # an admin's label settles it
    assert store.disagreements() == []
    _label(store, a, "anomaly", "ann", 8)  # until an expert disagrees again
    assert [d.labels for d in store.disagreements()] == [{"ann": "anomaly", "boss": "nominal", "bob": "nominal"}]


def test_an_expert_withdraws_only_their_own_label(store: LabelStore) -> None:
    a = IDS[0]
    _label(store, a, "nominal", "ann", 0)
    _label(store, a, "anomaly", "bob", 1)
    seq = store.last_seq()
    with pytest.raises(LabelStoreError, match="given by 'bob'"):
        store.delete_label(seq, user="ann")
    assert store.last_seq() == seq  # nothing removed
    withdrawn = store.delete_label(seq, user="bob")
    assert withdrawn.label is Label.ANOMALY and withdrawn.user == "bob"
    assert _current(store) == {a: ("nominal", "ann")}  # the earlier label stands again
    with pytest.raises(LabelStoreError, match="no label with sequence number"):
        store.delete_label(seq)


@pytest.mark.parametrize("strategy", ["top", "uncertain", "explore"])
def test_candidate_pages_cover_the_ranking_without_overlap(store: LabelStore, strategy: str) -> None:
    scores = [(k * 37 % 40) / 40 for k in range(40)]
    store.add_scores("3", IDS, scores)
    _label(store, IDS[5], "anomaly", "ann", 0)
    whole = store.select_candidates("3", 100, strategy)
    assert len(whole) == 39 and IDS[5] not in {c.image_id for c in whole}
    pages = [store.select_candidates("3", 10, strategy, offset=o) for o in range(0, 40, 10)]
    assert [c for page in pages for c in page] == whole
