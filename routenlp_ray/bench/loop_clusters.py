"""Where a student's saving lands: the held-out queries nearest to each mined failure cluster.

Every held-out query is assigned to the failure cluster whose centroid (the mean of its failures'
normalised embeddings, with the encoder mining used) is most similar. A student's gain in a
cluster is the money it saves there over what the current model saves, in the cascade read on
the held-out half. Summed over the selected clusters and over the rest, it says whether targeting
bought its gain where it aimed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routenlp_ray.telemetry.querylog import read_records


def _normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def cluster_savings(
    mined: Mapping[str, Any],
    log_uri: str,
    rows: Mapping[str, Mapping[str, Any]],
    inputs: Mapping[str, str],
    encoder: Any,
    variants: Sequence[str] = ("base", "targeted", "untargeted"),
) -> list[dict[str, Any]]:
    """One row per mined cluster, costliest first: its held-out queries and each student's gain over ``base``.

    ``rows`` is variant -> task -> :class:`~routenlp_ray.loop.iteration.HeldOutRows`;
    ``inputs`` maps a held-out id to its query text.
    """
    clusters = mined["clusters"]
    if not clusters:
        return []
    logged = {q["id"]: q["input"] for q in read_records(log_uri, "queries") if "id" in q}
    centroids = []
    for cluster in clusters:
        texts = [logged[q] for q in cluster["query_ids"] if q in logged]
        centroids.append(_normalised(np.asarray(encoder.encode(texts), dtype=float)).mean(axis=0))
    centroids = _normalised(np.stack(centroids))

    base_rows = rows[variants[0]]
    ids = [i for task in base_rows for i in base_rows[task].ids]
    nearest = (_normalised(np.asarray(encoder.encode([inputs[i] for i in ids]), dtype=float)) @ centroids.T).argmax(1)
    where = dict(zip(ids, nearest))
    saved = {v: np.zeros(len(clusters)) for v in variants}
    frontier = np.zeros(len(clusters))
    count = np.zeros(len(clusters), dtype=int)
    for variant in variants:
        for held in rows[variant].values():
            for i, paid, front in zip(held.ids, held.paid, held.frontier_cost):
                if i in where:  # every variant reads the same held-out ids
                    saved[variant][where[i]] += float(front - paid)
    for held in base_rows.values():
        for i, front in zip(held.ids, held.frontier_cost):
            frontier[where[i]] += float(front)
            count[where[i]] += 1
    selected = set(mined["top_clusters"])
    return [
        {
            "rank": k + 1, "cluster": c["cluster"], "selected": c["cluster"] in selected, "failures": c["size"],
            "tasks": c["tasks"], "cost_share": c["share"], "eval_queries": int(count[k]),
            "eval_frontier_usd": float(frontier[k]), "base_saved_usd": float(saved[variants[0]][k]),
            **{f"{v}_gain_usd": float(saved[v][k] - saved[variants[0]][k]) for v in variants[1:]},
        }
        for k, c in enumerate(clusters)
    ]


def selected_split(per_cluster: Sequence[Mapping[str, Any]], variants: Sequence[str] = ("targeted", "untargeted")
                   ) -> dict[str, dict[str, float]]:
    """Each student's gain over the current model on the held-out queries nearest to the selected
    clusters, and nearest to the others, as shares of the whole held-out frontier cost (so the two add
    up to the student's cost-reduction gain)."""
    total = sum(c["eval_frontier_usd"] for c in per_cluster) or 1.0
    return {v: {"selected": float(sum(c[f"{v}_gain_usd"] for c in per_cluster if c["selected"]) / total),
                "other": float(sum(c[f"{v}_gain_usd"] for c in per_cluster if not c["selected"]) / total)}
            for v in variants}
