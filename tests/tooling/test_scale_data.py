"""harness/scale_data.py: synthetic projects at scale, realistic in shape and labelled by a known rule."""

import csv
import io
import json
import statistics
from collections import Counter

import pytest

from harness import scale_data
from tagifai.contract.errors import BadInputError


def read(path):
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def tokens(project):
    return scale_data.TOKEN.findall((project[2] + " " + project[3]).lower())


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """20k labelled projects (default noise): the rows, the tags and write()'s result."""
    result = scale_data.write(tmp_path_factory.mktemp("scale"), 20_000, seed=7)
    return read(result["projects"])[1:], read(result["tags"])[1:], result


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_bytes(tmp_path):
    a, b, c = (scale_data.write(tmp_path / name, 1000, seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    for name in ("projects", "tags"):
        assert a[name].read_bytes() == b[name].read_bytes()
        assert a[name].read_bytes() != c[name].read_bytes()
    assert a["flipped"] == b["flipped"]


def test_noise_and_labels_change_only_tags_csv(tmp_path):
    noisy = scale_data.write(tmp_path / "noisy", 2000, noise=0.2)
    clean = scale_data.write(tmp_path / "clean", 2000, noise=0.0)
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "tags.csv").write_text("id,tag\n1,mlops\n")  # stale labels must not survive
    bare = scale_data.write(tmp_path / "bare", 2000, labelled=False)
    assert noisy["projects"].read_bytes() == clean["projects"].read_bytes() == bare["projects"].read_bytes()
    assert noisy["tags"].read_bytes() != clean["tags"].read_bytes()
    assert bare["tags"] is None and not (tmp_path / "bare" / "tags.csv").exists()
    assert bare["bytes"] == bare["projects"].stat().st_size and bare["flipped"] == 0


def test_every_label_follows_the_rule_except_the_flipped_ones(catalogue):
    projects, tags, result = catalogue
    off_rule = sum(scale_data.label_of(p[2] + " " + p[3]) != tag for p, (_, tag) in zip(projects, tags, strict=True))
    assert off_rule == result["flipped"]  # a flipped label never lands back on the rule's
    assert result["flipped"] / result["rows"] == pytest.approx(0.05, abs=0.01)


def test_without_noise_every_label_is_the_rule_s(tmp_path):
    result = scale_data.write(tmp_path, 3000, noise=0.0)
    projects, tags = read(result["projects"])[1:], read(result["tags"])[1:]
    assert result["flipped"] == 0
    assert all(scale_data.label_of(p[2] + " " + p[3]) == tag for p, (_, tag) in zip(projects, tags, strict=True))
    # Some projects carry a confusing marker of another tag, and still get their own
    confused = [p for p in projects if len({scale_data.MARKER_TAG.get(t) for t in tokens(p)} - {None}) > 1]
    assert 0.05 < len(confused) / len(projects) < 0.3


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Image segmentation with BERT", "computer-vision"),  # two markers beat one
        ("BERT for images", "natural-language-processing"),  # a tie: the first marker's tag
        ("Images with BERT", "computer-vision"),
        ("Deploying models with Kubernetes, Docker.", "mlops"),  # case and punctuation do not matter
        ("transformers-based text", "natural-language-processing"),  # a hyphen splits tokens
        ("Contexts and imagery", scale_data.NO_MARKER),  # whole tokens only: no "text" in "contexts"
        ("A fast JSON parser", scale_data.NO_MARKER),
    ],
)
def test_label_of_counts_whole_marker_tokens(text, label):
    assert scale_data.label_of(text) == label


def test_no_word_of_the_language_is_a_marker_or_needs_quoting():
    words = scale_data.FILLER + scale_data.pseudo_words()
    lowered = set(" ".join(words).lower().split())
    assert len(lowered) == len(scale_data.FILLER) + scale_data.PSEUDO_WORDS  # distinct, even lowercased
    # Alphanumeric words are one token each: none may be a marker, or label_of would miscount
    assert all(word.isalnum() and word.isascii() for word in scale_data.FILLER + list(scale_data.MARKER_TAG))
    assert "".join(words).isalnum() and "".join(words).isascii()
    assert not lowered & set(scale_data.MARKER_TAG)
    assert all(len(markers) == 30 for markers in scale_data.MARKERS.values())


