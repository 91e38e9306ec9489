"""The challenger-vs-champion report: the evidence in front of whoever approves a promotion (markdown).

Pure: `tagifai.pipeline.reports` gathers a `Report` from MLflow (both models scored on the same test
split and holdout) and `render` makes it markdown, at most `MAX_CHARS` long. Text that comes from the
data (a project's title and description) is untrusted: `plain` escapes it so that it renders as plain
text, never as a link, an image, HTML or a broken table. Every cell goes through it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Required, TypedDict

import numpy as np
import pandas as pd

from tagifai.core.data import compose_text

# What the report may hold at most (Airflow shows it as the approval's body, MLflow as an artifact).
MAX_CHARS = 60_000
# How much of a project's text a disagreement shows, and how many disagreements.
TEXT_CHARS = 120
SAMPLE_ROWS = 10
# Characters that make markdown of text (escaped with a backslash), and those that make HTML (entities).
MARKDOWN = "\\`*_[]|~"
HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
NONE = "—"


class Side(TypedDict, total=False):
    """One model's figures. All but `version` are optional: a missing one shows as a dash.

    `unavailable` says why the figures are missing (no champion yet, it cannot be loaded); `test` is
    `evaluate()`'s `overall` on the test split, `per_class` and `slices` its other parts, `behavioral`
    `behavioral_tests()`'s result, `data` the card's `DataInfo` of the model's data, `params` its
    training params, `holdout_recorded` True when `holdout_f1` is the recorded one, not a re-score.
    """

    version: Required[str]
    unavailable: str
    test: Mapping[str, float]
    holdout_f1: float | None
    holdout_recorded: bool
    per_class: Mapping[str, Mapping[str, float]]
    slices: Mapping[str, Mapping[str, float]]
    behavioral: Mapping[str, Any]
    data: Mapping[str, Any]
    params: Mapping[str, Any]


class Verdict(TypedDict, total=False):
    """The gate's decision and its settings; `approval` is `[register] approval`."""

    promote: Required[bool]
    reason: Required[str]
    min_f1: float
    max_regression: float
    approval: str
    stale: bool


class Report(TypedDict, total=False):
    """Everything the report shows; `champion` None: there is no champion yet.

    `disagreements`: rows (split, id, text, tag, challenger, champion) where the two models tag
    differently, and `disagreement_counts`: split -> [rows where they disagree, rows].
    """

    model_name: Required[str]
    verdict: Required[Verdict]
    challenger: Required[Side]
    champion: Side | None
    disagreements: Sequence[Mapping[str, Any]]
    disagreement_counts: Mapping[str, Sequence[int]]


# ---- formatting ---------------------------------------------------------------------------------


def clip(value: Any, limit: int) -> str:
    """`value` on one line, cut to `limit` characters."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain(value: Any, limit: int | None = None) -> str:
    """`value` as plain text in markdown: on one line (cut to `limit` characters), markup escaped."""
    text = clip(value, limit or MAX_CHARS)
    text = "".join(HTML.get(c, c) for c in text)
    return "".join(f"\\{c}" if c in MARKDOWN else c for c in text)


def num(value: Any) -> str:
    """A score with 4 decimals, or a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NONE
    return f"{float(value):.4f}"


def delta(challenger: Any, champion: Any) -> str:
    """The challenger's score minus the champion's, signed, or a dash when either is missing."""
    if NONE in (num(challenger), num(champion)):
        return NONE
    return f"{float(challenger) - float(champion):+.4f}"


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table; every cell is `plain`."""
    lines = ["| " + " | ".join(map(plain, header)) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(plain(cell) for cell in row) + " |" for row in rows]


def value(value: Any) -> str:
    """A param or a count as people write it (floats to 6 significant digits, booleans lower case)."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def columns(report: Report) -> tuple[str, str]:
    """The two models' column headers."""
    champion = report.get("champion")
    return f"challenger v{report['challenger']['version']}", (
        f"champion v{champion['version']}" if champion else "champion"
    )


def champion_missing(report: Report) -> str | None:
    """What the champion column says instead of figures: no champion, or why it cannot be scored."""
    champion = report.get("champion")
    if champion is None:
        return "no champion yet"
    return f"unavailable: {champion['unavailable']}" if champion.get("unavailable") else None


# ---- sections -----------------------------------------------------------------------------------


def verdict_section(report: Report) -> list[str]:
    """The gate's decision, its reason and its settings, and who decides now."""
    verdict = report["verdict"]
    said = "**The gate says: promote.**" if verdict["promote"] else "**The gate says: do not promote.**"
    if verdict.get("stale"):
        said = "**Nothing moves: the version is not newer than the champion.**"
    lines = [said, "", plain(verdict["reason"])]
    if "min_f1" in verdict:
        lines += ["", f"Gate: min_f1 {num(verdict['min_f1'])}, max_regression {num(verdict.get('max_regression'))}."]
    if verdict.get("approval") == "human":
        lines += ["", "Approval is human: `champion` moves only if a person approves (and the gate says promote)."]
    return ["## The gate's verdict", "", *lines]


