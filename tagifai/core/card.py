"""The model card: the markdown description of a registered model version (MLflow renders it).

Pure: the caller gathers a `Card` from MLflow (the version, its runs and their artifacts) and sets
`render(card)` as the version's description. Every part but `model` is optional; a part that is
missing leaves its section (or line) out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Required, TypedDict

from tagifai.contract.sources import redact

# What each snorkel slice of `tagifai.core.evaluate.slicing_functions` holds.
SLICE_DESCRIPTIONS = {
    "nlp_cnn": "NLP projects that use convolution",
    "short_text": "fewer than 8 words of title and description",
}

INTENDED_USE = (
    "Tags machine-learning project descriptions (a title and a description) as "
    "`natural-language-processing`, `computer-vision`, `mlops` or `other`, to triage and recommend "
    "projects on a site like [Made-With-ML](https://madewithml.com). It is not meant for other domains, "
    "for text that is not English, or for any decision about people. When the model is not confident "
    "(the top class probability is below its threshold{threshold}), it answers `{other}`."
)


class ModelInfo(TypedDict, total=False):
    """The registered version: `name` and `version` are required, the rest shown when given."""

    name: Required[str]
    version: Required[str | int]
    created: str  # when the version was registered, as the caller formats it
    code_version: str  # e.g. the git commit or package version that trained it
    image: str  # the container image the steps ran in
    pipeline_run_id: str  # the Airflow run (or manual pipeline id) that made it


class DataInfo(TypedDict, total=False):
    """The data the model learned from (the elt and validate runs)."""

    projects_url: str  # credentials are redacted when rendered
    tags_url: str
    sha256: str  # of the labeled data
    rows: int  # labeled rows in all
    splits: dict[str, int]  # rows per split: train, val, test
    label_counts: dict[str, int]  # rows per label after `min_freq`
    accepted_tags: list[str]
    min_freq: int


class Card(TypedDict, total=False):
    """Everything the card shows; only `model` is required.

    `metrics` is `tagifai.core.evaluate.evaluate()`'s report (`overall`, `per_class`, `slices`; the
    confusion matrix is not shown) and `behavioral` is `behavioral_tests()`'s (`results`,
    `pass_rate`). `links` maps a run's role (train, evaluate, validate, register, …) to its MLflow UI
    URL or, without a UI, its run id; they are shown in the order given. `promotion` is the gate's
    reason, `promoted` whether it made the version champion, `approval` who decides it ("auto": the
    gate; "pending": a person, not yet; or the person's decision). `report` is the challenger-vs-champion
    report's MLflow UI link (relative: `#/experiments/<id>/runs/<register run>/artifacts/<path>`), and
    `monitoring` the MLflow UI list of the drift monitor's runs that judged this version (relative too), and
    `reproductions` the list of `tagifai reproduce`'s attempts to rebuild it (relative too).
    """

    model: Required[ModelInfo]
    data: DataInfo
    metrics: dict[str, Any]
    behavioral: dict[str, Any]
    params: dict[str, Any]
    threshold: float
    other_label: str
    links: dict[str, str]
    promotion: str
    promoted: bool
    approval: str
    report: str
    monitoring: str
    reproductions: str


# ---- formatting ---------------------------------------------------------------------------------


def num(value: float) -> str:
    """A metric with 4 decimals."""
    return f"{float(value):.4f}"


def one_line(text: Any) -> str:
    """`text` on one line (whitespace runs collapsed)."""
    return " ".join(str(text).split())


def cell(value: Any) -> str:
    """`value` as one markdown table cell: on one line, `|` escaped."""
    return one_line(value).replace("|", "\\|")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table, each cell escaped."""
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(map(cell, row)) + " |" for row in rows]


