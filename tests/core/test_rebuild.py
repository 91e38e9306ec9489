"""The rebuild record's comparison: digests, the order differences are named in, the first differing prediction."""

import copy

import numpy as np
import pytest

from tagifai.core import rebuild

PROBABILITIES = np.array([[0.7, 0.3], [0.2, 0.8], [0.55, 0.45]])
TAGS = ["cv", "nlp", "cv"]


def manifest() -> dict:
    return {
        "format": rebuild.FORMAT,
        "environment": {
            "python": "3.11.7",
            "packages": dict.fromkeys(rebuild.PACKAGES, "1.0"),
            "lock_sha256": "a" * 64,
            "commit": "b" * 40,
        },
        "code": {"files": {"tagifai/core/train.py": "c" * 64, "tagifai/model.py": "d" * 64}},
        "config": {"data.other_label": "other", "stopwords": ["a", "the"], "train": {"alpha": 1e-5, "seed": 1}},
        "data": {"splits": {"train": "1" * 64, "val": "2" * 64, "test": "3" * 64}},
        "params": {"classifier": {"alpha": 1e-5, "eta0": 0.5}, "vectorizer": {"char__ngram_range": [2, 6]}},
        "outputs": {
            "fitted_sha256": "f" * 64,
            **rebuild.prediction_digests(TAGS, PROBABILITIES),
        },
        "recipe": {"params": {"alpha": 1e-5}},
    }


def test_the_same_manifest_has_no_difference():
    assert rebuild.differences(manifest(), copy.deepcopy(manifest())) == []


def test_differences_come_in_order_package_code_config_data_params_outputs():
    now = manifest()
    now["outputs"]["fitted_sha256"] = "e" * 64
    now["params"]["classifier"]["alpha"] = 1e-4
    now["data"]["splits"]["test"] = "4" * 64
    now["config"]["train"]["alpha"] = 1e-4
    now["code"]["files"]["tagifai/core/train.py"] = "0" * 64
    now["environment"]["packages"]["scikit-learn"] = "2.0"
    found = rebuild.differences(manifest(), now)
    assert [line.split(":")[0].split(" ")[0] for line in found] == [
        "package",
        "code",
        "config",
        "data",
        "params",
        "outputs",
    ]
    assert found[0] == "package: scikit-learn 2.0 here, 1.0 recorded"
    assert found[1].startswith("code tagifai/core/train.py differs (sha256 000000000000… here, cccccccccccc… recorded")
    assert found[2] == "config: [train] alpha is 0.0001 here, 1e-05 recorded"
    assert found[3].startswith("data: split test differs")
    assert found[4] == "params: classifier.alpha is 0.0001 here, 1e-05 recorded"


def test_a_python_patch_release_is_no_difference_a_minor_one_is():
    now = manifest()
    now["environment"]["python"] = "3.11.2"
    assert rebuild.differences(manifest(), now) == []
    now["environment"]["python"] = "3.12.0"
    assert rebuild.differences(manifest(), now) == ["package: Python 3.12.0 here, 3.11.7 recorded"]


def test_the_lock_file_and_commit_are_recorded_not_compared():
    now = manifest()
    now["environment"].update(lock_sha256="9" * 64, commit="8" * 40)
    assert rebuild.differences(manifest(), now) == []


def test_a_file_added_or_gone_and_the_stopwords_are_named():
    now = manifest()
    del now["code"]["files"]["tagifai/model.py"]
    now["code"]["files"]["tagifai/core/new.py"] = "1" * 64
    now["config"]["stopwords"] = ["a"]
    assert rebuild.differences(manifest(), now) == [
        "code tagifai/core/new.py is new (not in the recorded version)",
        "code tagifai/model.py is missing here (recorded sha256 dddddddddddd…)",
        'config: stopwords (config/stopwords.txt) is ["a"] here, ["a", "the"] recorded',
    ]


def test_prediction_digests_see_every_bit_of_every_probability():
    same = rebuild.prediction_digests(list(TAGS), PROBABILITIES.copy())
    assert same == rebuild.prediction_digests(TAGS, PROBABILITIES)
    nudged = PROBABILITIES.copy()
    nudged[2, 0] = np.nextafter(nudged[2, 0], 1)
    changed = rebuild.prediction_digests(TAGS, nudged)
    assert changed["predictions_sha256"] == same["predictions_sha256"]
    assert changed["probabilities_sha256"] != same["probabilities_sha256"]


def test_the_first_differing_prediction_is_named_by_row_title_tag_and_probability():
    recorded = rebuild.prediction_frame(TAGS, PROBABILITIES, ["cv", "nlp"])
    assert rebuild.first_differing_row(recorded, recorded.copy(), ["a", "b", "c"]) is None
    nudged = PROBABILITIES.copy()
    nudged[1] = [0.6, 0.4]
    now = rebuild.prediction_frame(["cv", "cv", "cv"], nudged, ["cv", "nlp"])
    line = rebuild.first_differing_row(recorded, now, ["Alpha", "Bert for tagging", "Gamma"])
    assert line == "prediction: test row 1 (Bert for tagging) is cv p=0.6 here, nlp p=0.8 recorded"
    manifest_now = manifest()
    manifest_now["outputs"].update(rebuild.prediction_digests(["cv", "cv", "cv"], nudged))
    found = rebuild.differences(manifest(), manifest_now, line)
    assert found == [line]  # the row in place of the two digests


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        ([], "it is not a JSON object"),
        ({"format": 2}, "its format is 2, not 1"),
    ],
)
def test_a_record_that_is_no_manifest_says_why(broken, problem):
    assert rebuild.missing_sections(broken) == [problem]


def test_a_manifest_missing_a_section_names_it():
    partial = manifest()
    del partial["data"]
    assert rebuild.missing_sections(partial) == ["data"]


def test_a_manifest_whose_parts_are_not_what_they_should_be_names_them():
    broken = manifest()
    broken["environment"]["packages"] = ["numpy"]
    broken["data"]["splits"] = None
    assert rebuild.missing_sections(broken) == ["environment.packages is not a Mapping", "data.splits is not a Mapping"]
