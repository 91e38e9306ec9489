"""Synthetic projects at scale (10k to 1M rows) for the benchmark's `scale` section, labelled by a known rule.

Standard library only, plus tagifai.contract's errors (both venvs import the harness). Rows stream to
`projects.csv` and `tags.csv` a chunk at a time, so memory stays flat whatever the row count; the same
`(rows, seed, noise)` gives the same bytes.

The text looks like the real catalogue's: title and description lengths follow its word-count histograms, and
words come from a fixed "language" of common English/tech filler plus half a million Zipf-distributed
pseudo-words, so the distinct vocabulary keeps growing with the rows (Heaps' law) as a real catalogue's does.

Each project is written for a tag drawn by the real tag shares and carries 1-3 of that tag's marker words,
sometimes one more marker of another tag. Its label is `label_of(title + " " + description)`: the tag whose
markers occur most, ties going to the tag whose marker comes first. A generated project never has a tie (a
marker of another tag joins only beside 2+ of its own), so the rule gives back the drawn tag. Then a fraction
`noise` of the labels is replaced by another tag (seeded), so a perfect model scores about `1 - noise`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import random
import re
import sys
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tagifai.contract.errors import BadInputError, TagifaiError

# Summary figures measured once from the real dataset (Made-With-ML's projects.csv and tags.csv as
# config/tagifai.toml pins them: 955 projects); only these figures live here, never the data. Words split on spaces;
# 5.9 characters a word; distinct lowercase alphanumeric tokens 786 after the first 100 projects, 3574 after 955.
# Lengths: (mean, median, p90) of words and of characters per field, for the tests and the benchmark's report.
REAL_LENGTHS = {
    "title": {"words": (5.2, 5, 9), "characters": (37.3, 39, 60)},
    "description": {"words": (15.3, 15, 24), "characters": (102.3, 100, 154)},
}
REAL_DISTINCT = {100: 786, 955: 3574}
# Histograms of words per title and per description (projects with that many words).
TITLE_WORDS = {1: 126, 2: 61, 3: 101, 4: 113, 5: 100, 6: 125, 7: 131, 8: 93, 9: 60, 10: 32, 11: 9, 12: 2, 13: 1, 14: 1}
DESCRIPTION_WORDS = {
    3: 3, 4: 13, 5: 18, 6: 17, 7: 44, 8: 53, 9: 47, 10: 62, 11: 51, 12: 56, 13: 55, 14: 50, 15: 51, 16: 38,
    17: 51, 18: 41, 19: 40, 20: 42, 21: 33, 22: 37, 23: 39, 24: 38, 25: 26, 26: 18, 27: 15, 28: 8, 29: 3, 30: 1,
    31: 3, 35: 1, 47: 1,
}  # fmt: skip
TAG_SHARES = {
    "natural-language-processing": 0.4063,
    "computer-vision": 0.3728,
    "mlops": 0.0827,
    "reinforcement-learning": 0.0586,
    "graph-learning": 0.0471,
    "time-series": 0.0325,
}
# What label_of answers for a text with no marker at all (never a generated project: each has a marker).
NO_MARKER = "other"

# Marker words, most common first (drawn with Zipf weights). Lowercase single tokens, each in one list only and
# never among the filler or pseudo-words, so label_of can count them. The last three tags are outside the
# model's accepted tags: the pipeline maps them to `other`.
MARKERS = {
    "natural-language-processing": [
        "text", "language", "nlp", "transformers", "bert", "transformer", "sentiment", "translation", "gpt",
        "tokenizer", "summarization", "chatbot", "corpus", "huggingface", "spacy", "roberta", "word2vec", "ner",
        "seq2seq", "linguistic", "dialogue", "multilingual", "tokenization", "paraphrase", "grammar", "sentences",
        "textual", "lemmatization", "xlnet", "t5",
    ],
    "computer-vision": [
        "image", "images", "detection", "segmentation", "vision", "yolo", "video", "cnn", "gan", "pixels",
        "convolutional", "resnet", "opencv", "faces", "photos", "camera", "pose", "ocr", "imagenet", "mask",
        "inpainting", "stylegan", "keypoints", "unet", "superresolution", "cifar", "mnist", "visual", "lidar",
        "bounding",
    ],
    "mlops": [
        "deployment", "production", "mlflow", "docker", "kubernetes", "serving", "monitoring", "pipeline",
        "kubeflow", "airflow", "orchestration", "registry", "drift", "observability", "dvc", "versioning",
        "reproducibility", "tracking", "bentoml", "seldon", "feast", "sagemaker", "microservices", "terraform",
        "containers", "infrastructure", "latency", "lineage", "canary", "rollout",
    ],
    "reinforcement-learning": [
        "reinforcement", "agent", "reward", "policy", "agents", "environment", "gym", "atari", "dqn", "ppo",
        "bandits", "exploration", "mdp", "actor", "critic", "episodes", "robotics", "simulation", "qlearning",
        "muzero", "alphago", "selfplay", "trajectory", "markov", "mcts", "rewards", "bandit", "openspiel",
        "gridworld", "sarsa",
    ],
    "graph-learning": [
        "graph", "graphs", "node", "nodes", "gnn", "gcn", "edges", "networkx", "pagerank", "deepwalk", "node2vec",
        "graphsage", "adjacency", "subgraph", "vertices", "citation", "molecules", "heterogeneous", "spectral",
        "community", "neighbours", "link", "knowledge", "geometric", "dgl", "hypergraph", "walks", "propagation",
        "ogb", "cora",
    ],
    "time-series": [
        "forecasting", "series", "temporal", "forecast", "anomaly", "stock", "lstm", "arima", "prophet",
        "seasonality", "sensor", "timeseries", "trend", "autoregressive", "demand", "sales", "weather",
        "multivariate", "univariate", "horizon", "lag", "stationarity", "smoothing", "sktime", "tsfresh", "darts",
        "trends", "signals", "holtwinters", "intraday",
    ],
}  # fmt: skip

# Common English and generic ML/tech words, roughly most frequent first (Zipf weights by this order).
FILLER = """
a and the to of for in learning with on using model deep this from is an models how neural that data machine we
by based pytorch tensorflow training implementation networks you library python can it as your ai dataset are
ml network classification attention open source paper code new simple fast framework tutorial project approach
tool tools use learn build train trained large pretrained state art results method methods performance
generation generative research work papers collection list awesome curated resources github repository api web
app application applications real world end accuracy benchmark benchmarks evaluation analysis features feature
architecture architectures layer layers loss optimization optimizer gradient functions function learned
representations representation embeddings embedding supervised unsupervised self semi few shot zero transfer
fine tuning tuned scale scalable efficient efficiently small big easy better best high low quality modern keras
jax numpy pandas scikit sklearn notebook notebooks colab jupyter examples example guide introduction overview
survey review blog post article course lecture book chapter understanding explained explaining explainable
interpretability interpretable fairness bias robust robustness adversarial attacks privacy federated distributed
parallel gpu gpus tpu cpu memory speed faster lightweight mobile edge browser javascript rust go java cloud
service services platform system systems solution solutions problem problems task tasks challenge competition
kaggle winning top first second also more than all one two three not only which when where what why who into
over between without through about its their our these those such other each both any most some many recent
latest current novel proposed propose present introduce show shows demonstrate achieve achieves improves improve
improved improving reduce reduces help helps make makes making get gets getting run runs running create creates
creating generate generates predict predicts prediction predictions classify classifier classifiers regression
clustering probabilistic bayesian statistical statistics inference sampling uncertainty estimation estimator
metric metrics score scores labels label labeled labeling annotation annotations augmentation preprocessing
datasets baseline baselines experiments experiment comparison compare comparing study studies toolkit package
packages module modules plugin interface cli command line config configuration hyperparameter hyperparameters
search automl automated automatic automatically custom general purpose domain specific multi single modal
multimodal cross unified universal hierarchical recurrent rnn mlp perceptron encoder decoder autoencoder
variational latent space vector vectors matrix tensor tensors sparse dense linear nonlinear logistic tree trees
forest boosting xgboost lightgbm ensemble random neighbors kernel svm contrastive clip diffusion energy capsule
spiking quantum physics biology medical healthcare clinical health finance financial retail marketing customer
users user people human humans climate music audio sound voice speech games sports creative style design
interactive visualization visualize dashboard
""".split()


# The pseudo-words: a fixed "language" (its own seed, whatever the corpus seed) of syllables, simple ones most
# often. Rank r gets the Zipf-Mandelbrot weight 1/(r + PSEUDO_OFFSET)^PSEUDO_EXPONENT.
PSEUDO_WORDS = 500_000
PSEUDO_EXPONENT = 1.2
PSEUDO_OFFSET = 10
LANGUAGE_SEED = 20200220
ONSETS = {
    **dict.fromkeys("b c d f g h j k l m n p r s t v w z".split(), 3.0),
    **dict.fromkeys("br cr dr fr gr kr pr tr bl cl fl gl pl sl st sp sk sh ch th qu".split(), 1.0),
}
VOWELS = {**dict.fromkeys("a e i o u".split(), 3.0), **dict.fromkeys("y ai ea io ou".split(), 1.0)}
CODAS = {"": 10.0, **dict.fromkeys("n r s l x m t k".split(), 1.0), **dict.fromkeys("nd rt st ng".split(), 0.5)}
SYLLABLES = {1: 0.12, 2: 0.55, 3: 0.27, 4: 0.06}
# Share of word draws that are filler (the rest pseudo-words) and the offset of the filler's Zipf weights (titles
# have fewer "a", "the"), tuned so that the distinct-word counts after 100 and 955 projects, and the characters
# per title and per description, come out close to the real ones.
TITLE_FILLER = (0.5, 30)
DESCRIPTION_FILLER = (0.6, 0)

# Markers per project (its own tag's), the chance of one marker of another tag beside 2+ own ones, and the
# chance that the first marker goes in the title (the others go in the description).
OWN_MARKERS = {1: 0.45, 2: 0.4, 3: 0.15}
CONFUSER = 0.3
IN_TITLE = 0.4
# Titles in Title Case (else capitalised); descriptions of 14+ words sometimes split in two sentences.
TITLE_CASE = 0.7
TWO_SENTENCES = 0.4
# created_on runs from the first real project's time over a fixed span, whatever the row count.
START = 1582181000  # 2020-02-20 06:43:20 UTC
SPAN_SECONDS = 4 * 365 * 86400
CHUNK = 4096

# Draws are the generator's bytes (Random.randbytes) read as unsigned integers, mapped through tables that hold
# each value in proportion to its weight: one C call per chunk rather than a Python call per draw keeps 1M rows
# (20M words) to some 20 seconds. 16-bit draws for small distributions; 32-bit ones for words, whose top
# HEAD_BITS pick the filler and the commonest HEAD_RANKS pseudo-words and whose rest pick a rarer one by
# inverting the power law's distribution function.
SMALL = "H"
WORD = "I"
HEAD_BITS = 16
HEAD_RANKS = 200

TOKEN = re.compile(r"[a-z0-9]+")
MARKER_TAG = {marker: tag for tag, markers in MARKERS.items() for marker in markers}
TAGS = list(TAG_SHARES)


def integers(rng: random.Random, n: int, typecode: str) -> array:
    """`n` uniform unsigned integers of the array `typecode` ("H": 16 bits, "I": 32), from `rng`'s bytes."""
    values = array(typecode)
    values.frombytes(rng.randbytes(n * values.itemsize))
    if sys.byteorder == "big":
        values.byteswap()  # the same numbers, so the same files, on any machine
    return values


