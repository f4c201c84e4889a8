"""ROC, precision-recall and efficiency-curve figures for a scored pool (PNG artifacts)."""

from __future__ import annotations

import numpy as np


def curve_figures(labels: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> dict:
    """Figures keyed ``roc``, ``pr``, ``efficiency``; empty when the pool holds a single class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    from anomalymatch.metrics import auroc, average_precision, efficiency_curve

    labels = np.asarray(labels)
    if labels.min(initial=0) == labels.max(initial=0):
        return {}
    figures = {}
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUROC {auroc(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    figures["roc"] = fig

    precision, recall, _ = precision_recall_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(recall, precision, label=f"AUPRC {average_precision(labels, scores):.3f}")
    ax.axhline(labels.mean(), ls="--", c="grey", lw=0.8, label="chance")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    ax.legend(loc="upper right")
    figures["pr"] = fig

    inspected, found = efficiency_curve(labels, scores, ids)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(inspected * 100, found * 100)
    ax.plot([0, 100], [0, 100], ls="--", c="grey", lw=0.8, label="random")
    ax.set(
        xscale="symlog",
        xlabel="% of pool inspected (top scores first)",
        ylabel="% of anomalies found",
        title="Efficiency curve",
    )
    ax.legend(loc="lower right")
    figures["efficiency"] = fig
    for f in figures.values():
        f.tight_layout()
    plt.close("all")
    return figures
