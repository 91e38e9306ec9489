"""Small synthetic projects/tags datasets for tests (standard library only: both venvs use it)."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

# The real dataset, where CI and developers keep it (beside the repo; never committed).
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# Words that mark each tag, and filler every project shares.
VOCABULARY = {
    "natural-language-processing": [
        "text",
        "language",
        "transformer",
        "bert",
        "sentiment",
        "translation",
        "nlp",
        "tokens",
        "question answering",
        "summarization",
        "word embeddings",
        "chatbot",
    ],
    "computer-vision": [
        "image",
        "images",
        "pixels",
        "object detection",
        "segmentation",
        "yolo",
        "convnet",
        "cnn",
        "video",
        "faces",
        "gan",
        "photos",
    ],
    "mlops": [
        "deployment",
        "monitoring",
        "pipeline",
        "kubernetes",
        "serving",
        "docker",
        "feature store",
        "experiment tracking",
        "ci cd",
        "model registry",
        "drift",
        "orchestration",
    ],
    "reinforcement-learning": [
        "agent",
        "reward",
        "policy",
        "environment",
        "q-learning",
        "games",
        "atari",
        "exploration",
        "robot control",
        "bandits",
        "episodes",
        "simulation",
    ],
}
FILLER = [
    "a",
    "simple",
    "library",
    "for",
    "with",
    "using",
    "python",
    "open source",
    "project",
    "approach",
    "fast",
    "new",
    "learning",
    "tutorial",
    "model",
    "framework",
]


def make_projects(per_tag: int = 40, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Return (projects, tags) rows: `per_tag` projects for each tag in VOCABULARY."""
    rng = random.Random(seed)
    projects, tags = [], []
    next_id = 1
    for tag, words in VOCABULARY.items():
        others = [w for t, ws in VOCABULARY.items() if t != tag for w in ws]
        for _ in range(per_tag):
            # Like real projects: short titles, descriptions of varying length, some off-topic words.
            title = " ".join(rng.sample(words, rng.randint(1, 2)) + rng.sample(FILLER, 1)).capitalize()
            body = rng.sample(words, rng.randint(0, 4)) + rng.sample(FILLER, rng.randint(2, 6))
            if rng.random() < 0.3:
                body.append(rng.choice(others))
            rng.shuffle(body)
            description = " ".join(body) + "."
            projects.append(
                {
                    "id": next_id,
                    "created_on": f"2020-03-{1 + next_id % 28:02d} 10:00:00",
                    "title": title,
                    "description": description,
                }
            )
            tags.append({"id": next_id, "tag": tag})
            next_id += 1
    order = list(range(len(projects)))
    rng.shuffle(order)
    return [projects[i] for i in order], [tags[i] for i in order]


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """Write `rows` to `path` as CSV (columns from the first row unless given)."""
    columns = columns or list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_dataset(folder: Path, per_tag: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """Write projects.csv and tags.csv into `folder`; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    projects, tags = make_projects(per_tag, seed)
    return write_csv(folder / "projects.csv", projects), write_csv(folder / "tags.csv", tags)


# Settings for small data: every synthetic tag is kept, training is short.
SMALL_CONFIG = """
[data]
accepted_tags = ["natural-language-processing", "computer-vision", "mlops"]
min_freq = 5

[validate]
min_rows = 20
min_rows_per_class = 5

[train]
num_epochs = 8
ngram_max_range = 4

[optimize]
num_epochs = [4, 8]
ngram_max_range = [3, 5]
pruner_startup_trials = 1
pruner_warmup_folds = 1
cv_folds = 3

[mlflow]
# The experiments the tests' runs go to (a run may use only a listed one).
experiments = ["champion", "gate", "reuse", "new-data", "chain", "workers", "e2e"]
"""


def write_small_config(path: Path) -> Path:
    """Write the TAGIFAI_CONFIG override for small synthetic data."""
    path.write_text(SMALL_CONFIG, encoding="utf-8")
    return path


def with_setting(settings: Any, section: str, **values: Any) -> Any:
    """`settings` with keys of one `[section]` (as the TOML names it) set to `values`, unchecked."""
    name = "validation" if section == "validate" else section
    return settings.model_copy(update={name: getattr(settings, name).model_copy(update=values)})
