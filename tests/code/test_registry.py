import pytest

from tagifai.registry import gate


@pytest.mark.parametrize(
    ("f1", "champion_f1", "promote", "reason"),
    [
        (0.80, None, True, "no champion yet"),  # first model above the floor
        (0.50, None, False, "below the minimum"),  # below the floor
        (0.85, 0.86, True, "within 0.0200"),  # slightly worse, inside the margin
        (0.83, 0.86, False, "worse than the champion's 0.8600"),  # worse beyond the margin
        (0.90, 0.86, True, "within"),  # better
        (0.59, 0.50, False, "below the minimum"),  # the floor wins even over a weak champion
    ],
)
def test_gate(f1, champion_f1, promote, reason):
    decision = gate(f1, champion_f1, min_f1=0.6, max_regression=0.02)
    assert decision["promote"] is promote
    assert reason in decision["reason"]