def table(weights: dict[Any, float], slots: int = 1 << 16) -> list[Any]:
    """A list of `slots` entries, each key of `weights` in proportion to its weight (a uniform index draws one)."""
    total = sum(weights.values())
    entries: list[Any] = []
    running = 0.0
    for value, weight in weights.items():
        running += weight
        entries.extend([value] * (round(running / total * slots) - len(entries)))
    return entries


def zipf(n: int, exponent: float = 1.0, offset: int = 0) -> list[float]:
    """Zipf(-Mandelbrot) weights of ranks 1..n: 1/(rank + offset)^exponent."""
    return [1.0 / (rank + offset) ** exponent for rank in range(1, n + 1)]


@functools.cache
def pseudo_words() -> list[str]:
    """The PSEUDO_WORDS pseudo-words, commonest first: 1-4 syllables, none a filler word or a marker.

    List operations only (no Python loop per word): this runs once per process (cached; do not change the list).
    """
    rng = random.Random(LANGUAGE_SEED)
    weights = {
        o + v + c: wo * wv * wc for o, wo in ONSETS.items() for v, wv in VOWELS.items() for c, wc in CODAS.items()
    }
    syllables, sizes = table(weights), table(SYLLABLES)
    candidates = PSEUDO_WORDS * 5 // 4  # enough to find PSEUDO_WORDS distinct ones
    first, second, third, fourth = ([syllables[x] for x in integers(rng, candidates, SMALL)] for _ in range(4))
    words = [
        a + b if size == 2 else a if size == 1 else a + b + c if size == 3 else a + b + c + d
        for size, a, b, c, d in zip(
            (sizes[x] for x in integers(rng, candidates, SMALL)), first, second, third, fourth, strict=True
        )
    ]
    reserved = set(FILLER) | set(MARKER_TAG)
    words = [word for word in dict.fromkeys(words) if word not in reserved][:PSEUDO_WORDS]
    if len(words) < PSEUDO_WORDS:
        raise AssertionError("too few distinct pseudo-words: raise `candidates`")
    # How some print: project names with a version or "3d" (digits: no clash with another pseudo-word), short
    # acronyms and capitalised names (label_of and TF-IDF lowercase them anyway); no versions among the commonest.
    words[503::97] = [word + "2" for word in words[503::97]]
    words[505::89] = [word + "3d" for word in words[505::89]]
    words[507::83] = [word + "v2" for word in words[507::83]]
    words[11::31] = [word.upper() if len(word) <= 5 else word for word in words[11::31]]
    words[13::23] = [word.capitalize() for word in words[13::23]]
    return words


