import io

import pandas as pd
import pytest

from harness import synthetic
from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.core import data

STOPWORDS = ["the", "a", "is", "for", "of"]


@pytest.mark.parametrize(
    ("text", "stem", "expected"),
    [
        ("Hello World", False, "hello world"),  # lowercase
        ("The BERT model is a transformer", False, "bert model transformer"),  # stopwords, whole words only
        ("Theory of the atheist", False, "theory atheist"),  # 'the' inside words stays
        ("pytorch-lightning: fast, simple!", False, "pytorch lightning fast simple"),  # punctuation
        ("see https://example.com/x?y=1 now", False, "see now"),  # links
        ("  spaced   out\n\ttext ", False, "spaced out text"),  # whitespace
        ("running runners run", True, "run runner run"),  # Porter stemming
        ("", False, ""),  # empty
    ],
)
def test_clean_text(text, stem, expected):
    assert data.clean_text(text, STOPWORDS, stem=stem) == expected


def test_parse_csv_reads_text_columns_as_text():
    df = data.parse_csv(b"id,title,description\n1,NaN,None\n", "projects.csv", data.PROJECT_COLUMNS)
    assert df.to_dict("records") == [{"id": "1", "title": "NaN", "description": "None"}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "projects.csv is empty"),  # empty file
        (b"  \n\n", "projects.csv is empty"),  # whitespace only
        (b"id,title,description\n", "has a header but no rows"),  # header only
        (b"id,title\n1,x\n", "missing column(s) description"),  # missing column
        (b"id,title,description\n1,caf\xe9,x\n", "not valid UTF-8"),  # latin-1 byte
        (b'id,title,description\n1,"unterminated,x\n', "not a readable CSV"),  # broken quoting
    ],
)
def test_parse_csv_rejects_bad_files(content, message):
    with pytest.raises(TagifaiError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.parse_csv(content, "projects.csv", data.PROJECT_COLUMNS)


def test_transform_joins_on_id_and_drops_untagged_projects():
    projects = pd.DataFrame({"id": ["1", "2", "3"], "title": ["a", "b", "c"], "description": ["", "", ""]})
    tags = pd.DataFrame({"id": ["1", "3"], "tag": ["mlops", "other"]})
    assert data.transform(projects, tags)[["id", "tag"]].to_dict("records") == [
        {"id": "1", "tag": "mlops"},
        {"id": "3", "tag": "other"},
    ]


def test_transform_rejects_tags_matching_no_project():
    projects = pd.DataFrame({"id": ["1"], "title": ["a"], "description": [""]})
    tags = pd.DataFrame({"id": ["1", "7", "8"], "tag": ["mlops", "other", "other"]})
    with pytest.raises(TagifaiError, match=r"2 tag\(s\) match no project id: 7, 8"):
        data.transform(projects, tags)


def test_map_labels_sends_unaccepted_and_rare_tags_to_other():
    tags = pd.Series(["nlp"] * 5 + ["cv"] * 2 + ["rl"] * 9)
    mapped = data.map_labels(tags, accepted=["nlp", "cv"], min_freq=3)
    assert mapped.value_counts().to_dict() == {"other": 11, "nlp": 5}


def test_assign_splits_is_stratified_70_15_15_and_deterministic():
    labels = pd.Series(["a"] * 100 + ["b"] * 60 + ["c"] * 40)
    split = data.assign_splits(labels, val_size=0.15, test_size=0.15, seed=7)
    assert split.value_counts().to_dict() == {"train": 140, "val": 30, "test": 30}
    per_class = pd.crosstab(labels, split)
    assert per_class.loc["a", "test"] == 15 and per_class.loc["c", "val"] == 6
    assert split.equals(data.assign_splits(labels, 0.15, 0.15, seed=7))


def test_assign_splits_names_the_problem_when_a_class_is_too_small():
    with pytest.raises(TagifaiError, match="cannot make a stratified split"):
        data.assign_splits(pd.Series(["a"] * 20 + ["b"]), 0.15, 0.15, seed=1)


def test_csv_round_trip_and_digest_are_stable():
    df = pd.DataFrame({"id": ["1", "2"], "title": ["x, y", 'say "hi"'], "description": ["", "multi\nline"]})
    content = data.to_csv_bytes(df)
    assert data.read_frame(content).equals(df)
    assert data.sha256(content) == data.sha256(data.to_csv_bytes(data.read_frame(content)))


def test_the_holdout_of_the_deployments_data_is_its_test_split_and_takes_nothing_from_it(settings):
    projects, tags = synthetic.make_projects(per_tag=40)
    labeled = data.transform(pd.DataFrame(projects).astype(str), pd.DataFrame(tags).astype(str))
    prepared = data.prepare(labeled, settings.data)
    holdout = data.holdout(labeled, settings.data)
    test = prepared[prepared["split"] == "test"].drop(columns="split").reset_index(drop=True)
    pd.testing.assert_frame_equal(holdout, test)
    pd.testing.assert_frame_equal(data.without_holdout(prepared, holdout, STOPWORDS), prepared)


def test_holdout_rows_leave_train_and_val_by_id_or_by_cleaned_text(settings):
    prepared = pd.DataFrame(
        {
            "id": ["1", "2", "3", "4", "5"],
            "title": ["Kept", "Same id", "THE same text!", "Held test row", "Other val"],
            "description": ["", "new words", "", "", ""],
            "tag": ["mlops"] * 5,
            "split": ["train", "train", "val", "test", "val"],
        }
    )
    holdout = pd.DataFrame(
        {"id": ["2", "9", "4"], "title": ["x", "same text", "Held test row"], "description": "", "tag": "mlops"}
    )
    kept = data.without_holdout(prepared, holdout, STOPWORDS)
    assert kept["id"].tolist() == ["1", "4", "5"]  # test rows stay: on the deployment's data they are the holdout


def test_a_golden_set_is_used_whole_with_the_models_labels(settings):
    labeled = pd.DataFrame(
        {"id": ["1", "2", "3"], "title": ["a", "b", "c"], "description": "", "tag": ["mlops", "time-series", "mlops"]}
    )
    golden = data.holdout(labeled, settings.data, whole=True)
    assert golden["tag"].tolist() == ["mlops", "other", "mlops"]  # min_freq is the training data's, not applied


def test_parse_csv_reads_a_file_in_chunks_as_it_reads_bytes(monkeypatch):
    content = b"id,title,description\n" + "".join(f'{i},"café {i}","a, b"\n' for i in range(2_500)).encode()
    monkeypatch.setattr(data, "CSV_CHUNK_ROWS", 1000)  # three chunks
    monkeypatch.setattr(data, "CHECK_BLOCK_BYTES", 7)  # é cut across blocks
    stream = io.BytesIO(content)
    parsed = data.parse_csv(stream, "projects.csv", data.PROJECT_COLUMNS)
    pd.testing.assert_frame_equal(parsed, data.parse_csv(content, "projects.csv", data.PROJECT_COLUMNS))
    assert len(parsed) == 2_500 and parsed.loc[2_499, "title"] == "café 2499"
    assert not stream.closed  # the caller's file: it closes it


def test_a_bad_byte_is_named_by_its_offset_in_the_file(monkeypatch):
    monkeypatch.setattr(data, "CHECK_BLOCK_BYTES", 5)
    content = b"id,title,description\n" + b"1,ok,x\n" * 10 + b"2,caf\xe9,x\n"
    offset = content.index(b"\xe9")
    with pytest.raises(BadInputError, match=rf"not valid UTF-8 \(byte {offset}: b'\\xe9'\)"):
        data.parse_csv(io.BytesIO(content), "projects.csv", data.PROJECT_COLUMNS)
