import pytest

from tagifai import settings as settings_module
from tagifai.errors import TagifaiError


def test_defaults_hold_the_recipe():
    s = settings_module.load_settings()
    assert s["data"]["accepted_tags"] == ["natural-language-processing", "computer-vision", "mlops"]
    assert s["data"]["min_freq"] == 75
    assert (s["data"]["val_size"], s["data"]["test_size"]) == (0.15, 0.15)
    assert len(s["stopwords"]) == 179 and "the" in s["stopwords"] and "don't" in s["stopwords"]


def test_override_file_wins_key_by_key(tmp_path, monkeypatch):
    override = tmp_path / "o.toml"
    override.write_text("[data]\nmin_freq = 3\n[register]\nmin_f1 = 0.9\n")
    monkeypatch.setenv("TAGIFAI_CONFIG", str(override))
    s = settings_module.load_settings()
    assert s["data"]["min_freq"] == 3 and s["data"]["seed"] == 1234
    assert s["register"]["min_f1"] == 0.9 and s["register"]["model_name"] == "tagifai"


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
        settings_module.load_settings()


def test_parse_stopwords_skips_comments_and_blanks():
    assert settings_module.parse_stopwords("# header\nthe\n\n  a  # article\n") == ["the", "a"]


def test_importing_the_package_touches_nothing(tmp_path):
    import subprocess
    import sys

    code = "import tagifai.cli, tagifai.steps, tagifai.tracking, tagifai.settings; import os; print(os.listdir('.'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_override_may_come_as_toml_content(monkeypatch):
    # How a step container gets the deployer's override: its content, with no path of the worker's.
    monkeypatch.delenv("TAGIFAI_CONFIG", raising=False)
    monkeypatch.setenv("TAGIFAI_CONFIG_TOML", "[optimize]\nnum_trials = 4\n")
    assert settings_module.load_settings()["optimize"]["num_trials"] == 4
    monkeypatch.setenv("TAGIFAI_CONFIG_TOML", "[optimize\n")
    with pytest.raises(TagifaiError, match="TAGIFAI_CONFIG_TOML is not valid TOML"):
        settings_module.load_settings()