@dataclass(frozen=True)
class Words:
    """Draws words for one field: filler and pseudo-words, by their weights (see HEAD_BITS)."""

    head: list[str]  # filler and the commonest pseudo-words, one entry per 2^-HEAD_BITS of probability
    limit: int  # 32-bit draws below this index `head`; the rest pick from `tail`
    tail: list[str]  # the rarer pseudo-words (plus a copy of the last: a guard against rounding)
    base: float
    step: float

    @classmethod
    def build(cls, pseudo: list[str], weights: list[float], filler_share: float, filler_offset: int) -> Words:
        """Filler (Zipf weights, exponent 1, offset `filler_offset`) taking `filler_share`; `pseudo` the rest."""
        filler = zipf(len(FILLER), offset=filler_offset)
        filler_scale, pseudo_scale = filler_share / sum(filler), (1 - filler_share) / sum(weights)
        head = {word: w * filler_scale for word, w in zip(FILLER, filler, strict=True)}
        head.update((word, w * pseudo_scale) for word, w in zip(pseudo[:HEAD_RANKS], weights, strict=False))
        head_slots = round(sum(head.values()) * (1 << HEAD_BITS))
        limit = head_slots << (32 - HEAD_BITS)
        # Tail: the continuous power law on [HEAD_RANKS + 1, PSEUDO_WORDS + 1), inverted: rank + offset =
        # (base - u * (base - end))^(1 / (1 - exponent)) for u uniform in [0, 1).
        power = 1 - PSEUDO_EXPONENT
        base = (HEAD_RANKS + 1 + PSEUDO_OFFSET) ** power
        end = (PSEUDO_WORDS + 1 + PSEUDO_OFFSET) ** power
        return cls(
            table(head, head_slots), limit, pseudo[HEAD_RANKS:] + pseudo[-1:], base, (base - end) / (2**32 - limit)
        )

    def draw(self, rng: random.Random, n: int) -> list[str]:
        """`n` words."""
        head, limit, tail, base, step = self.head, self.limit, self.tail, self.base, self.step
        shift, inverse, first = 32 - HEAD_BITS, 1 / (1 - PSEUDO_EXPONENT), HEAD_RANKS + 1 + PSEUDO_OFFSET
        return [
            head[x >> shift] if x < limit else tail[int((base - (x - limit) * step) ** inverse) - first]
            for x in integers(rng, n, WORD)
        ]