def overall_section(report: Report) -> list[str]:
    """Weighted test precision, recall, f1 and holdout f1, side by side."""
    challenger, champion = report["challenger"], report.get("champion") or {}
    rows = [
        (f"test {k}", num(challenger.get("test", {}).get(k)), num(champion.get("test", {}).get(k)),
         delta(challenger.get("test", {}).get(k), champion.get("test", {}).get(k)))
        for k in ("precision", "recall", "f1")
    ]  # fmt: skip
    recorded = " (recorded)" if champion.get("holdout_recorded") else ""
    on_holdout = num(champion.get("holdout_f1")) + (recorded if champion.get("holdout_f1") is not None else "")
    rows.append(
        ("holdout f1", num(challenger.get("holdout_f1")), on_holdout,
         delta(challenger.get("holdout_f1"), champion.get("holdout_f1")))
    )  # fmt: skip
    samples = (challenger.get("test") or {}).get("num_samples")
    intro = "Weighted scores on the challenger's test split" + (f" ({int(samples)} rows)" if samples else "")
    return [
        "## Overall",
        "",
        intro + " and on the deployer's holdout:",
        "",
        *table(["", *columns(report), "delta"], rows),
    ]


def per_class_section(report: Report) -> list[str]:
    """f1 of each class on the test split, side by side."""
    challenger, champion = report["challenger"].get("per_class") or {}, (report.get("champion") or {}).get("per_class")
    names = sorted({*challenger, *(champion or {})})
    if not names:
        return []
    rows = []
    for name in names:
        mine, theirs = (challenger.get(name) or {}).get("f1"), ((champion or {}).get(name) or {}).get("f1")
        support = (challenger.get(name) or (champion or {}).get(name) or {}).get("num_samples")
        rows.append(
            (name, num(mine), num(theirs), delta(mine, theirs), value(None if support is None else int(support)))
        )
    return ["## Per-class f1 (test split)", "", *table(["class", *columns(report), "delta", "support"], rows)]


def slice_cell(values: Mapping[str, float] | None) -> str:
    """A slice's f1 and rows, or a dash."""
    if not values or not values.get("num_samples") or math.isnan(values.get("f1", math.nan)):
        return NONE if not values else "no rows"
    return f"{num(values['f1'])} ({int(values['num_samples'])} rows)"


def slices_section(report: Report) -> list[str]:
    """f1 on each snorkel slice of the test split, side by side."""
    challenger, champion = report["challenger"].get("slices") or {}, (report.get("champion") or {}).get("slices") or {}
    names = sorted({*challenger, *champion})
    if not names:
        return []
    rows = [
        (name, slice_cell(challenger.get(name)), slice_cell(champion.get(name)),
         delta((challenger.get(name) or {}).get("f1"), (champion.get(name) or {}).get("f1")))
        for name in names
    ]  # fmt: skip
    return ["## Slices (test split)", "", *table(["slice", *columns(report), "delta"], rows)]


def behavioral_section(report: Report) -> list[str]:
    """Each behavioral case: what it expects and what each model said."""
    challenger = report["challenger"].get("behavioral") or {}
    champion = (report.get("champion") or {}).get("behavioral") or {}
    cases, theirs = challenger.get("results") or [], champion.get("results") or []
    if not cases:
        return []
    rate = f"pass rate {num(challenger.get('pass_rate'))} vs {num(champion.get('pass_rate'))}"

    def said(result: Mapping[str, Any] | None) -> str:
        if result is None:
            return NONE
        return ("pass: " if result["passed"] else "FAIL: ") + ", ".join(map(str, result["predicted"]))

    rows = [
        (case["kind"], " / ".join(map(str, case["texts"])), case.get("expected") or "the same tag for all",
         said(case), said(theirs[i] if i < len(theirs) else None))
        for i, case in enumerate(cases)
    ]  # fmt: skip
    header = ["kind", "texts", "expected", *columns(report)]
    return ["## Behavioral tests", "", plain(rate), "", *table(header, rows)]


def disagreements_section(report: Report) -> list[str]:
    """A sample of rows the two models tag differently (the text is the data's: shown as plain text)."""
    if report.get("champion") is None or report["champion"].get("unavailable"):
        return []
    counts = report.get("disagreement_counts") or {}
    said = "; ".join(f"{split}: {n} of {total} rows" for split, (n, total) in counts.items())
    rows = [
        (row["split"], row["id"], clip(row["text"], TEXT_CHARS), row["tag"], row["challenger"], row["champion"])
        for row in list(report.get("disagreements") or [])[:SAMPLE_ROWS]
    ]
    lines = [f"They tag differently on {plain(said)}." if said else "They were not compared row by row."]
    if rows:
        header = ["split", "id", "text", "true tag", *columns(report)]
        lines += ["", f"A sample of up to {SAMPLE_ROWS}:", "", *table(header, rows)]
    return ["## Where they disagree", "", *lines]


