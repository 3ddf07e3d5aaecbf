"""The exclusion search's set finding on scripted verdicts (a recipe passes when its culprits are kept float)."""

from __future__ import annotations

from ortforge.searches.exclusion import find_float_set

NODES = tuple(f"n{i}" for i in range(1, 21))  # ranked, most suspect first


def _scripted(culprits: set[str], calls: list):
    def passes(nodes: tuple[str, ...]) -> bool:
        calls.append(nodes)
        return culprits <= set(nodes)

    return passes


def test_a_culprit_ranked_first_is_found_in_two_attempts():
    calls: list = []
    search = find_float_set(NODES, _scripted({"n1"}, calls), lambda: True)
    assert search.found == ("n1",) and search.minimal and search.attempts == 2 == len(calls)  # the worse half, then the top node


def test_culprits_the_ranking_put_lower_are_found_by_groups_not_prefixes():
    calls: list = []
    search = find_float_set(NODES, _scripted({"n3", "n9"}, calls), lambda: True)
    assert set(search.found) == {"n3", "n9"} and search.minimal
    assert search.attempts == len({tuple(sorted(c)) for c in calls}) < 16  # no set judged twice


def test_a_recipe_needing_more_than_the_worse_half_float_is_given_up_at_once():
    calls: list = []
    search = find_float_set(NODES, _scripted({"n2", "n15"}, calls), lambda: True)
    assert search.found is None and len(calls) == 1 and "only keeping most heavy layers float" in search.notes[0]


def test_the_budget_of_attempts_ends_with_the_smallest_passing_set_so_far():
    calls: list = []
    search = find_float_set(NODES, _scripted({"n3", "n9"}, calls), lambda: len(calls) < 5)
    assert search.found is not None and {"n3", "n9"} <= set(search.found) and not search.minimal and search.out_of_budget
    assert len(calls) == 5


def test_nothing_ranked_nothing_tried():
    search = find_float_set((), _scripted(set(), []), lambda: True)
    assert search.found is None and search.attempts == 0
