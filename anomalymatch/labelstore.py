"""The label store: append-only label history (an expert may withdraw a label just given in the web app),
known images, scores per model version, campaigns.

SQLAlchemy 2.x Core on SQLite by default (WAL, ``synchronous=FULL``, busy timeout, ``BEGIN IMMEDIATE`` for
every write so concurrent writer processes queue instead of failing), PostgreSQL by URL
(``postgresql+psycopg://...``). Torch- and mlflow-free.

- Labels are never updated or deleted: each post appends rows; the current label of an image is its row
  with the highest sequence number, i.e. the one the store received last, so a later correction always
  wins. ``recorded_at`` is the store's own time; ``time`` is the time the client gave (kept for the
  record, never used to order; the store's time when none was given). Two different labels for one
  image in one posted batch are refused.
- Writes are transactional and idempotent: a batch either lands whole or not at all; a re-posted batch
  with the same idempotency ``key`` is a no-op (a different batch under a used key is refused), and an
  identical (image, label, user, time) event is stored once.
- Only registered images can be labelled (``register_images``); unknown ids or label values raise
  ``UnknownImageError`` / ``BadLabelError`` naming them, and nothing is written.
- Times are stored as fixed-width UTC ISO strings (``2024-05-01T12:00:00.000000Z``): exact, sortable and
  identical on SQLite and PostgreSQL. Naive datetimes are read as UTC.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import json
import time as _time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from anomalymatch.catalogue import CatalogueRow
from anomalymatch.config import LabelStoreConfig
from anomalymatch.label_policy import Disagreement, LabelPolicy, choose, disagreements, parse_policy
from anomalymatch.labels import Label, LabelError, LabelTable, _basename, parse_label, read_labels

SCHEMA_VERSION = 1
_CHUNK = 500  # ids per IN (...) list; well under SQLite's variable limit
_T = TypeVar("_T")


class LabelStoreError(Exception):
    """A label store request was refused; the message says what to fix. Nothing was written."""


class UnknownImageError(LabelStoreError, LookupError):
    """Labels name image ids the store does not know; ``ids`` holds them (sorted)."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.ids = sorted(ids)
        super().__init__(
            f"{len(self.ids)} image ids are not registered in the label store, e.g. {self.ids[:10]}; "
            "register the campaign's images first (LabelStore.register_images) or fix the ids; nothing was written"
        )


class BadLabelError(LabelStoreError, LabelError):
    """A label value or entry is invalid (also a ``LabelError``); ``values`` holds the bad label values."""

    def __init__(self, message: str, values: Iterable[str] = ()) -> None:
        self.values = list(values)
        super().__init__(message)


class IdempotencyConflictError(LabelStoreError):
    """An idempotency key was reused for a different batch."""


class UnknownCampaignError(LabelStoreError, LookupError):
    """No campaign of that name."""


class CsvFormat(str, Enum):
    """``reference``: the reference tool's labeled_data.csv (filename,label; anomaly/normal).
    ``anomalymatch``: filename,label,user,time,comment (anomaly/nominal), read back by ``read_labels``."""

    REFERENCE = "reference"
    ANOMALYMATCH = "anomalymatch"


class CandidateStrategy(str, Enum):
    """``top``: highest scores; ``uncertain``: scores nearest 0.5; ``explore``: seeded random unlabelled (a
    fixed shuffle, so successive pages do not overlap)."""

    TOP = "top"
    UNCERTAIN = "uncertain"
    EXPLORE = "explore"


@dataclass(frozen=True)
class LabelEntry:
    """One label to post. ``time`` None = when the store receives it."""

    image_id: str
    label: Label | str
    user: str = ""
    time: datetime | str | None = None
    comment: str = ""


@dataclass(frozen=True)
class LabelRecord:
    """One stored label event; ``seq`` grows with every stored label."""

    seq: int
    image_id: str
    label: Label
    user: str
    time: datetime
    comment: str
    recorded_at: datetime
    batch_key: str | None


@dataclass(frozen=True)
class AddResult:
    """What a post did: ``added`` new rows (their highest ``last_seq``), ``skipped`` duplicates/unchanged;
    ``replayed`` when the key had already been posted."""

    key: str | None
    added: int
    skipped: int
    replayed: bool = False
    last_seq: int | None = None


@dataclass(frozen=True)
class Campaign:
    name: str
    created: datetime
    config: dict[str, Any]
    notes: str


class Candidate(NamedTuple):
    image_id: str
    score: float


