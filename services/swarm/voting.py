"""Rank aggregation for the agents' vote on hypotheses: Borda count and Tideman's ranked pairs.

Democratic mode closes the hypotheses phase with a vote: every voting agent ranks the candidate
hypotheses, best first. Borda rewards broad support (a hypothesis everyone ranks second can beat
one a bare majority ranks first); ranked pairs elects the Condorcet winner whenever there is one
(the hypothesis a majority prefers to each other one). The report shows the rule, the scores and
the dissent, so a reader sees how close the call was and who disagreed.

Both rules are deterministic: an exact tie is broken by the order of ``candidates`` as given
(earlier wins), so the same ballots always give the same result on every replica, and a durable
workflow that replays a vote gets the winner it got the first time.

Rankings may be partial. Borda: with ``n`` candidates, the one at position ``i`` (0-based) of a
ballot gets ``n - 1 - i`` points and every candidate the ballot leaves out gets 0. Ranked pairs: a
ballot prefers each candidate it ranks to each it leaves out, and has no preference between two it
leaves out. An empty ballot is an abstention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Consensus", "borda", "ranked_pairs"]


@dataclass(frozen=True)
class Consensus:
    """The outcome of a vote.

    ``scores``: Borda points, or for ranked pairs the number of candidates each beats head to
    head. ``order``: every candidate, best first. ``winner``: ``order[0]``, or None when no ballot
    ranked anything (or there were no candidates).
    """

    rule: str
    winner: str | None
    scores: dict[str, float]
    order: Sequence[str]
    rankings: Mapping[str, Sequence[str]]

    def __post_init__(self) -> None:
        # Other deciders (a leader's pick) build one from lists; held as tuples so it stays as decided.
        object.__setattr__(self, "order", tuple(self.order))
        object.__setattr__(self, "rankings", {agent: tuple(ranking) for agent, ranking in self.rankings.items()})

    def dissent(self) -> list[tuple[str, str]]:
        """(agent, their first choice) for each agent whose first choice is not the winner."""
        if self.winner is None:
            return []
        return [(agent, ranking[0]) for agent, ranking in self.rankings.items() if ranking and ranking[0] != self.winner]


def borda(rankings: Mapping[str, Sequence[str]], candidates: Sequence[str]) -> Consensus:
    """Borda count over possibly partial rankings (see the module doc for the points and tie-break)."""
    ballots, position = _validated(rankings, candidates)
    n = len(position)
    scores = dict.fromkeys(position, 0.0)
    for ballot in ballots.values():
        for index, candidate in enumerate(ballot):
            scores[candidate] += n - 1 - index
    order = tuple(sorted(position, key=lambda candidate: (-scores[candidate], position[candidate])))
    return _consensus("borda", scores, order, ballots)


def ranked_pairs(rankings: Mapping[str, Sequence[str]], candidates: Sequence[str]) -> Consensus:
    """Tideman's ranked pairs: lock majorities strongest first, skipping any that closes a cycle.

    Strength is the number of ballots for the winner of the pair, then the fewer against it. Pairs
    equal in both are taken in the order of ``candidates`` (Tideman's tie-breaking ranking): the
    pair whose winner comes first, then, for the same winner, the pair whose loser comes last.
    Candidates no locked pair orders (a pairwise tie) are ranked by that order too.
    """
    ballots, position = _validated(rankings, candidates)
    names = list(position)
    prefer = {a: dict.fromkeys(names, 0) for a in names}  # prefer[a][b]: ballots ranking a above b
    for ballot in ballots.values():
        ranked = set(ballot)
        for index, a in enumerate(ballot):
            for b in ballot[index + 1 :]:
                prefer[a][b] += 1
            for b in names:
                if b not in ranked:
                    prefer[a][b] += 1
    majorities = [(a, b) for a in names for b in names if a != b and prefer[a][b] > prefer[b][a]]
    majorities.sort(key=lambda pair: (-prefer[pair[0]][pair[1]], prefer[pair[1]][pair[0]],
                                      position[pair[0]], -position[pair[1]]))
    beats: dict[str, set[str]] = {name: set() for name in names}  # the locked graph
    for winner, loser in majorities:
        if not _reaches(beats, loser, winner):
            beats[winner].add(loser)
    scores = {name: float(sum(prefer[name][other] > prefer[other][name] for other in names)) for name in names}
    return _consensus("ranked-pairs", scores, _topological(beats, position), ballots)


def _validated(
    rankings: Mapping[str, Sequence[str]], candidates: Sequence[str]
) -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    """The ballots as tuples and each candidate's tie-break position; ValueError on a bad ballot."""
    if isinstance(candidates, str):
        raise ValueError("candidates is a sequence of names, not one string")
    position: dict[str, int] = {}
    for index, candidate in enumerate(candidates):
        if candidate in position:
            raise ValueError(f"candidate {candidate!r} is listed twice")
        position[candidate] = index
    ballots: dict[str, tuple[str, ...]] = {}
    for agent, ranking in rankings.items():
        if isinstance(ranking, str):
            raise ValueError(f"{agent}'s ranking is one string, not a sequence of candidates")
        ballot = tuple(ranking)
        seen: set[str] = set()
        for candidate in ballot:
            if candidate not in position:
                raise ValueError(f"{agent} ranks {candidate!r}, which is not a candidate")
            if candidate in seen:
                raise ValueError(f"{agent} ranks {candidate!r} twice")
            seen.add(candidate)
        ballots[agent] = ballot
    return ballots, position


def _consensus(rule: str, scores: dict[str, float], order: tuple[str, ...],
               ballots: dict[str, tuple[str, ...]]) -> Consensus:
    voted = any(ballots.values())
    return Consensus(rule, order[0] if voted and order else None, scores, order, ballots)


def _reaches(beats: Mapping[str, set[str]], start: str, goal: str) -> bool:
    """Whether the locked graph has a path start -> goal (locking goal -> start would close a cycle)."""
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        for following in beats[node] - seen:
            seen.add(following)
            stack.append(following)
    return False


def _topological(beats: Mapping[str, set[str]], position: Mapping[str, int]) -> tuple[str, ...]:
    """The locked graph's order, best first; among candidates free at once, the earliest given first."""
    beaten_by = {name: 0 for name in beats}
    for losers in beats.values():
        for loser in losers:
            beaten_by[loser] += 1
    order: list[str] = []
    free = sorted((name for name, count in beaten_by.items() if count == 0), key=position.__getitem__)
    while free:
        name = free.pop(0)
        order.append(name)
        for loser in beats[name]:
            beaten_by[loser] -= 1
            if beaten_by[loser] == 0:
                free.append(loser)
        free.sort(key=position.__getitem__)
    return tuple(order)
