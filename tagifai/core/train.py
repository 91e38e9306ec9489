"""Train the TF-IDF + SGD model epoch by epoch, and score params by cross-validation.

Pure: frames and params in, fitted model and history out. `tagifai.pipeline.steps` does the logging.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from imblearn.over_sampling import RandomOverSampler
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import FeatureUnion

from tagifai.core.evaluate import weighted_scores
from tagifai.core.ngrams import features
from tagifai.model import TagifaiModel

# Called after every cross-validation fold with (fold, mean f1 of the folds so far); may raise to stop.
FoldCallback = Callable[[int, float], None]

PARAM_TYPES = {
    "analyzer": str,
    "ngram_max_range": int,
    "sublinear_tf": bool,
    "word_features": bool,
    "stem": bool,
    "alpha": float,
    "learning_rate": float,
    "num_epochs": int,
    "threshold_quantile": float,
    "seed": int,
    "max_features": int,
}


def coerce_params(params: dict[str, Any]) -> dict[str, Any]:
    """Cast known params to their types (MLflow hands params back as strings)."""
    coerced = dict(params)
    for name, kind in PARAM_TYPES.items():
        if name in coerced and isinstance(coerced[name], str):
            value = coerced[name]
            coerced[name] = value.lower() == "true" if kind is bool else kind(float(value) if kind is int else value)
    return coerced


def build_vectorizer(params: dict[str, Any]) -> FeatureUnion:
    """Character n-gram TF-IDF, plus word uni/bi-grams when `word_features` is on.

    Each part keeps at most `max_features` n-grams, the most frequent (params recorded before there was
    a bound have none: every n-gram, as they were trained).
    """
    tfidf = functools.partial(
        TfidfVectorizer, sublinear_tf=params["sublinear_tf"], max_features=params.get("max_features")
    )
    parts = [("char", tfidf(analyzer=params["analyzer"], ngram_range=(2, params["ngram_max_range"])))]
    if params.get("word_features"):
        parts.append(("word", tfidf(analyzer="word", ngram_range=(1, 2))))
    return FeatureUnion(parts)


def find_threshold(y_prob: np.ndarray, quantile: float) -> float:
    """The `quantile` of the top-class probabilities: below it a prediction becomes `other`."""
    return float(np.quantile(y_prob.max(axis=1), q=quantile))


def cross_entropy(y_true: np.ndarray, y_prob: np.ndarray, classes: np.ndarray) -> float:
    """Mean log loss of `y_prob` (columns in `classes` order) against the labels `y_true`.

    Raises:
        ValueError: a label is not one of `classes`.
    """
    columns = pd.Index(classes).get_indexer(y_true)
    if (columns < 0).any():
        raise ValueError(f"labels not seen in training: {sorted(set(y_true) - set(classes))}")
    probabilities = y_prob[np.arange(len(columns)), columns]
    return float(-np.log(np.clip(probabilities, 1e-15, 1.0)).mean())


def train(
    params: dict[str, Any],
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    stopwords: list[str],
    other_label: str = "other",
    n_jobs: int | None = None,
) -> dict[str, Any]:
    """Fit vectorizer and classifier on `train_df`; pick the threshold on, and score, `val_df`.

    `params` are the `[train]` settings (`config/tagifai.toml`); the frames have `title`, `description`, `tag`.
    `n_jobs`: threads fitting the classifier's one-vs-rest problems side by side (-1: a thread per core).
    Each problem has its own seed, so the model is the same whatever the number, and it is not kept.

    Returns:
        `model` (a `TagifaiModel`), `history` (per-epoch train/val loss), `threshold`, `val` scores, `params`.
    """
    params = coerce_params(params)
    model = TagifaiModel(build_vectorizer(params), None, [], 0.0, other_label, stopwords, params.get("stem", False))
    x_train = model.vectorizer.fit_transform(model.clean(train_df))
    x_val = features(model.vectorizer, model.clean(val_df))
    y_train, y_val = train_df["tag"].to_numpy(), val_df["tag"].to_numpy()

    # Oversample minority classes. The sampler draws the rows from the labels alone; taking them from the
    # matrix here copies it once (imblearn's own resampling held two copies at once: 0.5 GB at 100k projects).
    sampler = RandomOverSampler(sampling_strategy="all", random_state=params["seed"])
    sampler.fit_resample(np.zeros((len(y_train), 1)), y_train)
    x_over, y_over = x_train[sampler.sample_indices_], y_train[sampler.sample_indices_]

    classifier = SGDClassifier(
        loss="log_loss",
        penalty="l2",
        alpha=params["alpha"],
        learning_rate="constant",
        eta0=params["learning_rate"],
        max_iter=1,
        warm_start=True,
        random_state=params["seed"],
        n_jobs=n_jobs,
    )
    history = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # one pass per fit is the point
        for epoch in range(params["num_epochs"]):
            classifier.fit(x_over, y_over)
            train_loss = cross_entropy(y_train, classifier.predict_proba(x_train), classifier.classes_)
            val_loss = cross_entropy(y_val, classifier.predict_proba(x_val), classifier.classes_)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})

    classifier.n_jobs = None  # how it was fitted, not what it is: the saved model is the same either way
    model.classifier = classifier
    model.classes = [str(c) for c in classifier.classes_]
    y_prob = classifier.predict_proba(x_val)
    model.threshold = find_threshold(y_prob, params["threshold_quantile"])
    return {
        "model": model,
        "history": history,
        "threshold": model.threshold,
        "val": weighted_scores(y_val, model.labels(y_prob)),
        "params": params,
    }


def tuning_budget(
    df: pd.DataFrame, max_rows: int, cv_max_rows: int, num_folds: int, seed: int
) -> tuple[pd.DataFrame, int, str]:
    """What each tuning trial of `df` (the train split) costs at most: its rows, its folds, and a line saying so.

    At most `max_rows` rows (0: no limit): a sample stratified by `tag` when `df` is larger, so every class
    keeps its share. Every one of `num_folds` folds while those rows are at most `cv_max_rows`; above, only
    the first (trained on the rest, scored on it). So a trial costs the same at 10k or a million projects.
    """
    rows, how = df, f"all {len(df)} train rows"
    if max_rows and len(df) > max_rows:
        try:
            rows, _ = train_test_split(df, train_size=max_rows, stratify=df["tag"], random_state=seed)
        except ValueError:  # a class too small to stratify: a plain sample
            rows = df.sample(n=max_rows, random_state=seed)
        rows = rows.sort_index()
        how = f"a stratified sample of {max_rows} of {len(df)} train rows ([optimize] max_rows)"
    if len(rows) > cv_max_rows:
        return rows, 1, f"{how}, one of {num_folds} folds per trial (above [optimize] cv_max_rows)"
    return rows, num_folds, f"{how}, {num_folds} folds per trial"


def cross_validate(
    params: dict[str, Any],
    df: pd.DataFrame,
    stopwords: list[str],
    other_label: str = "other",
    num_folds: int = 5,
    on_fold: FoldCallback | None = None,
    folds_run: int | None = None,
) -> dict[str, Any]:
    """Score `params` by stratified `num_folds`-fold cross-validation of `train` over `df` (the train split).

    Each fold trains on the other folds; its threshold comes from, and it is scored on, its held-out rows,
    as `train` does with the val split. A steadier objective than one small val split. The params' `seed`
    also shuffles the folds; `on_fold` is called after each fold (e.g. to report to Optuna and prune).
    `folds_run`: only the first so many folds (a tuning budget, `tuning_budget`); None: all.

    Returns:
        Mean held-out `precision`, `recall`, `f1`, the standard deviation `f1_std`, `folds` (scores per fold)
        and `history` (per-epoch train/val loss, averaged over the folds).
    """
    params = coerce_params(params)
    splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=params["seed"])
    folds, histories = [], []
    for fold, (train_index, val_index) in enumerate(itertools.islice(splitter.split(df, df["tag"]), folds_run)):
        result = train(params, df.iloc[train_index], df.iloc[val_index], stopwords, other_label)
        folds.append(result["val"])
        histories.append(result["history"])
        if on_fold is not None:
            on_fold(fold, float(np.mean([scores["f1"] for scores in folds])))
    means = {name: float(np.mean([scores[name] for scores in folds])) for name in ("precision", "recall", "f1")}
    history = [
        {"epoch": epoch, **{k: float(np.mean([h[epoch][k] for h in histories])) for k in ("train_loss", "val_loss")}}
        for epoch in range(len(histories[0]))
    ]
    return {**means, "f1_std": float(np.std([scores["f1"] for scores in folds])), "folds": folds, "history": history}
