import math

import pandas as pd
import pytest

from tagifai.core import evaluate

TEST = pd.DataFrame(
    {
        "title": ["CNN for text", "Text convolution", "Image net", "BERT", "Short", "Deploy models to production now"],
        "description": [
            "sentence classification",
            "",
            "big vision dataset of labeled images",
            "",
            "",
            "with one single command",
        ],
        "tag": [
            "natural-language-processing",
            "natural-language-processing",
            "computer-vision",
            "natural-language-processing",
            "other",
            "mlops",
        ],
    }
)
PRED = ["natural-language-processing", "other", "computer-vision", "natural-language-processing", "other", "other"]
CLASSES = ["computer-vision", "mlops", "natural-language-processing", "other"]


def test_overall_and_per_class_metrics():
    report = evaluate.evaluate(TEST, PRED, CLASSES)
    assert report["overall"]["num_samples"] == 6
    assert report["per_class"]["computer-vision"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "num_samples": 1.0}
    assert report["per_class"]["mlops"]["recall"] == 0.0
    assert report["per_class"]["natural-language-processing"]["recall"] == pytest.approx(2 / 3)
    assert report["confusion_matrix"]["matrix"][2] == [0, 0, 2, 1]


def test_snorkel_slices_select_the_right_rows():
    slices = evaluate.evaluate(TEST, PRED, CLASSES)["slices"]
    # nlp_cnn: NLP rows mentioning CNN/convolution -> rows 0 and 1 (one right, one wrong)
    assert slices["nlp_cnn"]["num_samples"] == 2 and slices["nlp_cnn"]["recall"] == 0.5
    # short_text: fewer than 8 words -> all but rows 2 and 5
    assert slices["short_text"]["num_samples"] == 4


def test_empty_slice_reports_nan_and_is_left_out_of_flat_metrics():
    frame = TEST.iloc[[2]]
    report = evaluate.evaluate(frame, ["computer-vision"], CLASSES)
    assert math.isnan(report["slices"]["nlp_cnn"]["f1"])
    flat = evaluate.flat_metrics(report)
    assert "slice_nlp_cnn_f1" not in flat and flat["slice_nlp_cnn_num_samples"] == 0
    assert flat["test_f1"] == 1.0 and "test_f1_computer-vision" in flat


def test_behavioral_tests_check_invariance_direction_and_minimum_functionality():
    cases = [
        {"kind": "invariance", "texts": ["a", "b"]},
        {"kind": "directional", "texts": ["image"], "expected": "computer-vision"},
        {"kind": "minimum_functionality", "texts": ["weather"], "expected": "other"},
    ]
    answers = {"a": "mlops", "b": "mlops", "image": "computer-vision", "weather": "mlops"}
    result = evaluate.behavioral_tests(lambda texts: [answers[t] for t in texts], cases)
    assert [r["passed"] for r in result["results"]] == [True, True, False]
    assert result["pass_rate"] == pytest.approx(2 / 3)


def test_plots_render():
    report = evaluate.evaluate(TEST, PRED, CLASSES)
    assert evaluate.plot_confusion_matrix(report).axes and evaluate.plot_per_class_f1(report).axes