@dataclass(frozen=True)
class Tables:
    """Everything a chunk draws from: built once per process (a few seconds: the pseudo-words)."""

    title: Words
    description: Words
    tags: list[str]
    title_sizes: list[int]
    description_sizes: list[int]
    own: list[int]
    marker_ranks: list[int]
    replacements: dict[str, list[str]]  # per tag, the other tags by share: noisy labels
    clock: list[str]  # "HH:MM:SS" of each second of a day


@functools.cache
def tables() -> Tables:
    """The draw tables (cached)."""
    if array(WORD).itemsize != 4:  # Words.draw takes them for 32 bits
        raise RuntimeError(f"array typecode {WORD!r} is not 4 bytes on this platform")
    pseudo, weights = pseudo_words(), zipf(PSEUDO_WORDS, PSEUDO_EXPONENT, PSEUDO_OFFSET)
    return Tables(
        title=Words.build(pseudo, weights, *TITLE_FILLER),
        description=Words.build(pseudo, weights, *DESCRIPTION_FILLER),
        tags=table(TAG_SHARES),
        title_sizes=table(TITLE_WORDS),
        description_sizes=table(DESCRIPTION_WORDS),
        own=table(OWN_MARKERS),
        marker_ranks=table(dict(enumerate(zipf(len(MARKERS[TAGS[0]]), exponent=0.8)))),
        replacements={tag: table({o: w for o, w in TAG_SHARES.items() if o != tag}) for tag in TAGS},
        clock=[f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)],
    )


