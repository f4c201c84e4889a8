"""``anomalymatch similar``: the images most like one image ("more like this"), by the model's features.

    anomalymatch similar 587727178986356823.jpeg --k 20            # the champion's stored embeddings
    anomalymatch similar IMG --version 3 --unlabelled               # skip images already labelled
    anomalymatch similar IMG --bulk run1                            # a bulk job scored with --embeddings

Searches the vectors a retrain stored for the version, or those of a bulk job (``anomalymatch.embeddings``:
exact up to ``similar.approximate_above`` vectors, an IVF-PQ index above; ``--search`` forces one); prints
rank, id, cosine similarity, the image's current label (if any) and the version's score (if stored; for a
bulk job, the job's score).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image_id", help="an image id whose embedding is stored (one the retrain held)")
    p.add_argument("--k", type=int, default=50, help="how many neighbours (default 50)")
    p.add_argument("--version", help="model version whose embeddings to search (default: the champion's)")
    p.add_argument("--unlabelled", action="store_true", help="only images without a label")
    p.add_argument("--bulk", type=Path, metavar="OUT", help="search a bulk job folder scored with --embeddings")
    p.add_argument(
        "--search", choices=["auto", "exact", "approximate"], help="exact or IVF-PQ search (default: similar.search)"
    )
    p.add_argument("--config", type=Path, help="YAML config")
    p.add_argument("--data-dir", help="project data folder (default .anomalymatch or $ANOMALYMATCH_HOME)")


def run(args: argparse.Namespace) -> int:
    from anomalymatch.config import load_config
    from anomalymatch.embeddings import EmbeddingSet, embeddings_path
    from anomalymatch.labelstore import LabelStore
    from anomalymatch.model_ref import current_version, parse_model_ref, resolve_tracking_uri

    config = load_config(args.config, {"data_dir": args.data_dir, "similar.search": args.search})
    version = args.version
    try:
        if args.bulk is not None:
            found = EmbeddingSet.load(args.bulk, config.similar)
            version = found.model_version
        else:
            if not version:
                uri = resolve_tracking_uri(config.tracking.tracking_uri, config.data_path)
                version = current_version(parse_model_ref("champion", config.tracking.registered_model), uri)
            found = EmbeddingSet.load(embeddings_path(config.data_path, version), config.similar)
        query = found.vector_of(args.image_id)
    except (LookupError, ValueError, ImportError) as exc:  # no champion, no such image's vector, no faiss
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with LabelStore.from_config(config.labelstore, config.data_path) as store:
        labels = store.current_labels(with_extra=False)
        current = {i: lab.value for i, lab in zip(labels.ids, labels.labels)}
        exclude = {args.image_id} | (set(current) if args.unlabelled else set())
        hits = found.nearest(query, args.k, exclude=exclude)
        scores = _bulk_scores(args.bulk, hits) if args.bulk else store.scores_for(version, [i for i, _ in hits])
    print(f"the {len(hits)} images most like {args.image_id} (model version {version}, {len(found)} searched)")
    print("rank\tsimilarity\tlabel\tscore\tid")
    for rank, (image_id, sim) in enumerate(hits, 1):
        score = "-" if scores.get(image_id) is None else f"{scores[image_id]:.4f}"
        print(f"{rank}\t{sim:.4f}\t{current.get(image_id, '-')}\t{score}\t{image_id}")
    return 0


def _bulk_scores(out_dir: Path, hits: list[tuple[str, float]]) -> dict[str, float]:
    """The bulk job's scores of the hits (by id; an id qualified by its source, ``SRC::ID``, by both)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from serving.bulk import read_scores
    from serving.bulk_embeddings import SOURCE_SEPARATOR

    names = [i for i, _ in hits]
    plain = {name.rsplit(SOURCE_SEPARATOR, 1)[-1] for name in names}
    table = read_scores(out_dir)
    table = table.filter(pc.is_in(table["id"], value_set=pa.array(sorted(plain), pa.string())))
    out: dict[str, float] = {}
    for image_id, source, score in zip(*(table[c].to_pylist() for c in ("id", "source", "score"))):
        out.setdefault(image_id, score)
        out[f"{source}{SOURCE_SEPARATOR}{image_id}"] = score
    return {name: out[name] for name in names if name in out}