def test_files_are_csv_with_unique_ids_and_a_known_tag_for_every_project(catalogue):
    projects, tags, result = catalogue
    assert read(result["projects"])[0] == ["id", "created_on", "title", "description"]
    assert [p[0] for p in projects] == [t[0] for t in tags] == [str(i) for i in range(1, 20_001)]
    assert {tag for _, tag in tags} == set(scale_data.TAG_SHARES)
    stamps = [p[1] for p in projects]
    assert stamps == sorted(stamps) and stamps[0].startswith("2020-02-20")
    # The bytes are exactly what csv.writer writes for these rows
    written = io.StringIO()
    csv.writer(written, lineterminator="\n").writerows([["id", "created_on", "title", "description"], *projects])
    assert written.getvalue().encode("utf-8") == result["projects"].read_bytes()
    assert result["bytes"] == result["projects"].stat().st_size + result["tags"].stat().st_size


def test_text_that_needs_quoting_goes_through_the_csv_module():
    out = io.StringIO()
    scale_data.write_rows(out, [(1, 'a "b", c'), (2, "d")], ['a "b", c', "d"])
    assert out.getvalue() == '1,"a ""b"", c"\n2,d\n'


def test_tag_shares_and_lengths_are_close_to_the_real_ones(catalogue):
    projects, tags, _ = catalogue
    shares = Counter(tag for _, tag in tags)
    for tag, share in scale_data.TAG_SHARES.items():
        assert shares[tag] / len(tags) == pytest.approx(share, abs=0.015), tag
    for column, field in ((2, "title"), (3, "description")):
        real = scale_data.REAL_LENGTHS[field]
        words = [len(p[column].split()) for p in projects]
        characters = [len(p[column]) for p in projects]
        assert abs(statistics.median(words) - real["words"][1]) <= 1, field
        assert statistics.mean(words) == pytest.approx(real["words"][0], rel=0.05), field
        assert statistics.median(characters) == pytest.approx(real["characters"][1], rel=0.1), field
        assert statistics.mean(characters) == pytest.approx(real["characters"][0], rel=0.1), field


def test_distinct_words_grow_with_rows_like_the_real_catalogue(catalogue):
    projects, _, _ = catalogue
    seen, distinct = set(), {}
    for count, project in enumerate(projects, 1):
        seen.update(tokens(project))
        distinct[count] = len(seen)
    for rows, real in scale_data.REAL_DISTINCT.items():
        assert distinct[rows] == pytest.approx(real, rel=0.2), rows
    # Heaps' law: 10x the rows, well over 3x the words (real: 786 -> 3574 from 100 to 955 projects)
    assert distinct[20_000] > 3.5 * distinct[2000]


def test_the_model_learns_the_rule_up_to_the_noise(tmp_path, settings):
    from tagifai.core import data, train  # seconds of imports (scikit-learn, MLflow): only this test waits

    result = scale_data.write(tmp_path, 3000, seed=1)
    projects = data.parse_csv(result["projects"].read_bytes(), "projects", data.PROJECT_COLUMNS)
    tags = data.parse_csv(result["tags"].read_bytes(), "tags", data.TAG_COLUMNS)
    prepared = data.prepare(data.transform(projects, tags), settings.data)
    splits = {name: prepared[prepared["split"] == name] for name in data.SPLITS}
    scores = train.train(settings.train, splits["train"], splits["val"], settings.stopwords)["val"]
    assert 0.8 < scores["f1"] < 1.0  # learnable, but 5% of the labels are noise


@pytest.mark.parametrize(
    ("rows", "noise", "message"),
    [
        (0, 0.05, "rows must be a positive integer, got 0"),
        (True, 0.05, "rows must be a positive integer, got True"),
        (10, 1.5, r"noise must be a fraction in \[0, 1\], got 1.5"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(tmp_path, rows, noise, message):
    with pytest.raises(BadInputError, match=message):
        scale_data.write(tmp_path, rows, noise=noise)


def test_the_command_line_writes_the_same_files_and_reports_them(tmp_path, capsys):
    assert scale_data.main(["--rows", "300", "--out", str(tmp_path / "cli"), "--seed", "3"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["rows"] == 300 and report["projects"] == str(tmp_path / "cli" / "projects.csv")
    direct = scale_data.write(tmp_path / "direct", 300, seed=3)
    assert (tmp_path / "cli" / "projects.csv").read_bytes() == direct["projects"].read_bytes()
    assert scale_data.main(["--rows", "0", "--out", str(tmp_path / "bad")]) == 3
    assert capsys.readouterr().err == "error: rows must be a positive integer, got 0\n"
