"""The tests' PostgreSQL switch: ``ANOMALYMATCH_TEST_POSTGRES_URL`` names a throwaway database
(``wipe_postgres`` empties it) to run the label-store and MLflow-server tests on PostgreSQL as well as SQLite;
``.ci/run`` starts one for the test run."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import sqlalchemy as sa

POSTGRES_URL = os.environ.get("ANOMALYMATCH_TEST_POSTGRES_URL")
#: The label-store kinds a store fixture runs on: ``params=STORE_KINDS``.
STORE_KINDS = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])


def wipe_postgres(url: str) -> str:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()
    return url


def open_store(kind: str, tmp_path: Path, ids: Sequence[str]) -> Iterator:
    """A fresh label store of ``kind`` (``STORE_KINDS``) with ``ids`` registered, closed afterwards: the body
    of the store fixtures."""
    from anomalymatch.labelstore import LabelStore

    url = wipe_postgres(POSTGRES_URL) if kind == "postgresql" else f"sqlite:///{tmp_path / 'labels.db'}"
    with LabelStore(url) as store:
        store.register_images(ids)
        yield store