_meta = sa.MetaData()
_store_meta = sa.Table(
    "store_meta", _meta, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text, nullable=False)
)
_campaigns = sa.Table(
    "campaigns",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("notes", sa.Text, nullable=False),
)
_users = sa.Table(  # people who may use the service; anomalymatch.users manages them
    "users",
    _meta,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.CheckConstraint("role IN ('viewer', 'labeller', 'admin')", name="ck_user_role"),
)
_images = sa.Table(
    "images",
    _meta,
    sa.Column("image_id", sa.String(1024), primary_key=True),
    sa.Column("basename", sa.String(1024), nullable=False, index=True),
    sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id"), nullable=True),
    sa.Column("registered_at", sa.String(32), nullable=False),
)
_batches = sa.Table(
    "label_batches",
    _meta,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("payload_sha256", sa.String(64), nullable=False),
    sa.Column("recorded_at", sa.String(32), nullable=False),
    sa.Column("n_entries", sa.Integer, nullable=False),
)
_labels = sa.Table(
    "labels",
    _meta,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("image_id", sa.String(1024), sa.ForeignKey("images.image_id"), nullable=False),
    sa.Column("label", sa.String(16), nullable=False),
    sa.Column("user", sa.String(200), nullable=False),
    sa.Column("time", sa.String(32), nullable=False),
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.String(32), nullable=False),
    sa.Column("batch_key", sa.String(200), sa.ForeignKey("label_batches.key"), nullable=True),
    sa.CheckConstraint("label IN ('anomaly', 'nominal')", name="ck_label_value"),
    sa.UniqueConstraint("image_id", "label", "user", "time", name="uq_label_event"),
    sa.Index("ix_labels_image_time", "image_id", "time", "seq"),
    sa.Index("ix_labels_image_seq", "image_id", "seq"),
    sa.Index("ix_labels_recorded", "recorded_at"),
)
_scores = sa.Table(
    "scores",
    _meta,
    sa.Column("model_version", sa.String(200), primary_key=True),
    sa.Column("image_id", sa.String(1024), primary_key=True),
    sa.Column("score", sa.Float, nullable=False),
    sa.Index("ix_scores_version_score", "model_version", "score"),
)
_catalogue = sa.Table(  # a survey catalogue attached to the campaign (anomalymatch.catalogue)
    "catalogue",
    _meta,
    sa.Column("image_id", sa.String(1024), primary_key=True),
    sa.Column("ra", sa.Float, nullable=True),
    sa.Column("dec", sa.Float, nullable=True),
    sa.Column("columns", sa.Text, nullable=False),
)
_EVENT_KEY = ["image_id", "label", "user", "time"]


