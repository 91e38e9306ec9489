"""The settings' schema: every section and key of `config/tagifai.toml`, typed and bounded.

An unknown key (a typo), a value of the wrong type (`min_f1 = "0.9"`) or a number that is not finite
(`min_f1 = nan`) is refused when the settings are read (`tagifai.contract.config`), before anything
runs, with one line naming the key and the file. Nothing is coerced: TOML says what a value is.
Pydantic only (Airflow itself requires it), so the DAGs validate the same way the commands do.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tagifai.contract.errors import BadInputError

Fraction = Annotated[float, Field(ge=0, le=1)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]
Positive = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Analyzer = Literal["char", "char_wb"]
# The `[train]` params an `[optimize]` space may search.
SEARCHABLE = (
    "analyzer", "ngram_max_range", "sublinear_tf", "word_features", "stem", "alpha", "learning_rate", "num_epochs",
    "threshold_quantile",
)  # fmt: skip
STEPS = (
    "elt", "validate", "optimize", "train", "evaluate", "register", "decide", "predict-batch", "checksum", "monitor",
    "maintain",
)  # fmt: skip


class Section(BaseModel):
    """A settings table: no key it does not know, no coercion, no NaN or infinity, read-only."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class Data(Section):
    """`[data]`: the pinned sources, fetch bounds, the labels and the split."""

    projects_url: Name
    tags_url: Name
    max_bytes: Count
    fetch_deadline_seconds: Positive
    known_tags: Annotated[list[Name], Field(min_length=1)]
    accepted_tags: Annotated[list[Name], Field(min_length=1)]
    min_freq: Count
    other_label: Name
    val_size: OpenFraction
    test_size: OpenFraction
    seed: int


class Validate(Section):
    """`[validate]`: the data contract's sizes, the label-signal check and the drift test's significance."""

    min_rows: Count
    min_rows_per_class: Count
    min_classes: Annotated[int, Field(ge=2)]
    signal_check: bool
    signal_folds: Annotated[int, Field(ge=2)]
    signal_permutations: Count
    signal_min_lift: OpenFraction
    drift_alpha: OpenFraction


class Train(Section):
    """`[train]`: the params used when no tuning is given."""

    analyzer: Analyzer
    ngram_max_range: Count
    sublinear_tf: bool
    word_features: bool
    stem: bool
    alpha: Positive
    learning_rate: Positive
    num_epochs: Count
    threshold_quantile: Fraction
    seed: int
    # The most n-grams each TF-IDF part keeps (the most frequent): bounds the model and its memory.
    max_features: Count


def _range(kind: type) -> object:
    """A search range `[low, high]` of `kind`."""
    return Annotated[list[kind], Field(min_length=2, max_length=2)]


class Optimize(Section):
    """`[optimize]`: the study (trials, workers, folds, pruning, heartbeats) and its search space."""

    num_trials: Count
    num_workers: Count
    cv_folds: Annotated[int, Field(ge=2)]
    # The tuning budget: trials cross-validate a stratified sample of at most this many train rows (0: all),
    # all cv_folds folds up to cv_max_rows rows, only the first above.
    max_rows: Annotated[int, Field(ge=0)]
    cv_max_rows: Count
    # The search space: a range [low, high] or a list of choices per `[train]` param it searches.
    analyzer: Annotated[list[Analyzer], Field(min_length=1)] | None = None
    ngram_max_range: _range(Annotated[int, Field(ge=1)]) | None = None  # type: ignore[valid-type]
    sublinear_tf: Annotated[list[bool], Field(min_length=1)] | None = None
    word_features: Annotated[list[bool], Field(min_length=1)] | None = None
    stem: Annotated[list[bool], Field(min_length=1)] | None = None
    alpha: _range(Positive) | None = None  # type: ignore[valid-type]
    learning_rate: _range(Positive) | None = None  # type: ignore[valid-type]
    num_epochs: _range(Count) | None = None  # type: ignore[valid-type]
    threshold_quantile: _range(Fraction) | None = None  # type: ignore[valid-type]
    pruner_startup_trials: Annotated[int, Field(ge=0)]
    pruner_warmup_folds: Annotated[int, Field(ge=0)]
    heartbeat_seconds: Positive
    grace_seconds: Positive
    threads_per_trial: Count
    seed: int

    def search_space(self) -> dict[str, list]:
        """The `[train]` params this space searches, each with its range or choices."""
        return {name: getattr(self, name) for name in SEARCHABLE if getattr(self, name) is not None}


class Register(Section):
    """`[register]`: the registered model, the deployer's promotion gate and who approves a promotion."""

    model_name: Annotated[str, Field(pattern=r"^[\w.-]{1,100}$")]
    min_f1: Fraction
    max_regression: Fraction
    history_experiment: Name
    # The deployer's golden set (both or neither; empty: the test split of the deployment's own data).
    holdout_projects_url: str
    holdout_tags_url: str
    # "human": a person approves (or not) each promotion the gate decides; unanswered for so long: not promoted.
    approval: Literal["auto", "human"] = "auto"
    approval_timeout_hours: Positive = 72

    @model_validator(mode="after")
    def _holdout_pair(self) -> Register:
        """Both holdout sources, or neither."""
        if bool(self.holdout_projects_url) != bool(self.holdout_tags_url):
            raise ValueError("holdout_projects_url and holdout_tags_url name one golden set: set both or neither")
        return self


