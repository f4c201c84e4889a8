"""The tests' PostgreSQL switch: ``ANOMALYMATCH_TEST_POSTGRES_URL`` names a throwaway database
(``wipe_postgres`` empties it) to run the label-store and MLflow-server tests on PostgreSQL as well as SQLite;
``.ci/run`` starts one for the test run."""

from __future__ import annotations

import os

import sqlalchemy as sa

POSTGRES_URL = os.environ.get("ANOMALYMATCH_TEST_POSTGRES_URL")


def wipe_postgres(url: str) -> str:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()
    return url