def _fmt_time(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _now() -> str:
    return _fmt_time(datetime.now(UTC))


def _entry_time(value: datetime | str | None, where: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError as err:
            raise BadLabelError(f"{where}: time {value!r} is not ISO 8601, e.g. 2024-05-01T12:00:00Z") from err
    if not isinstance(value, datetime):
        raise BadLabelError(f"{where}: time must be a datetime or ISO 8601 string, got {type(value).__name__}")
    return _fmt_time(value)


_ENTRY_FIELDS = {"image_id", "label", "user", "time", "comment"}


def _normalise(entries: Iterable[LabelEntry | Mapping[str, Any]], default_user: str | None) -> list[dict]:
    """Validate every entry first; bad label values are reported together, with entry positions."""
    rows: list[dict] = []
    bad_values: dict[str, list[int]] = {}
    for n, entry in enumerate(entries):
        if isinstance(entry, Mapping):
            fields = dict(entry)
            if "image_id" not in fields and "filename" in fields:
                fields["image_id"] = fields.pop("filename")
            unknown = sorted(set(fields) - _ENTRY_FIELDS)
            if unknown or "image_id" not in fields or "label" not in fields:
                raise BadLabelError(
                    f"entry {n}: needs image_id and label, may have user, time, comment; unknown fields {unknown}"
                    if unknown
                    else f"entry {n}: needs image_id and label, may have user, time, comment"
                )
            entry = LabelEntry(**fields)
        if not isinstance(entry.image_id, str) or not entry.image_id.strip():
            raise BadLabelError(f"entry {n}: image_id must be a non-empty string, got {entry.image_id!r}")
        try:
            label = parse_label(entry.label)
        except LabelError:
            bad_values.setdefault(str(entry.label), []).append(n)
            continue
        user = entry.user or default_user or ""
        rows.append(
            {
                "image_id": entry.image_id,
                "label": label.value,
                "user": str(user),
                "time": _entry_time(entry.time, f"entry {n}"),
                "comment": str(entry.comment or ""),
            }
        )
    if bad_values:
        listed = "; ".join(f"{v!r} (entries {p[:5]}{'...' if len(p) > 5 else ''})" for v, p in bad_values.items())
        raise BadLabelError(
            f"unknown label values: {listed}; use 'anomaly' or 'nominal' ('normal' is read as "
            "nominal); nothing was written",
            values=list(bad_values),
        )
    return rows


def _payload_sha256(rows: list[dict]) -> str:
    text = json.dumps([[r[k] for k in ("image_id", "label", "user", "time", "comment")] for r in rows])
    return hashlib.sha256(text.encode()).hexdigest()


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _record(row: Any) -> LabelRecord:
    return LabelRecord(
        row.seq,
        row.image_id,
        Label(row.label),
        row.user,
        _parse_time(row.time),
        row.comment,
        _parse_time(row.recorded_at),
        row.batch_key,
    )


def resolve_labelstore_url(config: LabelStoreConfig, data_dir: str | Path) -> str:
    """``config.url``, else SQLite at ``<data_dir>/labels.db`` (the folder is created)."""
    if config.url:
        return config.url
    path = Path(data_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'labels.db'}"


class LabelStore:
    """Labels, known images, scores and campaigns in one database. Open one per process (after forking)."""

    def __init__(self, url: str, busy_timeout_s: float = 30.0) -> None:
        self.url = url
        try:
            if url.startswith("sqlite"):
                self._engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})
                _configure_sqlite(self._engine, busy_timeout_s)
            else:
                self._engine = sa.create_engine(url, pool_pre_ping=True)
        except ImportError as err:
            raise ImportError(
                f"no database driver for {url.split(':', 1)[0]!r} ({err}); for PostgreSQL "
                "`pip install 'psycopg[binary]'` and use a postgresql+psycopg:// URL"
            ) from err
        self._dialect = self._engine.dialect.name
        self._transact(self._create_schema)

    @classmethod
    def from_config(cls, config: LabelStoreConfig, data_dir: str | Path) -> LabelStore:
        return cls(resolve_labelstore_url(config, data_dir), busy_timeout_s=config.busy_timeout_s)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------------------
    def _create_schema(self, conn: sa.Connection) -> None:
        _meta.create_all(conn)
        for index in _labels.indexes:  # create_all adds indexes only with new tables: stores made before an index
            index.create(conn, checkfirst=True)
        found = conn.execute(sa.select(_store_meta.c.value).where(_store_meta.c.key == "schema_version")).scalar()
        if found is None:
            conn.execute(
                self._insert(_store_meta)
                .values(key="schema_version", value=str(SCHEMA_VERSION))
                .on_conflict_do_nothing()
            )
        elif int(found) > SCHEMA_VERSION:
            raise LabelStoreError(
                f"{self.url} has label store schema {found}, newer than this code's "
                f"{SCHEMA_VERSION}; upgrade anomalymatch"
            )

    def _insert(self, table: sa.Table) -> Any:
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self._dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            raise LabelStoreError(f"label store supports sqlite and postgresql URLs, not {self._dialect}")
        return insert(table)

    def _transact(self, work: Callable[[sa.Connection], _T], attempts: int = 3) -> _T:
        """Run ``work`` in one write transaction (SQLite: BEGIN IMMEDIATE); retry when the database stays
        locked past the busy timeout. ``work`` must only touch the database (it may run again)."""
        for attempt in range(attempts):
            try:
                with self._engine.connect() as conn:
                    conn.execution_options(labelstore_write=True)
                    with conn.begin():
                        return work(conn)
            except OperationalError as err:
                if "locked" not in str(err) or attempt == attempts - 1:
                    raise
                _time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._engine.connect() as conn:
            with conn.begin():
                yield conn

    def _missing_ids(self, conn: sa.Connection, ids: Iterable[str]) -> set[str]:
        wanted = sorted(set(ids))
        found: set[str] = set()
        for chunk in _chunks(wanted):
            found.update(conn.execute(sa.select(_images.c.image_id).where(_images.c.image_id.in_(chunk))).scalars())
        return set(wanted) - found

    # -- campaigns and images -------------------------------------------------------------------------------
    def create_campaign(
        self, name: str, config: Mapping[str, Any] | None = None, notes: str = "", exist_ok: bool = False
    ) -> Campaign:
        """Record a campaign; an existing name raises unless ``exist_ok`` (then the stored one is returned)."""

        def work(conn: sa.Connection) -> None:
            row = {
                "name": name,
                "created_at": _now(),
                "config": json.dumps(dict(config or {}), sort_keys=True),
                "notes": notes,
            }
            stmt = self._insert(_campaigns).values(**row).on_conflict_do_nothing().returning(_campaigns.c.id)
            if conn.execute(stmt).first() is None and not exist_ok:
                raise LabelStoreError(f"campaign {name!r} already exists; pick another name or pass exist_ok=True")

        self._transact(work)
        return self.get_campaign(name)

    def get_campaign(self, name: str) -> Campaign:
        with self._read() as conn:
            row = conn.execute(sa.select(_campaigns).where(_campaigns.c.name == name)).first()
        if row is None:
            raise UnknownCampaignError(f"no campaign {name!r}; known: {[c.name for c in self.list_campaigns()]}")
        return Campaign(row.name, _parse_time(row.created_at), json.loads(row.config), row.notes)

    def list_campaigns(self) -> list[Campaign]:
        with self._read() as conn:
            rows = conn.execute(sa.select(_campaigns).order_by(_campaigns.c.id)).all()
        return [Campaign(r.name, _parse_time(r.created_at), json.loads(r.config), r.notes) for r in rows]

    def register_images(self, ids: Iterable[str], campaign: str | None = None) -> int:
        """Make image ids labelable (bulk; already known ids are left alone). Returns how many were new."""
        campaign_id = None
        if campaign is not None:
            with self._read() as conn:
                campaign_id = conn.execute(sa.select(_campaigns.c.id).where(_campaigns.c.name == campaign)).scalar()
            if campaign_id is None:
                raise UnknownCampaignError(f"no campaign {campaign!r}; create it first (create_campaign)")
        unique = list(dict.fromkeys(str(i) for i in ids))
        now = _now()
        added = 0
        for chunk in _chunks(unique, 20_000):  # one transaction per chunk keeps label writers responsive
            rows = [
                {"image_id": i, "basename": _basename(i), "campaign_id": campaign_id, "registered_at": now}
                for i in chunk
            ]
            added += self._transact(lambda conn, rows=rows: self._insert_counted(conn, _images, rows))
        return added

    def _insert_counted(self, conn: sa.Connection, table: sa.Table, rows: list[dict]) -> int:
        count = sa.select(sa.func.count()).select_from(table)
        before = conn.execute(count).scalar_one()
        conn.execute(self._insert(table).on_conflict_do_nothing(), rows)
        return conn.execute(count).scalar_one() - before

    def n_images(self) -> int:
        with self._read() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(_images)).scalar_one()

    def unknown_ids(self, ids: Iterable[str]) -> list[str]:
        """The given ids that are not registered, sorted."""
        with self._read() as conn:
            return sorted(self._missing_ids(conn, ids))

    # -- labels ---------------------------------------------------------------------------------------------
    def add_labels(
        self, entries: Iterable[LabelEntry | Mapping[str, Any]], key: str | None = None, user: str | None = None
    ) -> AddResult:
        """Append a batch of labels in one transaction. ``key``: client idempotency key (a repeat is a no-op);
        ``user`` fills entries without one. Raises BadLabelError / UnknownImageError (also for two different
        labels of one image in the batch), writing nothing."""
        rows = _normalise(entries, user)
        seen: dict[str, str] = {}
        conflicts = sorted({r["image_id"] for r in rows if seen.setdefault(r["image_id"], r["label"]) != r["label"]})
        if conflicts:
            raise BadLabelError(
                f"{len(conflicts)} image(s) have two different labels in one batch, e.g. {conflicts[:5]}; "
                "post one label per image (a later batch corrects an earlier one); nothing was written"
            )
        return self._add(rows, key, skip_unchanged=False)

    def _add(self, rows: list[dict], key: str | None, skip_unchanged: bool, payload: str | None = None) -> AddResult:
        payload = payload or _payload_sha256(rows)
        if key is not None and not (isinstance(key, str) and 0 < len(key) <= 200):
            raise LabelStoreError(f"idempotency key must be a string of 1-200 characters, got {key!r}")

        def work(conn: sa.Connection) -> AddResult:
            now = _now()
            if key is not None:
                claim = self._insert(_batches).values(
                    key=key, payload_sha256=payload, recorded_at=now, n_entries=len(rows)
                )
                if conn.execute(claim.on_conflict_do_nothing().returning(_batches.c.key)).first() is None:
                    stored = conn.execute(sa.select(_batches.c.payload_sha256).where(_batches.c.key == key)).scalar()
                    if stored != payload:
                        raise IdempotencyConflictError(
                            f"idempotency key {key!r} was already used for a different batch; use a new key"
                        )
                    return AddResult(key, added=0, skipped=len(rows), replayed=True)
            missing = self._missing_ids(conn, (r["image_id"] for r in rows))
            if missing:
                raise UnknownImageError(missing)
            todo = rows
            if skip_unchanged:
                current = self._current(conn, [r["image_id"] for r in rows if r["time"] is None])
                todo = [r for r in rows if r["time"] is not None or current.get(r["image_id"]) != r["label"]]
            unique = {(r["image_id"], r["label"], r["user"], r["time"] or now): r for r in todo}
            values = [dict(r, time=r["time"] or now, recorded_at=now, batch_key=key) for r in unique.values()]
            seqs: list[int] = []
            for chunk in _chunks(values, 2000):
                stmt = self._insert(_labels).on_conflict_do_nothing(index_elements=_EVENT_KEY)
                seqs += conn.execute(stmt.returning(_labels.c.seq), list(chunk)).scalars().all()
            return AddResult(key, added=len(seqs), skipped=len(rows) - len(seqs), last_seq=max(seqs, default=None))

        return self._transact(work)

    def _current(self, conn: sa.Connection, ids: Sequence[str]) -> dict[str, str]:
        """Current label value of each of ``ids`` that has one."""
        out: dict[str, str] = {}
        for chunk in _chunks(sorted(set(ids))):
            sub = _latest(_labels.c.image_id.in_(chunk))
            out.update((r.image_id, r.label) for r in conn.execute(sa.select(sub).where(sub.c.rn == 1)))
        return out

    def current_labels(self, with_extra: bool = True, policy: LabelPolicy | str | None = None) -> LabelTable:
        """The label of every labelled image that trains the model, sorted by id: by the campaign's label
        policy (``anomalymatch.label_policy``; ``policy`` None = the stored one), so with one expert the
        last label stored. ``with_extra`` adds the user, time and comment of that label as extra columns."""
        policy = self.label_policy() if policy is None else parse_policy(policy)
        sub = _latest(sa.true())
        with self._read() as conn:
            rows = conn.execute(sa.select(sub).where(sub.c.rn == 1).order_by(sub.c.image_id)).all()
            chosen = [_record(r) for r in rows]
            if policy is not LabelPolicy.LATEST:
                shared = (
                    sa.select(_labels.c.image_id)
                    .group_by(_labels.c.image_id)
                    .having(sa.func.count(sa.distinct(_labels.c.user)) > 1)
                )
                histories: dict[str, list[LabelRecord]] = {}
                for r in conn.execute(sa.select(_labels).where(_labels.c.image_id.in_(shared))):
                    histories.setdefault(r.image_id, []).append(_record(r))
                admins = self._admins(conn)
                chosen = [
                    choose(histories[c.image_id], policy, admins) if c.image_id in histories else c for c in chosen
                ]
        extra = (
            {
                "user": tuple(c.user for c in chosen),
                "time": tuple(_fmt_time(c.time) for c in chosen),
                "comment": tuple(c.comment for c in chosen),
            }
            if with_extra
            else {}
        )
        return LabelTable(tuple(c.image_id for c in chosen), tuple(c.label for c in chosen), extra)

    # -- several experts ------------------------------------------------------------------------------------
    def label_policy(self) -> LabelPolicy:
        """Which label of an image trains the model when experts differ (``latest`` unless set)."""
        with self._read() as conn:
            value = conn.execute(sa.select(_store_meta.c.value).where(_store_meta.c.key == "label_policy")).scalar()
        return parse_policy(value or LabelPolicy.LATEST.value)

    def set_label_policy(self, policy: LabelPolicy | str) -> LabelPolicy:
        policy = parse_policy(policy)

        def work(conn: sa.Connection) -> None:
            conn.execute(sa.delete(_store_meta).where(_store_meta.c.key == "label_policy"))
            conn.execute(sa.insert(_store_meta).values(key="label_policy", value=policy.value))

        self._transact(work)
        return policy

    def disagreements(self, limit: int = 1000) -> list[Disagreement]:
        """Images whose experts' own latest labels differ and no admin has settled (``label_policy``), most
        recent first (at most ``limit``)."""
        shared = (
            sa.select(_labels.c.image_id)
            .group_by(_labels.c.image_id)
            .having(sa.func.count(sa.distinct(_labels.c.label)) > 1)
            .having(sa.func.count(sa.distinct(_labels.c.user)) > 1)
        )
        with self._read() as conn:
            records = [_record(r) for r in conn.execute(sa.select(_labels).where(_labels.c.image_id.in_(shared)))]
            admins = self._admins(conn)
        return disagreements(records, admins)[:limit]

    def admin_names(self) -> set[str]:
        """The users with the admin role (their label settles a disagreement)."""
        with self._read() as conn:
            return self._admins(conn)

    def _admins(self, conn: sa.Connection) -> set[str]:
        return set(conn.execute(sa.select(_users.c.name).where(_users.c.role == "admin")).scalars())

    def delete_label(self, seq: int, user: str | None = None, batch_prefix: str | None = None) -> LabelRecord:
        """Withdraw one label event (an expert's undo): only ``user``'s own label unless ``user`` is None
        (an admin), and with ``batch_prefix`` only a label posted under such a batch key (the web app's
        ``ui:``). The event leaves the history; the image's earlier labels, if any, stand again."""

        def work(conn: sa.Connection) -> LabelRecord:
            row = conn.execute(sa.select(_labels).where(_labels.c.seq == int(seq))).first()
            if row is None:
                raise LabelStoreError(f"no label with sequence number {seq}")
            if user is not None and row.user != user:
                raise LabelStoreError(f"label {seq} was given by {row.user!r}, not {user!r}: only its author undoes it")
            if batch_prefix is not None and not (row.batch_key or "").startswith(batch_prefix):
                raise LabelStoreError(f"label {seq} was not posted here ({batch_prefix!r} batches): it stays")
            conn.execute(sa.delete(_labels).where(_labels.c.seq == int(seq)))
            return _record(row)

        return self._transact(work)

    def batch_seqs(self, key: str) -> list[int]:
        """The sequence numbers of the labels a post with idempotency ``key`` stored (still stored)."""
        with self._read() as conn:
            query = sa.select(_labels.c.seq).where(_labels.c.batch_key == key).order_by(_labels.c.seq)
            return list(conn.execute(query).scalars())

    def labelled_ids(self) -> frozenset[str]:
        """Ids with at least one label."""
        with self._read() as conn:
            return frozenset(conn.execute(sa.select(_labels.c.image_id).distinct()).scalars())

    def history(self, image_id: str | None = None) -> list[LabelRecord]:
        """Every stored label (of one image, or all), in sequence order."""
        query = sa.select(_labels).order_by(_labels.c.seq)
        if image_id is not None:
            query = query.where(_labels.c.image_id == image_id)
        with self._read() as conn:
            return [_record(r) for r in conn.execute(query)]

    def _since(self, after: int | datetime) -> Any:
        if isinstance(after, datetime):
            return _labels.c.recorded_at > _fmt_time(after)
        return _labels.c.seq > int(after)

    def labels_since(self, after: int | datetime = 0) -> list[LabelRecord]:
        """Labels stored after a sequence number (int) or a time (datetime, compared with when they were
        recorded), in sequence order: "what is new since the last training"."""
        with self._read() as conn:
            return [
                _record(r) for r in conn.execute(sa.select(_labels).where(self._since(after)).order_by(_labels.c.seq))
            ]

    def count_labels_since(self, after: int | datetime = 0) -> int:
        with self._read() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(_labels).where(self._since(after))).scalar_one()

    def pending_since(self, after: int) -> tuple[int, datetime | None]:
        """(labels stored after sequence number ``after``, when the oldest of them was recorded): two index
        lookups on the sequence, whatever the number of labels stored before."""
        since = _labels.c.seq > after
        with self._read() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(_labels).where(since)).scalar_one()
            if n == 0:
                return 0, None
            oldest = conn.execute(
                sa.select(_labels.c.recorded_at).where(since).order_by(_labels.c.seq).limit(1)
            ).scalar_one()
        return n, _parse_time(oldest)

    def last_seq(self) -> int:
        """The highest sequence number stored (0 when empty); keep it to ask ``labels_since`` later."""
        with self._read() as conn:
            return conn.execute(sa.select(sa.func.coalesce(sa.func.max(_labels.c.seq), 0))).scalar_one()

    # -- scores and candidates ------------------------------------------------------------------------------
    def add_scores(self, model_version: str, ids: Sequence[str], scores: Sequence[float] | np.ndarray) -> int:
        """Store (or replace) one model version's scores; commits per chunk, so a re-run after a crash is safe."""
        values = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(ids) != len(values):
            raise LabelStoreError(f"add_scores got {len(ids)} ids but {len(values)} scores; give one score per id")
        bad = [str(ids[i]) for i in np.flatnonzero(~np.isfinite(values))[:10]]
        if bad:
            raise LabelStoreError(f"scores must be finite; NaN/inf for {bad}")
        stmt = self._insert(_scores)
        stmt = stmt.on_conflict_do_update(
            index_elements=["model_version", "image_id"], set_={"score": stmt.excluded.score}
        )
        for start in range(0, len(values), 20_000):
            rows = [
                {"model_version": model_version, "image_id": str(i), "score": float(s)}
                for i, s in zip(ids[start : start + 20_000], values[start : start + 20_000])
            ]
            self._transact(lambda conn, rows=rows: conn.execute(stmt, rows))
        return len(values)

    def import_scores_parquet(
        self, path: str | Path, model_version: str, id_column: str = "image_id", score_column: str = "score"
    ) -> int:
        """Bulk-load scores from a Parquet file's ``id_column`` and ``score_column``."""
        import pyarrow.parquet as pq

        source = pq.ParquetFile(path)
        names = source.schema_arrow.names
        if id_column not in names or score_column not in names:
            raise LabelStoreError(f"{path}: needs columns {id_column!r} and {score_column!r}; found {names}")
        total = 0
        for batch in source.iter_batches(batch_size=50_000, columns=[id_column, score_column]):
            total += self.add_scores(
                model_version, batch.column(0).to_pylist(), batch.column(1).to_numpy(zero_copy_only=False)
            )
        return total

    def select_candidates(
        self, model_version: str, n: int, strategy: CandidateStrategy | str = "top", seed: int = 0, offset: int = 0
    ) -> list[Candidate]:
        """Up to ``n`` unlabelled images scored by ``model_version``, ranked by ``strategy``, after skipping the
        first ``offset`` of that ranking (pages of a gallery)."""
        strategy = CandidateStrategy(strategy)
        if n < 0 or offset < 0:
            raise LabelStoreError(f"select_candidates needs n >= 0 and offset >= 0, got {n} and {offset}")
        unlabelled = ~sa.exists().where(_labels.c.image_id == _scores.c.image_id)
        base = sa.select(_scores.c.image_id, _scores.c.score).where(
            _scores.c.model_version == model_version, unlabelled
        )
        with self._read() as conn:
            if strategy is CandidateStrategy.TOP:
                rows = conn.execute(
                    base.order_by(_scores.c.score.desc(), _scores.c.image_id).offset(offset).limit(n)
                ).all()
                return [Candidate(*r) for r in rows]
            if strategy is CandidateStrategy.UNCERTAIN:
                distance = sa.func.abs(_scores.c.score - 0.5)
                rows = conn.execute(base.order_by(distance, _scores.c.image_id).offset(offset).limit(n)).all()
                return [Candidate(*r) for r in rows]
            # a fixed shuffle (a seeded hash of each id), so pages of it never overlap
            result = conn.execution_options(yield_per=10_000).execute(base)
            salt = f"{seed}:".encode()
            keyed = ((hashlib.blake2b(salt + r.image_id.encode(), digest_size=8).digest(), r) for r in result)
            page = heapq.nsmallest(offset + n, keyed, key=lambda kr: kr[0])[offset:]
        return [Candidate(*r) for _, r in page]

    def scores_for(self, model_version: str, ids: Sequence[str]) -> dict[str, float]:
        """The stored scores of ``model_version`` for those of ``ids`` it scored."""
        out: dict[str, float] = {}
        with self._read() as conn:
            for chunk in _chunks(sorted(set(ids))):
                query = sa.select(_scores.c.image_id, _scores.c.score).where(
                    _scores.c.model_version == model_version, _scores.c.image_id.in_(chunk)
                )
                out.update((r.image_id, float(r.score)) for r in conn.execute(query))
        return out

    def scored_labels(
        self, model_version: str, table: LabelTable | None = None
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(ids, 0/1 labels, scores) of labelled images that ``model_version`` scored (``table``: the current
        labels, when the caller has them). A retrain stores scores for its unlabelled pool only, so these
        labels came after the model; scores imported from a bulk job may cover labelled images too."""
        table = self.current_labels(with_extra=False) if table is None else table
        scores = self.scores_for(model_version, list(table.ids))
        ids = [i for i in table.ids if i in scores]
        labels = dict(zip(table.ids, table.labels))
        y = np.array([labels[i] is Label.ANOMALY for i in ids], dtype=np.int8)
        return ids, y, np.array([scores[i] for i in ids], dtype=np.float64)

    # -- campaign statistics ------------------------------------------------------------------------------
    def label_counts(self, table: LabelTable | None = None) -> dict[str, int]:
        """Label events, labelled images and images whose training label is anomaly (``table``: the current
        labels, when the caller has them)."""
        table = self.current_labels(with_extra=False) if table is None else table
        with self._read() as conn:
            events = conn.execute(sa.select(sa.func.count()).select_from(_labels)).scalar_one()
        return {
            "labels": events,
            "labelled_images": len(table.ids),
            "anomalies": sum(1 for lab in table.labels if lab is Label.ANOMALY),
        }

    def label_activity(self) -> list[dict[str, Any]]:
        """Labels per user and UTC day (when they were recorded), oldest day first."""
        day = sa.func.substr(_labels.c.recorded_at, 1, 10)
        query = (
            sa.select(_labels.c.user, day.label("day"), sa.func.count().label("n"))
            .group_by(_labels.c.user, day)
            .order_by(day, _labels.c.user)
        )
        with self._read() as conn:
            return [{"user": r.user, "day": r.day, "n": r.n} for r in conn.execute(query)]

    def discovery_curve(self) -> dict[str, list[int]]:
        """Anomalies found against labels spent, in the order labels were stored: after each label event,
        how many distinct images have been labelled anomaly at least once (by anyone)."""
        found: set[str] = set()
        x: list[int] = []
        y: list[int] = []
        query = sa.select(_labels.c.image_id, _labels.c.label).order_by(_labels.c.seq)
        with self._read() as conn:
            for k, r in enumerate(conn.execution_options(yield_per=10_000).execute(query), 1):
                if r.label == Label.ANOMALY.value:
                    found.add(r.image_id)
                x.append(k)
                y.append(len(found))
        return {"x": x, "y": y}

    # -- catalogue ------------------------------------------------------------------------------------------
    def attach_catalogue(self, rows: Sequence[CatalogueRow]) -> tuple[int, int]:
        """Store catalogue rows (replacing earlier rows of the same ids) in one transaction; returns
        (rows stored, how many of their ids are registered images)."""
        values = [
            {"image_id": r.image_id, "ra": r.ra, "dec": r.dec, "columns": json.dumps(r.columns, sort_keys=True)}
            for r in rows
        ]

        def work(conn: sa.Connection) -> int:
            for chunk in _chunks(values, 5_000):
                stmt = self._insert(_catalogue).values(list(chunk))
                stmt = stmt.on_conflict_do_update(
                    index_elements=[_catalogue.c.image_id],
                    set_={"ra": stmt.excluded.ra, "dec": stmt.excluded.dec, "columns": stmt.excluded.columns},
                )
                conn.execute(stmt)
            return len(values) - len(self._missing_ids(conn, [r.image_id for r in rows]))

        return len(values), self._transact(work)

    def catalogue_for(self, ids: Sequence[str]) -> dict[str, CatalogueRow]:
        """The catalogue rows of those ``ids`` that have one."""
        out: dict[str, CatalogueRow] = {}
        with self._read() as conn:
            for chunk in _chunks(sorted(set(ids))):
                for r in conn.execute(sa.select(_catalogue).where(_catalogue.c.image_id.in_(chunk))):
                    out[r.image_id] = CatalogueRow(r.image_id, r.ra, r.dec, json.loads(r.columns))
        return out

    # -- CSV ------------------------------------------------------------------------------------------------
    def import_csv(
        self,
        path: str | Path,
        user: str = "",
        key: str | None = None,
        filename_column: str | None = None,
        label_column: str | None = None,
        label_map: Mapping[str, str] | None = None,
    ) -> AddResult:
        """Import a labels CSV: the reference tool's labeled_data.csv or anything ``read_labels`` reads
        (its user, time and comment columns are used when present). Filenames resolve to registered ids
        (exact, else a unique basename). Rows without a time whose image already has that label are
        skipped; ``key`` defaults to a hash of the file and user, so importing the same file twice is a no-op."""
        options = {"filename_column": filename_column, "label_column": label_column, "label_map": label_map}
        path = Path(path)
        try:
            names = read_labels(path, **options).ids
        except LabelError as err:
            raise BadLabelError(str(err)) from err
        with self._read() as conn:
            exact = set(names) - self._missing_ids(conn, names)
            bases = sorted({_basename(n) for n in names if n not in exact})
            by_base: dict[str, list[str]] = {}
            for chunk in _chunks(bases):
                for image_id, base in conn.execute(
                    sa.select(_images.c.image_id, _images.c.basename).where(_images.c.basename.in_(chunk))
                ):
                    by_base.setdefault(base, []).append(image_id)
        missing = [n for n in names if n not in exact and _basename(n) not in by_base]
        if missing:
            raise UnknownImageError(missing)
        known = exact | {i for ids in by_base.values() for i in ids}
        try:
            table = read_labels(path, known_ids=known, **options)
        except LabelError as err:
            raise BadLabelError(str(err)) from err
        column = {k.lower(): v for k, v in table.extra.items()}
        entries = [
            LabelEntry(
                image_id,
                label,
                user=column.get("user", ("",) * len(table))[i] or user,
                time=column.get("time", ("",) * len(table))[i] or None,
                comment=column.get("comment", ("",) * len(table))[i],
            )
            for i, (image_id, label) in enumerate(zip(table.ids, table.labels))
        ]
        digest = hashlib.sha256(path.read_bytes() + b"\0" + user.encode()).hexdigest()
        return self._add(_normalise(entries, user), key or f"csv:{digest}", skip_unchanged=True, payload=digest)

    def export_csv(self, path: str | Path, fmt: CsvFormat | str = CsvFormat.REFERENCE) -> Path:
        """Write the current labels: ``reference`` = filename,label with anomaly/normal (the reference tool's
        labeled_data.csv); ``anomalymatch`` = filename,label,user,time,comment."""
        fmt = CsvFormat(fmt)
        table = self.current_labels(with_extra=fmt is CsvFormat.ANOMALYMATCH)
        if fmt is CsvFormat.ANOMALYMATCH:
            return table.to_csv(path)
        rows = [(i, "anomaly" if lab is Label.ANOMALY else "normal") for i, lab in zip(table.ids, table.labels)]
        return _write_csv(path, ["filename", "label"], rows)

    def export_history(self, path: str | Path) -> Path:
        """Write every stored label: seq,filename,label,user,time,comment,recorded_at,batch_key."""
        with self._read() as conn:
            rows = [
                (r.seq, r.image_id, r.label, r.user, r.time, r.comment, r.recorded_at, r.batch_key or "")
                for r in conn.execute(sa.select(_labels).order_by(_labels.c.seq))
            ]
        header = ["seq", "filename", "label", "user", "time", "comment", "recorded_at", "batch_key"]
        return _write_csv(path, header, rows)

    # -- maintenance ----------------------------------------------------------------------------------------
    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` ('ok' when sound); 'ok' on other databases."""
        if self._dialect != "sqlite":
            return "ok"
        with self._read() as conn:
            return "; ".join(r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check"))


def _latest(where: Any) -> Any:
    """Label rows numbered per image, last stored first (``rn`` 1 = the current label)."""
    rn = sa.func.row_number().over(partition_by=_labels.c.image_id, order_by=_labels.c.seq.desc())
    return sa.select(_labels, rn.label("rn")).where(where).subquery()


def _write_csv(path: str | Path, header: list[str], rows: Iterable[Sequence[Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _configure_sqlite(engine: sa.Engine, busy_timeout_s: float) -> None:
    """WAL, full fsync on commit, foreign keys, busy timeout; BEGIN IMMEDIATE for writes (pysqlite's own
    transaction handling is switched off, as SQLAlchemy's documentation recommends)."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() not in ("wal", "memory"):
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get("labelstore_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
