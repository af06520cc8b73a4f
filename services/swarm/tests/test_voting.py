"""Borda count and ranked pairs over the agents' rankings of hypotheses."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest

from services.swarm.voting import Consensus, borda, ranked_pairs


def profile(*groups: tuple[int, Sequence[str]]) -> dict[str, list[str]]:
    """``count`` agents casting each ballot (agent names are unique and stable)."""
    rankings: dict[str, list[str]] = {}
    for group, (count, ballot) in enumerate(groups):
        for index in range(count):
            rankings[f"agent-{group}-{index}"] = list(ballot)
    return rankings


# The Tennessee capital example (Wikipedia, "Condorcet method" and "Ranked pairs"): 42% Memphis,
# 26% Nashville, 15% Chattanooga, 17% Knoxville, each ranking by distance.
TENNESSEE = profile(
    (42, ["Memphis", "Nashville", "Chattanooga", "Knoxville"]),
    (26, ["Nashville", "Chattanooga", "Knoxville", "Memphis"]),
    (15, ["Chattanooga", "Knoxville", "Nashville", "Memphis"]),
    (17, ["Knoxville", "Chattanooga", "Nashville", "Memphis"]),
)
CITIES = ["Memphis", "Nashville", "Chattanooga", "Knoxville"]


def test_tennessee_borda() -> None:
    result = borda(TENNESSEE, CITIES)
    assert result.rule == "borda"
    assert result.scores == {"Memphis": 126.0, "Nashville": 194.0, "Chattanooga": 173.0, "Knoxville": 107.0}
    assert result.order == ("Nashville", "Chattanooga", "Memphis", "Knoxville")
    assert result.winner == "Nashville"


def test_tennessee_ranked_pairs() -> None:
    result = ranked_pairs(TENNESSEE, CITIES)
    assert result.rule == "ranked-pairs"
    # Wikipedia's result: Nashville > Chattanooga > Knoxville > Memphis.
    assert result.order == ("Nashville", "Chattanooga", "Knoxville", "Memphis")
    assert result.winner == "Nashville"
    assert result.scores == {"Nashville": 3.0, "Chattanooga": 2.0, "Knoxville": 1.0, "Memphis": 0.0}


def test_borda_and_ranked_pairs_disagree_on_a_condorcet_winner() -> None:
    # The textbook failure of Borda's Condorcet criterion: a 3-2 majority prefers A to both B and C,
    # but the minority's strong second-place support for B gives B the most Borda points.
    rankings = profile((3, ["A", "B", "C"]), (2, ["B", "C", "A"]))
    by_borda = borda(rankings, ["A", "B", "C"])
    by_pairs = ranked_pairs(rankings, ["A", "B", "C"])
    assert by_borda.scores == {"A": 6.0, "B": 7.0, "C": 2.0}
    assert by_borda.winner == "B"
    assert by_pairs.winner == "A"  # the Condorcet winner
    assert by_pairs.order == ("A", "B", "C")
    assert by_pairs.scores == {"A": 2.0, "B": 1.0, "C": 0.0}
    assert by_borda.dissent() == [(f"agent-0-{index}", "A") for index in range(3)]
    assert by_pairs.dissent() == [(f"agent-1-{index}", "B") for index in range(2)]


def test_ranked_pairs_breaks_a_condorcet_cycle_at_its_weakest_link() -> None:
    # A beats B 6-3, B beats C 7-2, C beats A 5-4: a cycle. Lock B>C (7), then A>B (6); C>A (5) would
    # close the cycle and is skipped, so A wins.
    rankings = profile((4, ["A", "B", "C"]), (3, ["B", "C", "A"]), (2, ["C", "A", "B"]))
    for candidates in (["A", "B", "C"], ["C", "B", "A"], ["B", "C", "A"]):
        result = ranked_pairs(rankings, candidates)
        assert result.order == ("A", "B", "C")
        assert result.scores == {"A": 1.0, "B": 1.0, "C": 1.0}  # everyone wins one pairing


def test_borda_ties_go_to_the_earlier_candidate() -> None:
    rankings = profile((4, ["A", "B", "C"]), (3, ["B", "C", "A"]), (2, ["C", "A", "B"]))
    assert borda(rankings, ["A", "B", "C"]).scores == {"A": 10.0, "B": 10.0, "C": 7.0}
    assert borda(rankings, ["A", "B", "C"]).order == ("A", "B", "C")
    assert borda(rankings, ["B", "A", "C"]).order == ("B", "A", "C")


def test_ranked_pairs_tie_break_by_candidate_order() -> None:
    # Perfectly symmetric: every pairing is 1-1, nothing is locked, the given order decides.
    rankings = {"x": ["A", "B", "C"], "y": ["C", "B", "A"]}
    assert ranked_pairs(rankings, ["A", "B", "C"]).order == ("A", "B", "C")
    assert ranked_pairs(rankings, ["C", "A", "B"]).order == ("C", "A", "B")
    # A three-way cycle of equal strength: the pair whose winner comes first is locked first.
    cycle = {"x": ["A", "B", "C"], "y": ["B", "C", "A"], "z": ["C", "A", "B"]}
    assert ranked_pairs(cycle, ["A", "B", "C"]).winner == "A"
    assert ranked_pairs(cycle, ["B", "C", "A"]).winner == "B"
    assert ranked_pairs(cycle, ["C", "A", "B"]).winner == "C"


def test_partial_rankings() -> None:
    rankings = {"a1": ["H2"], "a2": ["H1", "H2"], "a3": ["H3", "H1", "H2"]}
    result = borda(rankings, ["H1", "H2", "H3"])
    # n = 3: first 2 points, second 1, third 0; unranked 0.
    assert result.scores == {"H1": 3.0, "H2": 3.0, "H3": 2.0}
    assert result.order == ("H1", "H2", "H3")
    pairs = ranked_pairs(rankings, ["H1", "H2", "H3"])
    # H1 over H2: a2, a3 (2) vs a1 (1). H2 over H3: a1, a2 (2) vs a3 (1). H1 over H3: a2 (1) vs a3 (1), a1
    # ranks neither: a tie.
    assert pairs.order == ("H1", "H2", "H3")
    assert pairs.scores == {"H1": 1.0, "H2": 1.0, "H3": 0.0}


def test_abstentions_and_empty_votes() -> None:
    assert borda({}, ["H1", "H2"]).winner is None
    assert ranked_pairs({"a": []}, ["H1", "H2"]).winner is None
    empty = borda({}, [])
    assert empty.winner is None and empty.order == () and empty.scores == {}
    assert empty.dissent() == []
    result = borda({"a": [], "b": ["H2"]}, ["H1", "H2"])
    assert result.winner == "H2"
    assert result.dissent() == []  # an abstaining agent has no first choice to dissent with


def test_single_candidate() -> None:
    result = ranked_pairs({"a": ["H1"], "b": ["H1"]}, ["H1"])
    assert result.winner == "H1" and result.order == ("H1",) and result.scores == {"H1": 0.0}


def test_rankings_are_kept_as_given() -> None:
    rankings = {"skeptic": ["H2", "H1"], "analyst": ["H1", "H2"], "counterfactual": ["H1"]}
    result = borda(rankings, ["H1", "H2"])
    assert result.rankings == {"skeptic": ("H2", "H1"), "analyst": ("H1", "H2"), "counterfactual": ("H1",)}
    assert result.winner == "H1"
    assert result.dissent() == [("skeptic", "H2")]
    assert isinstance(result, Consensus)


@pytest.mark.parametrize("rule", [borda, ranked_pairs])
def test_validation(rule: object) -> None:
    assert callable(rule)
    with pytest.raises(ValueError, match="'H9', which is not a candidate"):
        rule({"a": ["H1", "H9"]}, ["H1", "H2"])
    with pytest.raises(ValueError, match="ranks 'H1' twice"):
        rule({"a": ["H1", "H2", "H1"]}, ["H1", "H2"])
    with pytest.raises(ValueError, match="listed twice"):
        rule({"a": ["H1"]}, ["H1", "H1"])
    with pytest.raises(ValueError, match="one string"):
        rule({"a": "H1"}, ["H1", "H2"])


def test_ranked_pairs_elects_the_condorcet_winner_whenever_there_is_one() -> None:
    generator = random.Random(20260)
    candidates = ["H1", "H2", "H3", "H4"]
    checked = 0
    for _ in range(300):
        rankings = {f"agent-{index}": generator.sample(candidates, generator.randint(0, 4)) for index in range(5)}
        wins = {c: 0 for c in candidates}
        for a, b in itertools.permutations(candidates, 2):
            above = sum(1 for ballot in rankings.values() if a in ballot and (b not in ballot or ballot.index(a) < ballot.index(b)))
            below = sum(1 for ballot in rankings.values() if b in ballot and (a not in ballot or ballot.index(b) < ballot.index(a)))
            wins[a] += above > below
        condorcet = [c for c in candidates if wins[c] == len(candidates) - 1]
        result = ranked_pairs(rankings, candidates)
        assert sorted(result.order) == sorted(candidates)
        assert result.scores == {c: float(wins[c]) for c in candidates}
        if condorcet:
            checked += 1
            assert result.winner == condorcet[0]
        # Deterministic: the same ballots in another dict order give the same result.
        assert ranked_pairs(dict(reversed(list(rankings.items()))), candidates).order == result.order
        assert borda(dict(reversed(list(rankings.items()))), candidates).order == borda(rankings, candidates).order
    assert checked > 50


def test_a_consensus_built_from_lists_holds_tuples() -> None:
    # A leader's pick (hierarchical mode) is reported in the same shape as a vote.
    order = ["H2", "H1"]
    rankings = {"leader": order}
    consensus = Consensus(rule="leader", winner="H2", scores={"H2": 0.9, "H1": 0.4}, order=order, rankings=rankings)
    order.append("H3")
    assert consensus.order == ("H2", "H1")
    assert consensus.rankings == {"leader": ("H2", "H1")}
    assert consensus.dissent() == []
