import subprocess
import sys

import pytest

from tagifai.contract import config
from tagifai.contract.errors import EXIT_BAD_INPUT, TagifaiError


def test_defaults_hold_the_recipe():
    s = config.load_settings()
    assert s.data.accepted_tags == ["natural-language-processing", "computer-vision", "mlops"]
    assert s.data.min_freq == 75
    assert (s.data.val_size, s.data.test_size) == (0.15, 0.15)
    assert len(s.stopwords) == 179 and "the" in s.stopwords and "don't" in s.stopwords
    assert (s.register.approval, s.register.approval_timeout_hours) == ("auto", 72)  # the gate alone decides


def test_override_file_wins_key_by_key(tmp_path, monkeypatch):
    override = tmp_path / "o.toml"
    override.write_text("[data]\nmin_freq = 3\n[register]\nmin_f1 = 0.9\n")
    monkeypatch.setenv("TAGIFAI_CONFIG", str(override))
    s = config.load_settings()
    assert s.data.min_freq == 3 and s.data.seed == 1234
    assert s.register.min_f1 == 0.9 and s.register.model_name == "tagifai"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "config file not found"),  # missing override file
        ("[data\nmin_freq=", "is not valid TOML"),  # broken TOML
    ],
)
def test_bad_override_is_named(tmp_path, monkeypatch, content, message):
    path = tmp_path / "o.toml"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("TAGIFAI_CONFIG", str(path))
    with pytest.raises(TagifaiError, match=message):
        config.load_settings()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("[register]\nmin_fi = 0.99\n", r"\[register\] min_fi: unknown setting"),  # a typo
        ('[register]\nmin_f1 = "0.9"\n', r"\[register\] min_f1: input should be a valid number, got '0.9'"),
        ("[register]\nmin_f1 = nan\n", r"\[register\] min_f1: input should be a finite number, got nan"),
        ("[register]\nmax_regression = inf\n", r"\[register\] max_regression: input should be a finite number"),
        ("[register]\nmin_f1 = 1.5\n", r"\[register\] min_f1: input should be less than or equal to 1"),
        ("[optimize]\nnum_trials = 2.5\n", r"\[optimize\] num_trials: input should be a valid integer"),
        ("[optimize]\nalpha = [1e-6]\n", r"\[optimize\] alpha: list should have at least 2 items"),
        ("[limits]\nstep_minutes = { train = 0 }\n", r"\[limits\] step_minutes.train: input should be greater than 0"),
        ("[limits]\nstep_minutes = { trian = 5 }\n", r"\[limits\] step_minutes.trian"),
        ('[limits]\nstep_cpu_request = { "predict_batch" = 0.5 }\n', r"\[limits\] step_cpu_request.predict_batch"),
        ("[limits]\nstep_cpu_request = { train = 0 }\n", r"\[limits\] step_cpu_request.train: input should be greater"),
        ("[serve]\nport = true\n", r"\[serve\] port: input should be a valid integer"),
        ('[register]\napproval = "manual"\n', r"\[register\] approval: input should be 'auto' or 'human'"),
        ("[register]\napproval_timeout_hours = 0\n", r"\[register\] approval_timeout_hours: input should be greater"),
        ("[trian]\nnum_epochs = 3\n", r"trian: unknown setting"),  # a typo of a section
    ],
)
def test_a_setting_the_schema_refuses_stops_with_one_line_naming_key_and_file(tmp_path, monkeypatch, override, message):
    path = tmp_path / "override.toml"
    path.write_text(override)
    monkeypatch.setenv("TAGIFAI_CONFIG", str(path))
    with pytest.raises(TagifaiError, match=message) as refused:
        config.load_settings()
    assert str(refused.value).startswith(f"settings in {path}: ")
    assert "\n" not in str(refused.value) and refused.value.exit_code == EXIT_BAD_INPUT


def test_a_refused_setting_in_the_versioned_defaults_names_that_file(tmp_path, monkeypatch):
    folder = tmp_path / "config"
    folder.mkdir()
    defaults = (config.config_dir() / config.CONFIG_FILE).read_text()
    (folder / config.CONFIG_FILE).write_text(defaults.replace("min_f1 = 0.6", "min_f1 = -1"))
    monkeypatch.setenv("TAGIFAI_CONFIG_DIR", str(folder))
    monkeypatch.setenv("TAGIFAI_CONFIG", str(tmp_path / "absent-key.toml"))
    (tmp_path / "absent-key.toml").write_text("[data]\nmin_freq = 3\n")
    with pytest.raises(TagifaiError, match=rf"settings in {folder / config.CONFIG_FILE}: \[register\] min_f1"):
        config.load(folder)


def test_the_settings_are_read_only(monkeypatch):
    s = config.load_settings()
    with pytest.raises(ValueError, match="frozen"):
        s.register.min_f1 = 0.0


def test_parse_stopwords_skips_comments_and_blanks():
    assert config.parse_stopwords("# header\nthe\n\n  a  # article\n") == ["the", "a"]


def test_importing_the_package_touches_nothing(tmp_path):
    code = "import tagifai.cli, tagifai.pipeline.steps, tagifai.pipeline.tracking; import os; print(os.listdir('.'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_override_may_come_as_toml_content(monkeypatch):
    # How a step container gets the deployer's override: its content, with no path of the worker's.
    monkeypatch.delenv("TAGIFAI_CONFIG", raising=False)
    monkeypatch.setenv("TAGIFAI_CONFIG_TOML", "[optimize]\nnum_trials = 4\n")
    assert config.load_settings().optimize.num_trials == 4
    monkeypatch.setenv("TAGIFAI_CONFIG_TOML", "[optimize]\nnum_trails = 4\n")
    with pytest.raises(TagifaiError, match=r"settings in TAGIFAI_CONFIG_TOML: \[optimize\] num_trails: unknown"):
        config.load_settings()
    monkeypatch.setenv("TAGIFAI_CONFIG_TOML", "[optimize\n")
    with pytest.raises(TagifaiError, match="TAGIFAI_CONFIG_TOML is not valid TOML"):
        config.load_settings()
