import pytest

from tagifai.pipeline.registry import gate, moves_back


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


@pytest.mark.parametrize(
    ("holdout_f1", "champion_holdout_f1", "best_holdout_f1", "promote", "reason"),
    [
        (0.84, 0.85, 0.85, True, "within 0.0200"),  # inside the margin of both
        (0.80, 0.85, 0.85, False, "holdout_f1 0.8000 is worse than the champion's 0.8500"),
        (0.82, 0.83, 0.85, False, "worse than the best champion's ever, 0.8500"),  # the champion is the weaker bar
        (0.55, None, None, False, "holdout_f1 0.5500 is below the minimum"),  # no champion: still the floor
        (0.70, None, 0.85, False, "best champion's ever"),  # an unscored champion leaves the best ever
    ],
)
def test_the_holdout_holds_a_challenger_whatever_its_own_test_split_says(
    holdout_f1, champion_holdout_f1, best_holdout_f1, promote, reason
):
    # Its own test split says: better than the champion (a relabel agrees with itself).
    decision = gate(0.95, 0.80, 0.6, 0.02, holdout_f1, champion_holdout_f1, best_holdout_f1)
    assert decision["promote"] is promote and reason in decision["reason"]


def test_sixty_promotions_at_the_margin_cannot_walk_the_holdout_score_down():
    # Each challenger is max_regression worse than the champion on the holdout, and forced (run anew,
    # nothing reused): the history keeps the best holdout f1 of every champion, not of a window.
    min_f1, max_regression = 0.6, 0.02
    champions = [0.85]  # holdout f1 of each champion, oldest first (as the history records them)
    for _ in range(60):
        challenger = champions[-1] - max_regression
        decision = gate(0.9, 0.9, min_f1, max_regression, challenger, champions[-1], max(champions))
        if decision["promote"]:
            champions.append(challenger)
        else:
            assert "regressions do not add up" in decision["reason"]
    assert min(champions) >= max(champions) - max_regression - 1e-9
    assert len(champions) == 2  # one step down was allowed, the second would have added up


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