def param_value(value: Any) -> str:
    """A hyperparameter as people write it: 1e-05 stays 1e-05, lists are comma-separated."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(map(param_value, value))
    return str(value)


def has_samples(values: Mapping[str, float]) -> bool:
    """True when a slice holds rows (and so has an f1)."""
    return values.get("num_samples", 0) > 0 and not math.isnan(values.get("f1", math.nan))


def link(target: str) -> str:
    """A markdown link for a URL (named by its last path part: an MLflow run's id), code for a bare run id."""
    if not re.match(r"https?://", target):
        return f"`{target}`"
    url = redact(target)
    return f"[{url.rstrip('/').rsplit('/', 1)[-1]}]({url})"


# ---- sections -----------------------------------------------------------------------------------


def model_section(model: ModelInfo) -> list[str]:
    """The registered version and where it came from."""
    fields = [("name", "name"), ("version", "version"), ("created", "created"), ("code version", "code_version")]
    fields += [("image", "image"), ("pipeline run", "pipeline_run_id")]
    rows = [(label, model[key]) for label, key in fields if model.get(key) not in (None, "")]
    return ["## Model", "", *table(["field", "value"], rows)]


def intended_use_section(card: Card) -> list[str]:
    """The fixed statement of what the model is for, and the threshold behavior."""
    threshold = f", {num(card['threshold'])}" if card.get("threshold") is not None else ""
    other = card.get("other_label") or "other"
    return ["## Intended use", "", INTENDED_USE.format(threshold=threshold, other=other)]


def data_section(data: DataInfo) -> list[str]:
    """Sources (credentials redacted), the data hash, row counts and labels."""
    lines = []
    for label, key in (("Projects", "projects_url"), ("Tags", "tags_url")):
        if data.get(key):
            lines.append(f"- {label}: `{redact(data[key])}`")
    if data.get("sha256"):
        lines.append(f"- Labeled data sha256: `{data['sha256']}`")
    if data.get("rows") is not None or data.get("splits"):
        splits = " · ".join(f"{name} {int(n)}" for name, n in (data.get("splits") or {}).items())
        total = f"{int(data['rows'])}" if data.get("rows") is not None else ""
        lines.append("- Rows: " + (f"{total} ({splits})" if total and splits else total or splits))
    if data.get("accepted_tags"):
        rare = f", and these when seen fewer than {data['min_freq']} times," if data.get("min_freq") is not None else ""
        lines.append(f"- Accepted tags: {', '.join(data['accepted_tags'])} (other tags{rare} become `other`)")
    elif data.get("min_freq") is not None:
        lines.append(f"- min_freq: {data['min_freq']}")
    if data.get("label_counts"):
        lines += ["", *table(["label", "rows"], [(tag, int(n)) for tag, n in data["label_counts"].items()])]
    return ["## Data", "", *lines] if lines else []


def metrics_section(metrics: Mapping[str, Any], behavioral: Mapping[str, Any] | None) -> list[str]:
    """Overall, per-class and slice scores on the held-out test split, and the behavioral pass rate."""
    lines = []
    if overall := metrics.get("overall"):
        samples = f" ({int(overall['num_samples'])} rows)" if "num_samples" in overall else ""
        lines += [f"Weighted, on the held-out test split{samples}:", ""]
        lines += table(["precision", "recall", "f1"], [[num(overall[k]) for k in ("precision", "recall", "f1")]])
        lines.append("")
    if per_class := metrics.get("per_class"):
        rows = [
            (name, *(num(v[k]) for k in ("precision", "recall", "f1")), int(v.get("num_samples", 0)))
            for name, v in per_class.items()
        ]
        lines += ["Per class:", "", *table(["class", "precision", "recall", "f1", "support"], rows), ""]
    if slices := metrics.get("slices"):
        rows = [(name, SLICE_DESCRIPTIONS.get(name, ""), *slice_cells(v)) for name, v in slices.items()]
        lines += ["Slices (snorkel):", "", *table(["slice", "what", "f1", "samples"], rows), ""]
    if behavioral and behavioral.get("results") is not None:
        results = behavioral["results"]
        passed = sum(bool(r["passed"]) for r in results)
        lines += [f"Behavioral tests: pass rate {num(behavioral['pass_rate'])} ({passed} of {len(results)} cases)", ""]
    return ["## Metrics", "", *lines[:-1]] if lines else []


def slice_cells(values: Mapping[str, float]) -> tuple[str, str]:
    """The f1 and sample count of a slice, or "no samples"."""
    if not has_samples(values):
        return "no samples", "0"
    return num(values["f1"]), str(int(values["num_samples"]))


def params_section(params: Mapping[str, Any]) -> list[str]:
    """The training hyperparameters, by name."""
    rows = [(name, param_value(params[name])) for name in sorted(params)]
    return ["## Parameters", "", *table(["parameter", "value"], rows)] if rows else []


def weakest(scores: Mapping[str, Mapping[str, float]]) -> tuple[str, Mapping[str, float]] | None:
    """The entry with the lowest f1 (ties: first by name), ignoring ones without samples."""
    scored = [(name, v) for name, v in scores.items() if has_samples(v)]
    return min(scored, key=lambda item: (item[1]["f1"], item[0]), default=None)


def weaknesses_section(card: Card) -> list[str]:
    """Failed behavioral cases, the weakest slice and class, and what the threshold does."""
    lines = []
    behavioral, metrics = card.get("behavioral"), card.get("metrics") or {}
    if failed := [r for r in (behavioral or {}).get("results", []) if not r["passed"]]:
        rows = [
            (
                r["kind"],
                " / ".join(f'"{one_line(t)}"' for t in r["texts"]),
                r.get("expected") or "the same tag for all",
                ", ".join(map(str, r["predicted"])),
            )
            for r in failed
        ]
        lines += ["Failed behavioral tests:", "", *table(["kind", "texts", "expected", "predicted"], rows), ""]
    elif behavioral and behavioral.get("results"):
        lines += [f"All {len(behavioral['results'])} behavioral tests passed.", ""]
    if found := weakest(metrics.get("slices") or {}):
        name, v = found
        lines.append(f"- Weakest slice: `{name}`, f1 {num(v['f1'])} on {int(v['num_samples'])} rows")
    if found := weakest(metrics.get("per_class") or {}):
        name, v = found
        lines.append(f"- Weakest class: `{name}`, f1 {num(v['f1'])} (support {int(v['num_samples'])})")
    if card.get("threshold") is not None:
        lines.append(
            f"- Threshold {num(card['threshold'])}: a project whose top class probability is below it is "
            f"tagged `{card.get('other_label') or 'other'}`, even when its best guess is right"
        )
    if lines and not lines[-1]:
        lines.pop()
    return ["## Known weaknesses", "", *lines] if lines else []


def links_section(
    links: Mapping[str, str], monitoring: str | None = None, reproductions: str | None = None
) -> list[str]:
    """The runs behind the version (MLflow UI links, or run ids), the monitor's runs on it, attempts to rebuild it."""
    rows = [f"- {role}: {link(target)}" for role, target in links.items() if target]
    if monitoring:
        rows.append(f"- drift monitor: [its reports on this version]({monitoring.replace(')', '%29')})")
    if reproductions:
        rows.append(f"- reproduce: [attempts to rebuild it]({reproductions.replace(')', '%29')})")
    return ["## Runs", "", *rows] if rows else []


def promotion_section(card: Card) -> list[str]:
    """The promotion gate's decision, a person's if one decides, and the report behind them."""
    if not card.get("promotion"):
        return []
    verdict = {True: "**Promoted to champion.** ", False: "**Not promoted.** "}.get(card.get("promoted"), "")
    lines = ["## Promotion", "", verdict + one_line(card["promotion"])]
    if card.get("approval") not in (None, "", "auto"):
        lines += ["", f"Approval by a person: {one_line(card['approval'])}."]
    if report := card.get("report"):
        lines += ["", f"Evidence: the [challenger-vs-champion report]({report.replace(')', '%29')})."]
    return lines


# ---- the card -----------------------------------------------------------------------------------


def render(card: Card) -> str:
    """Render a model card (see `Card`) as markdown, ending with a newline."""
    model = card["model"]
    sections = [
        [f"# {model['name']} v{model['version']}", "", summary_line(card)],
        model_section(model),
        intended_use_section(card),
        data_section(card.get("data") or {}),
        metrics_section(card.get("metrics") or {}, card.get("behavioral")),
        params_section(card.get("params") or {}),
        weaknesses_section(card),
        links_section(card.get("links") or {}, card.get("monitoring"), card.get("reproductions")),
        promotion_section(card),
    ]
    return "\n\n".join("\n".join(section) for section in sections if section) + "\n"


def summary_line(card: Card) -> str:
    """One line for the CLI: `tagifai v3 · test f1 0.8510 · data 1a2b3c4d5e6f · pipeline scheduled__…`."""
    model = card["model"]
    parts = [f"{model['name']} v{model['version']}"]
    overall = (card.get("metrics") or {}).get("overall") or {}
    if overall.get("f1") is not None:
        parts.append(f"test f1 {num(overall['f1'])}")
    if sha := (card.get("data") or {}).get("sha256"):
        parts.append(f"data {sha[:12]}")
    if model.get("pipeline_run_id"):
        parts.append(f"pipeline {model['pipeline_run_id']}")
    return one_line(" · ".join(parts))