def label_of(text: str) -> str:
    """The label the rule gives `text` (a title and a description joined by a space).

    Count each tag's markers among the lowercase alphanumeric tokens; the tag with most wins, a tie goes to the
    tag whose marker comes first; a text without markers is `NO_MARKER`.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for position, token in enumerate(TOKEN.findall(text.lower())):
        tag = MARKER_TAG.get(token)
        if tag is not None:
            counts[tag] = counts.get(tag, 0) + 1
            first.setdefault(tag, position)
    if not counts:
        return NO_MARKER
    return max(counts, key=lambda tag: (counts[tag], -first[tag]))


def chunk(rng: random.Random, n: int, noise: float) -> tuple[list[str], list[str], list[str], int]:
    """`n` projects' titles, descriptions and labels, and how many labels the noise replaced.

    Every draw but the markers' places in the description is made for the whole chunk at once (see SMALL).
    """
    t = tables()
    full = 1 << 16

    def draw(values: list[Any], count: int = n) -> list[Any]:
        return [values[x] for x in integers(rng, count, SMALL)]

    drawn, others = draw(t.tags), draw(t.tags)  # `others`: the tag of a confuser
    title_sizes, description_sizes, own = draw(t.title_sizes), draw(t.description_sizes), draw(t.own)
    ranks = [draw(t.marker_ranks) for _ in range(4)]
    first, second, third = ([MARKERS[tag][r] for tag, r in zip(drawn, rs, strict=True)] for rs in ranks[:3])
    confuser = [MARKERS[tag][r] for tag, r in zip(others, ranks[3], strict=True)]
    coins = [integers(rng, n, SMALL) for _ in range(6)]
    # Markers: 1-3 of the project's tag, a confuser beside 2+ of them; the first may go in the title, the
    # rest go in the description.
    confused = [
        k >= 2 and tag != other and x < CONFUSER * full
        for k, tag, other, x in zip(own, drawn, others, coins[0], strict=True)
    ]
    titled = [x < IN_TITLE * full for x in coins[1]]
    rest = [
        (a, b, c)[in_title:k] + ((d,) if e else ())
        for a, b, c, d, k, e, in_title in zip(first, second, third, confuser, own, confused, titled, strict=True)
    ]
    title_words = t.title.draw(rng, sum(title_sizes))
    description_words = t.description.draw(rng, sum(description_sizes))
    uniform = rng.random
    titles, descriptions = [], []
    t_at = d_at = 0
    for t_size, d_size, marker, in_title, markers, x_place, x_case, x_split, x_cut in zip(
        title_sizes, description_sizes, first, titled, rest, *coins[2:], strict=True
    ):
        if in_title:
            title = title_words[t_at : t_at + t_size - 1]
            title.insert(x_place * t_size >> 16, marker)
        else:
            title = title_words[t_at : t_at + t_size]
        description = description_words[d_at : d_at + d_size - len(markers)]
        t_at += t_size
        d_at += d_size
        for marker in markers:
            description.insert(int(uniform() * (len(description) + 1)), marker)
        # Titles mostly in Title Case; descriptions a sentence or, when long, two.
        text = " ".join(title)
        titles.append(text.title() if x_case < TITLE_CASE * full else text.capitalize())
        if d_size >= 14 and x_split < TWO_SENTENCES * full:
            cut = 5 + (x_cut * (d_size - 8) >> 16)
            word = description[cut]
            text = (
                " ".join(description[:cut])
                + ". "
                + word[:1].upper()
                + word[1:]
                + " "
                + " ".join(description[cut + 1 :])
            )
        else:
            text = " ".join(description)
        descriptions.append(text[:1].upper() + text[1:] + ".")
    # Noise: another tag, drawn by the shares of the rest (drawn whatever `noise`: it changes only labels).
    flips = [x < noise * full for x in integers(rng, n, SMALL)]
    labels = [
        t.replacements[tag][x] if flip else tag
        for tag, flip, x in zip(drawn, flips, integers(rng, n, SMALL), strict=True)
    ]
    return titles, descriptions, labels, sum(flips)


def timestamps(rng: random.Random, n: int, moment: float, gap: float) -> tuple[list[str], float]:
    """`n` increasing created_on values after `moment`, `gap` seconds apart on average; and the last moment."""
    clock = tables().clock
    stamps = []
    scale = 2 * gap / (1 << 16)
    last_day, day_text = -1, ""
    for x in integers(rng, n, SMALL):
        moment += x * scale
        day, second = divmod(int(moment), 86400)
        if day != last_day:
            last_day, day_text = day, time.strftime("%Y-%m-%d ", time.gmtime(day * 86400))
        stamps.append(day_text + clock[second])
    return stamps, moment


def write_rows(file: TextIO, rows: Iterable[tuple[Any, ...]], texts: list[str]) -> None:
    """Write `rows` to `file` as CSV lines; `texts` are their text fields.

    Texts with nothing to quote (no comma, quote or line break: generated text never has one) go out as plain
    joined lines, the very bytes `csv.writer` would write, at a fraction of its cost (it scans every character);
    anything else goes through `csv.writer`.
    """
    joined = "".join(texts)
    if any(special in joined for special in ',"\r\n'):
        csv.writer(file, lineterminator="\n").writerows(rows)
    else:
        file.write("".join([",".join(map(str, row)) + "\n" for row in rows]))


def write(folder: Path, rows: int, seed: int = 0, noise: float = 0.05, labelled: bool = True) -> dict[str, Any]:
    """Write `rows` synthetic projects to `folder`/projects.csv and, when `labelled`, their tags to tags.csv.

    Args:
        folder: Where the CSV files go (created if missing). Files there of the same names are replaced, and
            tags.csv removed when unlabelled.
        rows: How many projects (ids 1..rows).
        seed: The same seed, rows and noise give the same bytes.
        noise: The fraction of labels replaced by another tag at random.
        labelled: Whether to write tags.csv (unlabelled data is for scoring).

    Returns:
        `projects` and `tags` (paths; `tags` is None when unlabelled), `rows`, `bytes` (of both files),
        `flipped` (labels the noise replaced) and `seconds`.

    Raises:
        BadInputError: `rows` is not a positive integer, `noise` is outside [0, 1], or `folder` cannot be made.
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise BadInputError(f"rows must be a positive integer, got {rows!r}")
    if not 0 <= noise <= 1:
        raise BadInputError(f"noise must be a fraction in [0, 1], got {noise!r}")
    started = time.perf_counter()
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create the output folder {folder}: {exc.strerror}") from exc
    projects_path, tags_path = folder / "projects.csv", folder / "tags.csv"
    if not labelled:
        tags_path.unlink(missing_ok=True)  # never leave old labels beside new projects
    rng = random.Random(seed)
    moment, gap = float(START), SPAN_SECONDS / rows
    flipped = 0
    with contextlib.ExitStack() as files:
        projects = files.enter_context(projects_path.open("w", newline="", encoding="utf-8"))
        tags = files.enter_context(tags_path.open("w", newline="", encoding="utf-8")) if labelled else None
        projects.write("id,created_on,title,description\n")
        if tags:
            tags.write("id,tag\n")
        for first in range(1, rows + 1, CHUNK):
            n = min(CHUNK, rows + 1 - first)
            titles, descriptions, labels, replaced = chunk(rng, n, noise)
            stamps, moment = timestamps(rng, n, moment, gap)
            ids = range(first, first + n)
            write_rows(projects, zip(ids, stamps, titles, descriptions, strict=True), titles + descriptions)
            if tags:
                write_rows(tags, zip(ids, labels, strict=True), labels)
                flipped += replaced
    return {
        "projects": projects_path,
        "tags": tags_path if labelled else None,
        "rows": rows,
        "bytes": projects_path.stat().st_size + (tags_path.stat().st_size if labelled else 0),
        "flipped": flipped,
        "seconds": round(time.perf_counter() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.scale_data --rows N --out DIR [--seed S] [--noise F] [--unlabelled]`."""
    parser = argparse.ArgumentParser(prog="python -m harness.scale_data", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="how many projects")
    parser.add_argument("--out", type=Path, required=True, help="folder for projects.csv (and tags.csv)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    parser.add_argument("--noise", type=float, default=0.05, help="fraction of labels replaced at random (0.05)")
    parser.add_argument("--unlabelled", action="store_true", help="write projects.csv only, for scoring")
    args = parser.parse_args(argv)
    try:
        result = write(args.out, args.rows, args.seed, args.noise, not args.unlabelled)
    except TagifaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps({key: str(value) if isinstance(value, Path) else value for key, value in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
