"""A thin client for the labelling endpoints of a running AnomalyMatch service.

    from labeling import Client
    client = Client("http://127.0.0.1:3000", token="...")      # token: also $ANOMALYMATCH_LABEL_TOKEN
    rows = client.candidates(n=20)                                # top (default), uncertain or explore
    client.image(rows[0]["image_id"])                             # the original file's bytes
    client.label({rows[0]["image_id"]: "anomaly", rows[1]["image_id"]: "nominal"}, user="ann")
    client.status()                                               # retraining: idle/queued/running/failed

``pull(out_dir)`` writes candidate images plus ``labels.csv`` (filename,label,score,rank,local_file,comment)
to fill in; ``push(csv)`` posts the rows that have a label. A 4xx or 5xx raises ``ServiceError`` with the
service's message. Routes (BentoML, POST with a JSON body): ``/candidates``, ``/labels``,
``/retrain_status``, ``/image``. The HTTP plumbing (base URL, timeout, token header, errors) is
``anomalymatch.http_client.HttpClient``, shared with ``serving.client``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from anomalymatch.config import LABEL_TOKEN_ENV
from anomalymatch.http_client import HttpClient, ServiceError  # noqa: F401  (ServiceError: re-exported)
from anomalymatch.labels import Label, LabelError, LabelTable, parse_label

TOKEN_ENV = LABEL_TOKEN_ENV
URL_ENV = "ANOMALYMATCH_URL"
DEFAULT_URL = "http://127.0.0.1:3000"
CSV_COLUMNS = ["filename", "label", "score", "rank", "local_file", "comment"]
CSV_NAME = "labels.csv"


def _utc_now() -> str:
    return datetime.now(UTC).isoformat()


def _entries(labels: Mapping[str, str | Label] | Iterable[Any] | LabelTable) -> list[dict[str, Any]]:
    """{id: label}, (id, label) pairs, {"image_id", "label", ...} dicts or a LabelTable -> entry dicts."""
    if isinstance(labels, LabelTable):
        return [{"image_id": i, "label": lab.value} for i, lab in zip(labels.ids, labels.labels)]
    if isinstance(labels, Mapping):
        return [{"image_id": str(i), "label": getattr(lab, "value", lab)} for i, lab in labels.items()]
    out = []
    for item in labels:
        if isinstance(item, Mapping):
            out.append(dict(item))
        else:
            image_id, lab = item
            out.append({"image_id": str(image_id), "label": getattr(lab, "value", lab)})
    return out


class Client(HttpClient):
    """Talks to the service at ``url`` with ``token`` (a personal token from ``anomalymatch users add``, or
    the shared one; default ``$ANOMALYMATCH_LABEL_TOKEN``), sent with every request: once the service has
    users, reads need a viewer's token and labels a labeller's."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        super().__init__(
            url or os.environ.get(URL_ENV) or DEFAULT_URL,
            token if token is not None else os.environ.get(TOKEN_ENV, ""),
            timeout,
        )

    # -- the endpoints ----------------------------------------------------------------------------------------
    def candidates(self, n: int = 20, strategy: str = "top") -> list[dict[str, Any]]:
        """Unlabelled images ranked by the served model: ``[{"image_id", "score", "rank", "model_version"}]``."""
        body = self.post("candidates", {"n": n, "strategy": strategy}).json()
        return [dict(row, model_version=body["model_version"]) for row in body["candidates"]]

    def label(
        self, labels: Mapping[str, str | Label] | Iterable[Any] | LabelTable, user: str = "", key: str | None = None
    ) -> dict[str, Any]:
        """Post labels in one batch (all stored or none). Entries without a time get now; ``key`` (default:
        a fresh one per call) makes a retried post a no-op."""
        entries = _entries(labels)
        for entry in entries:
            entry.setdefault("time", _utc_now())
        payload = {"labels": entries, "key": key or f"client:{uuid.uuid4().hex}", "user": user}
        return self.post("labels", payload, auth=True).json()

    def saliency(self, image_id: str, stretch: str = "linear") -> bytes:
        """The image with the served model's occlusion map over it, as PNG bytes (red raises the score)."""
        return self.post("saliency", {"image_id": image_id, "stretch": stretch}).content

    def similar(self, image_id: str, k: int = 50, unlabelled: bool = False) -> list[dict[str, Any]]:
        """The ``k`` images most like ``image_id`` by the served model's features, most similar first: rows
        with ``image_id``, ``similarity``, ``score`` and ``rank`` ("more like this")."""
        payload = {"image_id": image_id, "k": k, "unlabelled": unlabelled}
        return self.post("similar", payload).json()["candidates"]

    def suspects(self, threshold: float = 0.8, limit: int = 100) -> dict[str, Any]:
        """Labelled images whose label the served model's features contradict: ``{"suspects": [{"image_id",
        "label", "user", "p_anomaly", "doubt"}], "judged", ...}``."""
        return self.post("suspects", {"threshold": threshold, "limit": limit}).json()

    def status(self) -> dict[str, Any]:
        """Retraining: ``status`` idle/queued/running/failed, ``last_version``, ``new_labels``, ``last_error``..."""
        return self.post("retrain_status", {}).json()

    def image(self, image_id: str, png: bool = False) -> bytes:
        """The image's original file (``png``: rendered as a PNG at its own resolution)."""
        return self.post("image", {"image_id": image_id, "png": png}).content

    def save_image(self, image_id: str, folder: str | os.PathLike, prefix: str = "", png: bool = False) -> Path:
        """Download one image into ``folder`` under its file name (``prefix`` keeps names unique)."""
        resp = self.post("image", {"image_id": image_id, "png": png})
        disposition = resp.headers.get("content-disposition", "")
        match = re.search(r"filename\*=UTF-8''([^;]+)", disposition) or re.search(r'filename="([^"]+)"', disposition)
        name = unquote(match.group(1)) if match else image_id.rsplit("/", 1)[-1]
        path = Path(folder) / (prefix + re.sub(r"[^A-Za-z0-9._-]", "_", name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(resp.content)
        return path

    # -- files for an expert ----------------------------------------------------------------------------------
    def pull(self, out_dir: str | os.PathLike, n: int = 20, strategy: str = "top", png: bool = False) -> Path:
        """Candidate images into ``out_dir/images`` plus ``out_dir/labels.csv`` to fill in (label column:
        anomaly or nominal; leave it empty to skip an image). Returns the CSV's path."""
        out = Path(out_dir)
        rows = self.candidates(n, strategy)
        lines = []
        for row in rows:
            local = self.save_image(row["image_id"], out / "images", f"{row['rank']:04d}_", png)
            lines.append(
                [row["image_id"], "", f"{row['score']:.6f}", row["rank"], local.relative_to(out).as_posix(), ""]
            )
        return write_label_sheet(out / CSV_NAME, lines)

    def push(self, csv_path: str | os.PathLike, user: str = "", key: str | None = None) -> dict[str, Any]:
        """Post the labelled rows of a sheet written by ``pull`` (or any CSV with filename and label columns).
        Rows without a time get the file's modification time; the default key is a hash of the file, so
        pushing the same file twice stores its labels once."""
        path = Path(csv_path)
        entries = read_label_sheet(path)
        if not entries:
            raise LabelError(f"{path}: no row has a label yet; write anomaly or nominal in the label column")
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()
        for entry in entries:
            entry.setdefault("time", mtime)
        digest = hashlib.sha256(path.read_bytes() + b"\0" + user.encode()).hexdigest()
        payload = {"labels": entries, "key": key or f"sheet:{digest}", "user": user}
        return self.post("labels", payload, auth=True).json()


def write_label_sheet(path: Path, rows: Iterable[list[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    return path


def read_label_sheet(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The labelled rows of a sheet as entries ``{"image_id", "label", "comment"?, "user"?, "time"?}``; rows
    with an empty label are skipped. Every bad label value is reported at once (``LabelError``, spreadsheet
    row numbers), before anything is sent."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        id_col = next((columns[c] for c in ("filename", "image_id", "id") if c in columns), None)
        if id_col is None or "label" not in columns:
            raise LabelError(
                f"{path}: needs a filename (or image_id) column and a label column; found {reader.fieldnames}"
            )
        entries, problems = [], []
        for row_number, row in enumerate(reader, start=2):
            raw = (row.get(columns["label"]) or "").strip()
            if not raw:
                continue
            try:
                label = parse_label(raw, row=row_number)
            except LabelError as exc:
                problems.append(str(exc).split(";")[0])
                continue
            image_id = (row.get(id_col) or "").strip()
            if not image_id:
                problems.append(f"row {row_number} has a label but no filename")
                continue
            entry: dict[str, Any] = {"image_id": image_id, "label": label.value}
            for extra in ("comment", "user", "time"):
                value = (row.get(columns.get(extra, ""), "") or "").strip()
                if value:
                    entry[extra] = value
            entries.append(entry)
    if problems:
        raise LabelError(
            f"{path}: " + "; ".join(problems[:20]) + ". Use 'anomaly' or 'nominal' "
            "('normal' is read as nominal); nothing was sent"
        )
    return entries
