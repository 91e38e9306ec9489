import pytest

from tagifai.pipeline.registry import gate, moves_back, recent_champions


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


def test_ten_challengers_each_a_little_worse_cannot_walk_the_gate_down():
    # Each challenger is 0.015 worse than the last champion: within max_regression of it, every time.
    # The gate also holds them against the best of the recent champions, so the slide stops.
    min_f1, max_regression, window = 0.6, 0.02, 5
    champions = [0.851]  # test f1 of each champion, oldest first (as the history records them)
    for _ in range(10):
        challenger = champions[-1] - 0.015
        recent = champions[-window:]
        decision = gate(challenger, champions[-1], min_f1, max_regression, recent_best_f1=max(recent))
        if decision["promote"]:
            champions.append(challenger)
        else:
            assert "best recent champion" in decision["reason"]
    assert champions[-1] >= max(champions) - max_regression
    assert len(champions) == 2  # one step down was allowed, the second would have added up to 0.03


def test_recent_best_is_held_even_when_the_current_champion_is_weaker():
    decision = gate(0.84, champion_f1=0.845, min_f1=0.6, max_regression=0.02, recent_best_f1=0.87)
    assert decision["promote"] is False and "best recent champion's 0.8700" in decision["reason"]


@pytest.mark.parametrize(
    ("version", "champion", "why"),
    [
        ("3", None, None),  # no champion: nothing to move back from
        ("4", "3", None),  # newer: may be judged
        ("3", "3", "is the champion already"),  # a retried register of the champion's own run
        ("2", "3", "never moves champion back"),  # a cleared register of an older run
    ],
)
def test_moves_back_refuses_versions_not_newer_than_the_champion(version, champion, why):
    from types import SimpleNamespace

    found = moves_back(version, SimpleNamespace(version=champion) if champion else None)
    assert (found is None) if why is None else (why in found)


def test_recent_champions_are_the_distinct_versions_of_the_last_moves():
    moves = [{"to_version": v} for v in ["7", "5", "7", "4", "3", "2", "1"]]  # newest first
    assert recent_champions(moves, window=5) == ["7", "5", "4", "3"]
    assert recent_champions(moves, window=5, exclude="7") == ["5", "4", "3"]
