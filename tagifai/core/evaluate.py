"""Score a model on held-out data: overall, per class, on snorkel slices, and behaviorally."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from tagifai.core.data import compose_text

# text -> predicted tag, for a batch of texts
PredictFn = Callable[[list[str]], list[str]]

# Behavioral checks (Ribeiro et al., "Beyond Accuracy"): (kind, inputs, expectation).
# invariance: both texts get the same tag; directional/minimum functionality: text gets the tag.
BEHAVIORAL_CASES: list[dict[str, Any]] = [
    {
        "kind": "invariance",
        "texts": [
            "Transformers applied to NLP have revolutionized machine learning.",
            "Transformers applied to NLP have disrupted machine learning.",
        ],
    },
    {"kind": "invariance", "texts": ["CNN for images", "convnet for images"]},
    {"kind": "directional", "texts": ["ML applied to text classification."], "expected": "natural-language-processing"},
    {"kind": "directional", "texts": ["ML applied to image classification."], "expected": "computer-vision"},
    {"kind": "directional", "texts": ["CNNs for text classification."], "expected": "natural-language-processing"},
    {
        "kind": "minimum_functionality",
        "texts": ["Natural language processing is the next big wave in machine learning."],
        "expected": "natural-language-processing",
    },
    {
        "kind": "minimum_functionality",
        "texts": ["MLOps is the next big wave in machine learning."],
        "expected": "mlops",
    },
    {"kind": "minimum_functionality", "texts": ["This is about the weather today."], "expected": "other"},
]


def weighted_scores(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Weighted precision, recall and f1."""
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def overall_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """Weighted precision, recall, f1 and the number of samples."""
    return {**weighted_scores(y_true, y_pred), "num_samples": float(len(y_true))}


def per_class_metrics(y_true: Any, y_pred: Any, classes: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, f1 and support for each class."""
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    return {
        c: {"precision": float(p), "recall": float(r), "f1": float(f), "num_samples": float(n)}
        for c, p, r, f, n in zip(classes, precision, recall, f1, support, strict=True)
    }


def slicing_functions() -> list[Any]:
    """The snorkel slices we report on (imported lazily: snorkel pulls in torch)."""
    from snorkel.slicing import slicing_function

    @slicing_function()
    def nlp_cnn(x: Any) -> bool:
        """NLP projects that use convolution."""
        text = x.text.lower()
        return x.tag == "natural-language-processing" and ("cnn" in text.split() or "convolution" in text)

    @slicing_function()
    def short_text(x: Any) -> bool:
        """Projects with fewer than 8 words of title and description."""
        return len(x.text.split()) < 8

    return [nlp_cnn, short_text]


def slice_metrics(df: pd.DataFrame, y_pred: Any) -> dict[str, dict[str, float]]:
    """Weighted metrics on each snorkel slice of `df` (`title`, `description`, `tag`)."""
    from snorkel.slicing import PandasSFApplier

    frame = pd.DataFrame({"text": compose_text(df).to_numpy(), "tag": df["tag"].to_numpy()})
    functions = slicing_functions()
    slices = PandasSFApplier(functions).apply(frame, progress_bar=False)
    y_true, y_pred = frame["tag"].to_numpy(), np.asarray(y_pred)
    empty = {"precision": math.nan, "recall": math.nan, "f1": math.nan, "num_samples": 0.0}
    masks = {sf.name: slices[sf.name].astype(bool) for sf in functions}
    return {name: overall_metrics(y_true[m], y_pred[m]) if m.any() else dict(empty) for name, m in masks.items()}


def behavioral_tests(predict: PredictFn, cases: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run invariance, directional and minimum-functionality checks through `predict`.

    Returns:
        `results` (one per case, with the predictions and `passed`) and `pass_rate`.
    """
    cases = BEHAVIORAL_CASES if cases is None else cases
    results = []
    for case in cases:
        predicted = list(predict(case["texts"]))
        passed = (
            len(set(predicted)) == 1 if case["kind"] == "invariance" else all(p == case["expected"] for p in predicted)
        )
        results.append({**case, "predicted": predicted, "passed": passed})
    rate = sum(r["passed"] for r in results) / len(results) if results else 1.0
    return {"results": results, "pass_rate": rate}


def evaluate(df: pd.DataFrame, y_pred: Any, classes: list[str]) -> dict[str, Any]:
    """All metrics for predictions `y_pred` on `df`.

    Returns:
        `overall`, `per_class`, `slices`, and the `confusion_matrix` (rows: true, cols: predicted).
    """
    y_true = df["tag"].to_numpy()
    return {
        "overall": overall_metrics(y_true, y_pred),
        "per_class": per_class_metrics(y_true, y_pred, classes),
        "slices": slice_metrics(df, y_pred),
        "confusion_matrix": {"labels": classes, "matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist()},
    }


def flat_metrics(report: dict[str, Any], prefix: str = "test") -> dict[str, float]:
    """Flatten a report into MLflow metric names (test_f1, test_f1_<class>, slice_<name>_f1, …)."""
    metrics = {f"{prefix}_{k}": v for k, v in report["overall"].items()}
    for cls, values in report["per_class"].items():
        metrics.update({f"{prefix}_{k}_{cls}": v for k, v in values.items()})
    for name, values in report["slices"].items():
        metrics.update({f"slice_{name}_{k}": v for k, v in values.items() if not np.isnan(v)})
    return metrics


def plot_confusion_matrix(report: dict[str, Any]) -> Any:
    """A matplotlib figure of the confusion matrix."""
    from matplotlib.figure import Figure  # not pyplot: no backend to pick, no figure left open

    labels, matrix = report["confusion_matrix"]["labels"], np.array(report["confusion_matrix"]["matrix"])
    fig = Figure(figsize=(6, 5), layout="tight")
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test)")
    return fig


def plot_per_class_f1(report: dict[str, Any]) -> Any:
    """A matplotlib bar chart of f1 per class."""
    from matplotlib.figure import Figure  # not pyplot: no backend to pick, no figure left open

    per_class = report["per_class"]
    fig = Figure(figsize=(6, 4), layout="tight")
    ax = fig.subplots()
    ax.barh(list(per_class), [v["f1"] for v in per_class.values()], color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_xlabel("f1")
    ax.set_title(f"Per-class f1 (test; weighted f1 {report['overall']['f1']:.3f})")
    return fig
