"""Several experts, one training label per image: the label policy, and where experts disagree.

Every label event is kept (``LabelStore.history``). Which of an image's labels trains the model is the
campaign's label policy (``LabelStore.set_label_policy``; ``latest`` unless set):

- ``latest``: the last label stored, whoever gave it (the behaviour of a one-expert campaign);
- ``majority``: each expert's own latest label is one vote; a tie goes to the latest label stored;
- ``admin``: the latest label given by an admin, else the latest label stored.

An image is *disputed* when two experts' own latest labels differ, until an admin settles it: an image
whose latest label is an admin's is settled (under the ``admin`` policy that label also trains the model).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from anomalymatch.labelstore import LabelRecord


class LabelPolicy(str, Enum):
    LATEST = "latest"
    MAJORITY = "majority"
    ADMIN = "admin"


def parse_policy(value: str | LabelPolicy) -> LabelPolicy:
    try:
        return LabelPolicy(value)
    except ValueError:
        raise ValueError(f"unknown label policy {value!r}; use one of {[p.value for p in LabelPolicy]}") from None


def per_user_latest(records: Iterable[LabelRecord]) -> dict[str, dict[str, LabelRecord]]:
    """image id -> user -> that user's latest label of the image (records in any order)."""
    out: dict[str, dict[str, LabelRecord]] = {}
    for r in records:
        mine = out.setdefault(r.image_id, {})
        if r.user not in mine or r.seq > mine[r.user].seq:
            mine[r.user] = r
    return out


def choose(history: Sequence[LabelRecord], policy: LabelPolicy, admins: Collection[str] = ()) -> LabelRecord:
    """The label of one image that trains the model, from its non-empty history."""
    latest = max(history, key=lambda r: r.seq)
    if policy is LabelPolicy.LATEST:
        return latest
    if policy is LabelPolicy.ADMIN:
        by_admin = [r for r in history if r.user in admins]
        return max(by_admin, key=lambda r: r.seq) if by_admin else latest
    votes = list(per_user_latest(history)[latest.image_id].values())
    counts: dict[str, int] = {}
    for r in votes:
        counts[r.label.value] = counts.get(r.label.value, 0) + 1
    best = max(counts.values())
    winners = {label for label, n in counts.items() if n == best}
    if latest.label.value in winners:
        return latest
    return max((r for r in votes if r.label.value in winners), key=lambda r: r.seq)


@dataclass(frozen=True)
class Disagreement:
    image_id: str
    labels: dict[str, str]  # user -> that user's latest label
    last_seq: int


def disagreements(records: Iterable[LabelRecord], admins: Collection[str] = ()) -> list[Disagreement]:
    """Images whose experts' own latest labels differ and that no admin has settled since, most recently
    labelled first."""
    out = []
    for image_id, by_user in per_user_latest(records).items():
        latest = max(by_user.values(), key=lambda r: r.seq)
        if len({r.label for r in by_user.values()}) > 1 and latest.user not in admins:
            out.append(
                Disagreement(
                    image_id,
                    {user: r.label.value for user, r in sorted(by_user.items())},
                    max(r.seq for r in by_user.values()),
                )
            )
    return sorted(out, key=lambda d: -d.last_seq)
