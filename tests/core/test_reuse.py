"""Reuse keys: what changes a step's key, and what does not."""

import copy
import io
import shutil

import pytest

from harness import synthetic
from tagifai.core import reuse


@pytest.fixture
def base(settings):
    return copy.deepcopy(settings)


def keys(settings, raw=b"projects", num_trials=20, gate=(0.6, 0.02, "tagifai"), reference=None, holdout="h1"):
    """Every step's key for one pipeline run whose upstream runs keep their ids (as when they are reused)."""
    return {
        "elt": reuse.elt_key(reuse.data_sha(raw, b"tags"), settings),
        "validate": reuse.validate_key("elt-run", reference, False, holdout, settings),
        "optimize": reuse.optimize_key("validate-run", num_trials, settings),
        "train": reuse.train_key("validate-run", "optimize-key", settings),
        "evaluate": reuse.evaluate_key("train-run", settings),
        "register": reuse.register_key("evaluate-run", gate, settings),
    }


def changed(before, after):
    return sorted(step for step in before if before[step] != after[step])


def test_the_same_inputs_give_the_same_keys(base):
    assert keys(base) == keys(copy.deepcopy(base))


def test_another_holdout_changes_validates_key(base):
    # (and so every key after it: a run keeps no split made with the holdout's rows in train)
    assert changed(keys(base), keys(base, holdout="h2")) == ["validate"]


def test_other_data_changes_elts_key(base):
    # (The steps after it then get a new upstream run, hence new keys: upstream runs count by id.)
    assert changed(keys(base), keys(base, raw=b"projects, one row more")) == ["elt"]


def test_each_step_key_names_its_upstream_run(settings):
    assert reuse.evaluate_key("train-a", settings) != reuse.evaluate_key("train-b", settings)
    assert reuse.train_key("v", "optimize-key", settings) != reuse.train_key("v", None, settings)  # tuned vs defaults


def test_other_code_changes_every_key(base, monkeypatch):
    before = keys(base)
    monkeypatch.setattr(reuse, "code_version", lambda: "other code")
    assert changed(before, keys(base)) == sorted(reuse.STEPS)


@pytest.mark.parametrize(
    ("section", "name", "value", "steps"),
    [
        ("data", "min_freq", 3, ["validate"]),  # labels and split
        ("validate", "drift_alpha", 0.5, ["validate"]),
        ("optimize", "cv_folds", 7, ["optimize"]),  # the objective
        ("train", "num_epochs", 3, ["optimize", "train"]),  # the base params are trial 0 of the study
        ("data", "other_label", "misc", ["optimize", "train", "validate"]),
        ("register", "min_f1", 0.7, ["register"]),  # the gate
        ("register", "approval", "human", ["register"]),  # a held register is not an auto one
    ],
)
def test_a_setting_a_step_reads_changes_its_key(base, section, name, value, steps):
    other = synthetic.with_setting(base, section, **{name: value})
    assert changed(keys(base), keys(other)) == steps


@pytest.mark.parametrize(
    ("section", "name", "value"),
    [
        ("optimize", "heartbeat_seconds", 3),  # how workers run, not what they find
        ("optimize", "num_workers", 8),
        ("optimize", "threads_per_trial", 2),
        ("data", "max_bytes", 10),  # a cap on fetching
        ("data", "projects_url", "https://elsewhere.example/p.csv"),  # the content is the key, not where it was
        ("limits", "max_trials", 5),  # bounds, no step reads them
        ("mlflow", "experiment_name", "other"),
        ("register", "approval_timeout_hours", 1),  # how long the DAG waits for a person
    ],
)
def test_a_setting_no_step_reads_changes_no_key(base, section, name, value):
    other = synthetic.with_setting(base, section, **{name: value})
    assert changed(keys(base), keys(other)) == []


@pytest.mark.parametrize(
    ("kwargs", "step"),
    [
        ({"num_trials": 5}, "optimize"),  # optimize's argument
        ({"gate": (0.7, 0.02, "tagifai")}, "register"),  # register's
        ({"gate": (0.6, 0.02, "other-model")}, "register"),
        ({"reference": "d" * 64}, "validate"),  # drift against other data
    ],
)
def test_a_steps_arguments_change_its_key(base, kwargs, step):
    assert changed(keys(base), keys(base, **kwargs)) == [step]


@pytest.mark.parametrize(
    ("reference", "used", "expected"),
    [
        (None, None, None),  # no reference
        ("a" * 64, None, None),  # the data itself, first validated with no reference
        ("a" * 64, "", None),  # (as its tag says it)
        ("a" * 64, "b" * 64, "b" * 64),  # the data itself, first validated against other data
        ("b" * 64, None, "b" * 64),  # other data
        ("b" * 64, "c" * 64, "b" * 64),
    ],
)
def test_drift_reference_keys_other_data_or_as_the_data_was_first_validated(reference, used, expected):
    assert reuse.drift_reference(reference, "a" * 64, used) == expected


def test_data_sha_tells_apart_where_one_file_ends():
    assert reuse.data_sha(b"ab", b"c") != reuse.data_sha(b"a", b"bc")


def test_code_version_hashes_the_code_that_makes_what_the_steps_make_and_nothing_else():
    names = set(reuse.source_files())
    assert {"model.py", "pipeline/steps.py", "core/reuse.py", "contract/config.py", "contract/sources.py"} <= names
    assert not {name for name in names if name.startswith(("serving/", "operations/", "orchestration/"))}
    assert "cli.py" not in names
    assert len(reuse.code_version()) == 64


@pytest.mark.parametrize(
    ("edited", "retrains"),
    [
        ("serving/server.py", False),  # serving makes nothing a step makes
        ("cli.py", False),  # nor the CLI's help
        ("operations/champion.py", False),
        ("orchestration/runners.py", False),
        ("core/train.py", True),  # the model's training
        ("pipeline/steps.py", True),  # the steps' shell
        ("model.py", True),
        ("model_code.py", True),  # logged with every model
        ("contract/settings.py", True),  # how settings are read
    ],
)
def test_only_code_that_makes_a_steps_output_changes_the_code_version(tmp_path, edited, retrains):
    copy = tmp_path / "tagifai"
    shutil.copytree(reuse.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = reuse.code_hash(copy)
    assert before == reuse.code_version()  # the copy is the code
    with (copy / edited).open("a", encoding="utf-8") as f:
        f.write('\n"""An edit."""\n')
    assert (reuse.code_hash(copy) != before) is retrains


def test_data_sha_of_files_is_that_of_their_bytes():
    contents = (b"id,title\n1,a\n" * 100_000, b"id,tag\n")  # the first longer than a block
    assert reuse.data_sha(*map(io.BytesIO, contents)) == reuse.data_sha(*contents)