class Limits(Section):
    """`[limits]`: what no run may exceed, whatever its params say."""

    max_trials: Count
    max_workers: Count
    step_minutes: dict[Literal[STEPS], Positive]  # type: ignore[valid-type]
    run_minutes: Positive
    step_memory: Annotated[str, Field(pattern=r"^[1-9][0-9]*[kmg]?$")]
    # Steps not listed ask for one CPU.
    step_cpu_request: dict[Literal[STEPS], Annotated[float, Field(ge=0.01, le=64)]]  # type: ignore[valid-type]


class Retry(Section):
    """`[retry]`: how a step that failed with an error that may pass is tried again."""

    retries: Annotated[int, Field(ge=0, le=10)]
    delay_seconds: Positive
    max_delay_minutes: Positive


class Serve(Section):
    """`[serve]`: the alias `tagifai serve` follows, how often it looks, its port, and what it takes on at most."""

    alias: Annotated[str, Field(pattern=r"^[\w-]{1,100}$")]
    poll_seconds: Positive
    port: Annotated[int, Field(ge=1, le=65535)]
    max_connections: Count
    request_seconds: Positive
    max_body_bytes: Count
    max_bodies_bytes: Count
    max_rows: Count


class Predict(Section):
    """`[predict]`: batch scoring's source and experiment."""

    source: str
    experiment_name: Name
    # Rows scored and written at a time: memory stays flat in the number of rows.
    batch_rows: Count


class Watch(Section):
    """`[watch]`: how often the watcher reads the training data."""

    interval_seconds: Positive


class Notify(Section):
    """`[notify]`: when a run is late enough to tell someone (the channels are the environment's)."""

    run_deadline_minutes: Positive
    watch_missed_intervals: Count


class Monitor(Section):
    """`[monitor]`: what `tagifai serve` logs of its requests, and how `tagifai monitor` judges drift."""

    # The inference log (serve): the share of requests logged, rows waiting for the writer at most (more
    # are dropped and counted), rows per INSERT.
    sample_rate: Fraction
    queue_rows: Count
    batch_rows: Count
    # The drift monitor: its experiment, the window it judges, and the fewest rows it judges at all.
    experiment_name: Name
    window_hours: Positive
    min_rows: Count
    # A prediction below this probability is low-confidence.
    low_confidence: OpenFraction
    # Drift: a column's distribution differs (Evidently's test, at this significance) in at least
    # drift_share of the columns it compares, or the low-confidence share grew by more than max_low_confidence_rise.
    drift_alpha: OpenFraction
    drift_share: OpenFraction
    max_low_confidence_rise: Fraction
    # A drift event (Asset `tagifai_drift`) starts tagifai_training when this is true.
    retrain_on_drift: bool


class Lineage(Section):
    """`[lineage]`: the OpenLineage namespace of the stack's jobs and datasets, and where events go by default."""

    namespace: Name
    # In the Airflow containers (the `lineage` volume); TAGIFAI_LINEAGE_URL (.env): an HTTP collector instead.
    file_path: Name


class Retention(Section):
    """`[retention]`: what `tagifai_maintenance` keeps (days, versions)."""

    deleted_days: Annotated[float, Field(ge=0)]
    run_days: Annotated[float, Field(ge=0)]
    keep_versions: Count
    inference_days: Annotated[float, Field(ge=0)]
    airflow_days: Annotated[float, Field(ge=0)]
    log_days: Annotated[float, Field(ge=0)]


class Reproduce(Section):
    """`[reproduce]`: where `tagifai reproduce` logs its attempts."""

    experiment_name: Name


class Mlflow(Section):
    """`[mlflow]`: the experiments a training run may use, and the embedded store when no tracking URI is set."""

    experiment_name: Name
    experiments: list[Name] = []
    local_store: Name

    def choices(self) -> list[str]:
        """The experiments a training run may log to: `experiment_name` (the default) first, then `experiments`."""
        return list(dict.fromkeys([self.experiment_name, *self.experiments]))

    def experiment(self, name: str | None) -> str:
        """`name` (None: the default) if the deployer listed it.

        Raises:
            BadInputError: the deployer did not list `name`.
        """
        if name is None or name in self.choices():
            return name or self.experiment_name
        listed = ", ".join(map(repr, self.choices()))
        raise BadInputError(f"experiment {name!r} is not one this deployment lists ([mlflow] experiments: {listed})")


# `register` is also ABCMeta's classmethod (pydantic warns of the shadow); on a settings object it is the field.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class Settings(Section):
        """All settings. `stopwords` comes from `config/stopwords.txt`, not from the TOML."""

        data: Data
        # `[validate]` (a BaseModel method is named `validate`).
        validation: Validate = Field(alias="validate")
        train: Train
        optimize: Optimize
        register: Register
        limits: Limits
        retry: Retry
        serve: Serve
        predict: Predict
        watch: Watch
        notify: Notify
        monitor: Monitor
        lineage: Lineage
        retention: Retention
        reproduce: Reproduce
        mlflow: Mlflow
        stopwords: tuple[str, ...] = ()

        def as_dict(self) -> dict:
            """The settings as the TOML names them (sections of plain values): what reuse keys hash."""
            return self.model_dump(by_alias=True)
