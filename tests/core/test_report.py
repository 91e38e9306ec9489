"""The challenger-vs-champion report: both models side by side, the data's text as plain text, bounded."""

import re

import pytest

from tagifai.core import report as reports


def side(version: str, f1: float, **extra) -> dict:
    """One model's figures."""
    return {
        "version": version,
        "test": {"precision": f1 + 0.01, "recall": f1 - 0.01, "f1": f1, "num_samples": 60.0},
        "holdout_f1": f1 - 0.02,
        "per_class": {
            "mlops": {"f1": f1, "num_samples": 20.0},
            "computer-vision": {"f1": f1 - 0.1, "num_samples": 20.0},
        },
        "slices": {
            "short_text": {"f1": f1 - 0.2, "num_samples": 7.0},
            "nlp_cnn": {"f1": float("nan"), "num_samples": 0},  # an empty slice
        },
        "behavioral": {
            "pass_rate": 0.5,
            "results": [
                {
                    "kind": "invariance",
                    "texts": ["CNN for images", "convnet for images"],
                    "predicted": ["cv", "cv"],
                    "passed": True,
                },
                {
                    "kind": "directional",
                    "texts": ["ML on text"],
                    "expected": "nlp",
                    "predicted": ["mlops"],
                    "passed": False,
                },
            ],
        },  # fmt: skip
        "data": {
            "sha256": f"{version}" * 64,
            "rows": 240,
            "splits": {"train": 168, "test": 36},
            "label_counts": {"mlops": 120, "computer-vision": 120},
        },  # fmt: skip
        "params": {"alpha": 0.0001, "num_epochs": int(f1 * 10), "analyzer": "char_wb"},
        **extra,
    }


def report(champion: dict | None, disagreements: list | None = None) -> dict:
    """A report of challenger v3 against `champion`."""
    return {
        "model_name": "tagifai",
        "verdict": {
            "promote": True,
            "reason": "test_f1 0.9000 >= 0.6000",
            "min_f1": 0.6,
            "max_regression": 0.02,
            "approval": "human",
            "stale": False,
        },  # fmt: skip
        "challenger": side("3", 0.9),
        "champion": champion,
        "disagreements": disagreements or [],
        "disagreement_counts": {"test": [len(disagreements or []), 36]},
    }


def test_the_report_shows_both_models_figures_side_by_side():
    text = reports.render(report(side("2", 0.8), [{"split": "test", "id": "7", "text": "A yolo project",
                                                      "tag": "computer-vision", "challenger": "computer-vision",
                                                      "champion": "mlops"}]))  # fmt: skip
    assert text.startswith("# tagifai: challenger v3 vs champion v2\n")
    assert "**The gate says: promote.**" in text and "min\\_f1 0.6000" not in text and "min_f1 0.6000" in text
    assert "| test f1 | 0.9000 | 0.8000 | +0.1000 |" in text
    assert "| holdout f1 | 0.8800 | 0.7800 | +0.1000 |" in text
    assert "| computer-vision | 0.8000 | 0.7000 | +0.1000 | 20 |" in text  # per class, with support
    assert "| short\\_text | 0.7000 (7 rows) | 0.6000 (7 rows) | +0.1000 |" in text
    assert "| nlp\\_cnn | no rows | no rows |" in text  # an empty slice has no f1
    assert "pass: cv, cv" in text and "FAIL: mlops" in text
    assert "| test | 7 | A yolo project | computer-vision | computer-vision | mlops |" in text
    assert "test: 1 of 36 rows" in text
    assert f"| labeled data sha256 | {'3' * 64} | {'2' * 64} |" in text and "| share of mlops | 50.0% (120) |" in text
    assert "| num\\_epochs | 9 | 8 | differs |" in text and "| analyzer | char\\_wb | char\\_wb |  |" in text
    assert "a person approves" in text


