import copy
import math

import pytest

from tagifai.core import card

NAN = math.nan

CARD = {
    "model": {
        "name": "tagifai",
        "version": "3",
        "created": "2025-06-01 02:13:04 UTC",
        "code_version": "0.4.0+g1a2b3c4",
        "image": "tagifai:0.4.0",
        "pipeline_run_id": "scheduled__2025-06-01T00:00:00+00:00",
    },
    "data": {
        "projects_url": "https://bob:s3cret-pw@example.com/projects.csv",
        "tags_url": "https://token@example.com/tags.csv",
        "sha256": "1a2b3c4d5e6f7a8b9c0d1e2f",
        "rows": 955,
        "splits": {"train": 668, "val": 143, "test": 144},
        "label_counts": {"natural-language-processing": 388, "computer-vision": 285, "other": 153, "mlops": 129},
        "accepted_tags": ["natural-language-processing", "computer-vision", "mlops"],
        "min_freq": 75,
    },
    "metrics": {
        "overall": {"precision": 0.86123, "recall": 0.85, "f1": 0.85104, "num_samples": 144.0},
        "per_class": {
            "computer-vision": {"precision": 0.9, "recall": 0.93, "f1": 0.915, "num_samples": 43.0},
            "mlops": {"precision": 0.8, "recall": 0.6, "f1": 0.68571, "num_samples": 20.0},
            "natural-language-processing": {"precision": 0.88, "recall": 0.9, "f1": 0.89, "num_samples": 58.0},
        },
        "slices": {
            "nlp_cnn": {"precision": 1.0, "recall": 0.75, "f1": 0.85714, "num_samples": 4.0},
            "short_text": {"precision": 0.7, "recall": 0.7, "f1": 0.7, "num_samples": 10.0},
        },
        "confusion_matrix": {"labels": ["a"], "matrix": [[1]]},
    },
    "behavioral": {
        "results": [
            {
                "kind": "invariance",
                "texts": ["CNN for images", "convnet for images"],
                "predicted": ["computer-vision", "other"],
                "passed": False,
            },
            {
                "kind": "directional",
                "texts": ["ML applied to text classification."],
                "expected": "natural-language-processing",
                "predicted": ["natural-language-processing"],
                "passed": True,
            },
            {
                "kind": "minimum_functionality",
                "texts": ["MLOps is the next\nbig wave."],
                "expected": "mlops",
                "predicted": ["other"],
                "passed": False,
            },
        ],
        "pass_rate": 1 / 3,
    },
    "params": {"alpha": 1e-5, "analyzer": "char_wb", "num_epochs": 40, "sublinear_tf": True},
    "threshold": 0.3125,
    "links": {
        "train": "http://mlflow.local:5000/#/experiments/1/runs/trainrun123",
        "evaluate": "evalrun456",
        "validate": "datarun789",
        "register": "http://mlflow.local:5000/#/experiments/1/runs/regrun000",
    },
    "promotion": "test_f1 0.8510 >= 0.7000 and there is no champion yet to compare with",
    "promoted": True,
    "approval": "approved by alice",
    "report": "#/experiments/1/runs/regrun000/artifacts/report/x.md",
}


def section(markdown, title):
    """The body of `## title` (up to the next section)."""
    assert f"## {title}\n" in markdown, f"no section {title}"
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def without(keys):
    """A copy of CARD without each key (a top-level name, or a (part, name) path)."""
    trimmed = copy.deepcopy(CARD)
    for key in keys:
        part, name = (trimmed, key) if isinstance(key, str) else (trimmed[key[0]], key[1])
        del part[name]
    return trimmed