def data_section(report: Report) -> list[str]:
    """The data each model learned from: its sha256, rows per split and label shares."""
    challenger, champion = report["challenger"].get("data") or {}, (report.get("champion") or {}).get("data") or {}
    if not challenger and not champion:
        return []
    rows: list[tuple[str, str, str]] = [
        ("labeled data sha256", challenger.get("sha256") or NONE, champion.get("sha256") or NONE),
        ("rows", value(challenger.get("rows")), value(champion.get("rows"))),
    ]
    for split in sorted({*(challenger.get("splits") or {}), *(champion.get("splits") or {})}):
        rows.append((f"{split} rows", value((challenger.get("splits") or {}).get(split)),
                     value((champion.get("splits") or {}).get(split))))  # fmt: skip

    def share(data: Mapping[str, Any], label: str) -> str:
        counts = data.get("label_counts") or {}
        total = sum(counts.values())
        return f"{100 * counts[label] / total:.1f}% ({counts[label]})" if label in counts and total else NONE

    labels = sorted({*(challenger.get("label_counts") or {}), *(champion.get("label_counts") or {})})
    rows += [(f"share of {label}", share(challenger, label), share(champion, label)) for label in labels]
    same = challenger.get("sha256") and challenger.get("sha256") == champion.get("sha256")
    note = "Both learned from the same data." if same else "They learned from different data (or one is unknown)."
    return ["## Data", "", note, "", *table(["", *columns(report)], rows)]


def params_section(report: Report) -> list[str]:
    """The training params of both models; the ones that differ marked."""
    challenger, champion = report["challenger"].get("params") or {}, (report.get("champion") or {}).get("params") or {}
    names = sorted({*challenger, *champion})
    if not names:
        return []
    rows = [
        (name, value(challenger.get(name)), value(champion.get(name)),
         "" if value(challenger.get(name)) == value(champion.get(name)) else "differs")
        for name in names
    ]  # fmt: skip
    return ["## Training parameters", "", *table(["parameter", *columns(report), ""], rows)]


# ---- gathering ----------------------------------------------------------------------------------


def disagreements(
    frames: Mapping[str, pd.DataFrame], challenger: Mapping[str, Any], champion: Mapping[str, Any]
) -> tuple[list[dict[str, str]], dict[str, list[int]]]:
    """Rows of each split (`id`, `title`, `description`, `tag`) that the two models tag differently.

    Args:
        frames: split name -> its rows, in the order shown (a row whose id an earlier split showed is not shown again).
        challenger: split name -> the challenger's tag of each row.
        champion: split name -> the champion's.

    Returns:
        The first `SAMPLE_ROWS` such rows, and split -> [rows where they disagree, rows].
    """
    rows: list[dict[str, str]] = []
    counts: dict[str, list[int]] = {}
    seen: set[str] = set()
    for split, frame in frames.items():
        differ = np.asarray(challenger[split]) != np.asarray(champion[split])
        counts[split] = [int(differ.sum()), len(frame)]
        texts = compose_text(frame)
        for i in np.flatnonzero(differ):
            row_id = str(frame["id"].iloc[i])
            if len(rows) < SAMPLE_ROWS and row_id not in seen:
                seen.add(row_id)
                rows.append({"split": split, "id": row_id, "text": clip(texts.iloc[i], TEXT_CHARS),
                             "tag": str(frame["tag"].iloc[i]), "challenger": str(challenger[split][i]),
                             "champion": str(champion[split][i])})  # fmt: skip
    return rows, counts


# ---- the report ---------------------------------------------------------------------------------


def render(report: Report, max_chars: int = MAX_CHARS) -> str:
    """Render the report (see `Report`) as markdown of at most `max_chars` characters, ending with a newline."""
    challenger, champion = columns(report)
    title = f"# {plain(report['model_name'])}: {challenger} vs {champion}"
    heading = [title]
    if missing := champion_missing(report):
        heading += ["", f"The champion column: {plain(missing, 500)}."]
    sections = [
        heading,
        verdict_section(report),
        overall_section(report),
        per_class_section(report),
        slices_section(report),
        behavioral_section(report),
        disagreements_section(report),
        data_section(report),
        params_section(report),
    ]
    text = "\n\n".join("\n".join(section) for section in sections if section) + "\n"
    if len(text) <= max_chars:
        return text
    cut = f"\n\n(The report is cut here at {max_chars} characters.)\n"
    kept = text[: max_chars - len(cut)]
    return kept[: kept.rfind("\n") + 1].rstrip("\n") + cut