HOSTILE = (
    "<script>alert(1)</script> [click me](https://evil.example) ![x](https://evil.example/p.png) | a | b |\n"
    "# heading\n`code` *bold* " + "x" * 200
)


def test_the_datas_text_is_shown_as_plain_text_cut_to_120_characters():
    row = {"split": "holdout", "id": "1|2", "text": HOSTILE, "tag": "mlops", "challenger": "mlops", "champion": "cv"}
    text = reports.render(report(side("2", 0.8), [row]))
    line = next(line for line in text.splitlines() if line.startswith("| holdout |"))
    assert len(re.findall(r"(?<!\\)\|", line)) == 7  # six cells: no pipe of the data's splits a cell
    for markup in ("<script>", "</script>", "`code`", "*bold*"):
        assert markup not in text
    assert not re.search(r"(?<!\\)\]\(", text)  # no link, no image
    assert "&lt;script&gt;alert(1)&lt;/script&gt; \\[click me\\](https://evil.example)" in line
    assert "\\# heading" not in line and "# heading" in line  # inside a cell, on one line: no heading
    shown = re.search(r"\| holdout \| 1\\\|2 \| (.*?) \| mlops \|", line).group(1)
    assert shown.endswith("…") and len(re.sub(r"&\w+;|\\(.)", "x", shown)) == reports.TEXT_CHARS


def test_only_ten_disagreements_are_shown():
    rows = [{"split": "test", "id": str(i), "text": "t", "tag": "a", "challenger": "a", "champion": "b"}
            for i in range(25)]  # fmt: skip
    text = reports.render(report(side("2", 0.8), rows))
    assert sum(line.startswith("| test |") for line in text.splitlines()) == reports.SAMPLE_ROWS


def test_the_report_is_bounded():
    many = {f"class-{i}": {"f1": 0.5, "num_samples": 1.0} for i in range(5000)}
    text = reports.render(report({**side("2", 0.8), "per_class": many}))
    assert len(text) <= reports.MAX_CHARS and text.endswith("(The report is cut here at 60000 characters.)\n")
    assert "| class-0 |" in text  # what fits is kept, whole lines


@pytest.mark.parametrize(
    ("champion", "says"),
    [
        (None, "The champion column: no champion yet."),  # the first model
        ({"version": "2", "unavailable": "UnloadableModelError: <gone>", "holdout_f1": 0.7, "holdout_recorded": True},
         "The champion column: unavailable: UnloadableModelError: &lt;gone&gt;."),  # its files are gone
    ],
)  # fmt: skip
def test_without_a_champion_to_score_the_champion_column_says_why(champion, says):
    text = reports.render(report(champion))
    assert says in text
    assert "| test f1 | 0.9000 | — | — |" in text  # the challenger's figures all stand
    assert ("| holdout f1 | 0.8800 | 0.7000 (recorded) | +0.1800 |" in text) == (champion is not None)
    assert "## Where they disagree" not in text


def test_disagreements_are_the_rows_the_models_tag_differently_each_id_once():
    import pandas as pd

    test = pd.DataFrame({"id": ["1", "2", "3"], "title": ["a", "b", "c"], "description": ["x", "y", "z"],
                         "tag": ["mlops", "cv", "nlp"]})  # fmt: skip
    holdout = test.iloc[[1, 2]].reset_index(drop=True)  # the holdout is the test split, by default
    mine = {"test": ["mlops", "mlops", "nlp"], "holdout": ["mlops", "cv"]}
    theirs = {"test": ["mlops", "cv", "nlp"], "holdout": ["cv", "nlp"]}
    rows, counts = reports.disagreements({"test": test, "holdout": holdout}, mine, theirs)
    assert counts == {"test": [1, 3], "holdout": [2, 2]}
    assert rows == [
        {"split": "test", "id": "2", "text": "b y", "tag": "cv", "challenger": "mlops", "champion": "cv"},
        {"split": "holdout", "id": "3", "text": "c z", "tag": "nlp", "challenger": "cv", "champion": "nlp"},
    ]