RENDERED = card.render(CARD)


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        # the version and its provenance
        ("Model", ["| version | 3 |", "| code version | 0.4.0+g1a2b3c4 |", "| image | tagifai:0.4.0 |"]),
        ("Model", ["| pipeline run | scheduled__2025-06-01T00:00:00+00:00 |", "| created | 2025-06-01 02:13:04 UTC |"]),
        # fixed statement, with the threshold behavior
        ("Intended use", ["not meant for other domains", "not English", "decision about people", "0.3125"]),
        # sources, hash, rows and splits, labels
        ("Data", ["`1a2b3c4d5e6f7a8b9c0d1e2f`", "Rows: 955 (train 668 · val 143 · test 144)", "| mlops | 129 |"]),
        ("Data", ["mlops (other tags, and these when seen fewer than 75 times, become `other`)"]),
        # overall, per class, slices, behavioral, all 4 decimals
        ("Metrics", ["| 0.8612 | 0.8500 | 0.8510 |", "(144 rows)"]),
        (
            "Metrics",
            ["| mlops | 0.8000 | 0.6000 | 0.6857 | 20 |", "| computer-vision | 0.9000 | 0.9300 | 0.9150 | 43 |"],
        ),
        ("Metrics", ["| nlp_cnn | NLP projects that use convolution | 0.8571 | 4 |", "| short_text |"]),
        ("Metrics", ["pass rate 0.3333 (1 of 3 cases)"]),
        # hyperparameters, small floats kept readable
        (
            "Parameters",
            ["| alpha | 1e-05 |", "| analyzer | char_wb |", "| num_epochs | 40 |", "| sublinear_tf | true |"],
        ),
        # weakest slice and class, threshold
        ("Known weaknesses", ["Weakest slice: `short_text`, f1 0.7000 on 10 rows"]),
        ("Known weaknesses", ["Weakest class: `mlops`, f1 0.6857 (support 20)", "Threshold 0.3125"]),
        # URLs become links named by run id, bare ids code
        ("Runs", ["- train: [trainrun123](http://mlflow.local:5000/#/experiments/1/runs/trainrun123)"]),
        ("Runs", ["- evaluate: `evalrun456`", "- validate: `datarun789`", "- register: [regrun000]("]),
        # the gate's decision
        ("Promotion", ["**Promoted to champion.** test_f1 0.8510 >= 0.7000 and there is no champion yet"]),
        # a person approved it, and the evidence: the register run's report, a link inside MLflow's UI
        (
            "Promotion",
            [
                "Approval by a person: approved by alice.",
                "the [challenger-vs-champion report](#/experiments/1/runs/regrun000/artifacts/report/x.md)",
            ],
        ),
    ],
)
def test_render_shows_each_section_with_its_numbers(title, expected):
    body = section(RENDERED, title)
    for text in expected:
        assert text in body


def test_render_starts_with_title_and_summary_and_never_says_none():
    assert RENDERED.startswith("# tagifai v3\n\ntagifai v3 · test f1 0.8510 · data 1a2b3c4d5e6f · pipeline scheduled__")
    assert "None" not in RENDERED and "nan" not in RENDERED.lower()
    assert RENDERED.endswith("\n") and not RENDERED.endswith("\n\n")


def test_weaknesses_list_exactly_the_failed_behavioral_cases():
    body = section(RENDERED, "Known weaknesses")
    rows = [line for line in body.splitlines() if line.startswith("| ")][2:]  # after the header
    assert rows == [
        '| invariance | "CNN for images" / "convnet for images" | the same tag for all | computer-vision, other |',
        # the newline in the text is kept on one line
        '| minimum_functionality | "MLOps is the next big wave." | mlops | other |',
    ]
    assert "ML applied to text classification." not in body


def test_weaknesses_say_so_when_every_behavioral_case_passed():
    passing = copy.deepcopy(CARD)
    for result in passing["behavioral"]["results"]:
        result["passed"] = True
    body = section(card.render(passing), "Known weaknesses")
    assert "All 3 behavioral tests passed." in body and "| kind |" not in body


def test_credentials_in_urls_are_redacted():
    assert "s3cret-pw" not in RENDERED and "bob" not in RENDERED and "token@" not in RENDERED
    body = section(RENDERED, "Data")
    assert "`https://***@example.com/projects.csv`" in body and "`https://***@example.com/tags.csv`" in body


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@host/x.csv", "https://***@host/x.csv"),  # user and password
        ("https://pw@host/x.csv", "https://***@host/x.csv"),  # token only
        ("https://u:p@ss@host/x.csv", "https://***@host/x.csv"),  # an unescaped @ in the password
        ("https://host/x.csv?mail=a@b.c", "https://host/x.csv?mail=a@b.c"),  # an @ after the host is not userinfo
        ("/data/projects.csv", "/data/projects.csv"),  # a path
    ],
)
def test_redact(url, expected):
    assert card.redact(url) == expected


def test_link_urls_are_redacted_too():
    links = {**CARD, "links": {"train": "https://admin:hunter2@mlflow/#/experiments/1/runs/abc"}}
    body = section(card.render(links), "Runs")
    assert "hunter2" not in body and "[abc](https://***@mlflow/#/experiments/1/runs/abc)" in body


def test_a_slice_without_samples_shows_no_samples_and_is_never_the_weakest():
    empty = copy.deepcopy(CARD)
    empty["metrics"]["slices"]["short_text"] = {"precision": NAN, "recall": NAN, "f1": NAN, "num_samples": 0.0}
    rendered = card.render(empty)
    assert "| short_text | fewer than 8 words of title and description | no samples | 0 |" in rendered
    assert "Weakest slice: `nlp_cnn`, f1 0.8571 on 4 rows" in rendered
    assert "nan" not in rendered.lower()


@pytest.mark.parametrize(
    ("missing", "absent", "present"),
    [
        # nothing optional: model, intended use, no other sections
        (
            ["data", "metrics", "behavioral", "params", "threshold", "links", "promotion", "promoted"],
            ["## Data", "## Metrics", "## Parameters", "## Known weaknesses", "## Runs", "## Promotion", "threshold,"],
            ["## Model", "## Intended use", "it answers `other`"],
        ),
        # no slices: no slices table, no weakest slice
        ([("metrics", "slices")], ["Slices (snorkel)", "Weakest slice"], ["Per class:", "Weakest class"]),
        # no behavioral tests: no pass rate, no failed cases
        (["behavioral"], ["pass rate", "Failed behavioral", "behavioral tests passed"], ["Weakest class"]),
        # no model provenance beyond name and version
        (
            [("model", k) for k in ("created", "code_version", "image", "pipeline_run_id")],
            ["| created", "| image", "pipeline scheduled"],
            ["| name | tagifai |", "| version | 3 |"],
        ),
        # no sources or splits
        ([("data", k) for k in ("projects_url", "tags_url", "splits")], ["Projects:", "train 668"], ["Rows: 955\n"]),
        # a gate reason without a verdict
        (["promoted"], ["Promoted to champion"], ["## Promotion\n\ntest_f1 0.8510"]),
        # the gate alone decided, and a version older than the report
        (["approval", "report"], ["Approval by a person", "challenger-vs-champion"], ["**Promoted to champion.**"]),
    ],
)
def test_missing_optional_parts_are_left_out_cleanly(missing, absent, present):
    rendered = card.render(without(missing))
    for text in absent:
        assert text not in rendered
    for text in present:
        assert text in rendered
    assert "None" not in rendered and "\n\n\n" not in rendered


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a|b", "a\\|b"),  # pipe escaped
        ("line one\nline two", "line one line two"),  # one line
        ("  padded\t text ", "padded text"),  # whitespace collapsed
        (0.5, "0.5"),  # not a string
    ],
)
def test_cell(value, expected):
    assert card.cell(value) == expected


def test_table_cells_with_pipes_do_not_break_tables():
    piped = copy.deepcopy(CARD)
    piped["behavioral"]["results"][0]["texts"] = ["a | b", "c"]
    piped["params"] = {"stopwords": "a|b"}
    piped["model"]["image"] = "registry|evil"
    rendered = card.render(piped)
    assert '| "a \\| b" / "c" |' in rendered
    assert "| stopwords | a\\|b |" in rendered and "| image | registry\\|evil |" in rendered
    # every table row has as many unescaped pipes as its header
    for block in rendered.split("\n\n"):
        rows = [line for line in block.splitlines() if line.startswith("|")]
        widths = {line.replace("\\|", "").count("|") for line in rows}
        assert len(widths) <= 1, block


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "tagifai v3 · test f1 0.8510 · data 1a2b3c4d5e6f · pipeline scheduled__2025-06-01T00:00:00+00:00"),
        # only the required part
        ({"metrics": None, "data": None, "model": {"name": "tagifai", "version": 7}}, "tagifai v7"),
        # a metrics report without overall scores
        ({"metrics": {"per_class": {}}, "data": {}}, "tagifai v3 · pipeline scheduled__2025-06-01T00:00:00+00:00"),
    ],
)
def test_summary_line(changes, expected):
    changed = {**CARD, **changes}
    changed = {k: v for k, v in changed.items() if v is not None}
    assert card.summary_line(changed) == expected
    assert "\n" not in card.summary_line(changed)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e-5, "1e-05"),  # small floats stay readable
        (0.5, "0.5"),
        (True, "true"),
        (["a", "b"], "a, b"),
        ("40", "40"),  # MLflow params arrive as strings
    ],
)
def test_param_value(value, expected):
    assert card.param_value(value) == expected
