"""The exclusion search's set finding on scripted verdicts (a recipe passes when its culprits are kept float)."""

from __future__ import annotations

from ortforge.searches.exclusion import find_float_set, find_leading_region, leading_regions

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
    assert search.found is None and len(calls) == 1 and "no small set of nodes holds the error" in search.notes[0]


def test_the_budget_of_attempts_ends_with_the_smallest_passing_set_so_far():
    calls: list = []
    search = find_float_set(NODES, _scripted({"n3", "n9"}, calls), lambda: len(calls) < 5)
    assert search.found is not None and {"n3", "n9"} <= set(search.found) and not search.minimal and search.out_of_budget
    assert len(calls) == 5


def test_nothing_ranked_nothing_tried():
    search = find_float_set((), _scripted(set(), []), lambda: True)
    assert search.found is None and search.attempts == 0


REGIONS = tuple(tuple(f"n{j}" for j in range(1, 3 * k + 1)) for k in range(1, 21))  # through heavy layer k: 3k nodes


def _needs_first(layers: int, calls: list):
    """Passes when the first `layers` heavy layers' regions are float (error spread over the early layers)."""
    def passes(nodes: tuple[str, ...]) -> bool:
        calls.append(nodes)
        return len(nodes) >= 3 * layers

    return passes


def test_the_shortest_leading_region_is_found_by_bisection():
    calls: list = []
    search = find_leading_region(REGIONS, _needs_first(6, calls), lambda: True)
    assert search.found == REGIONS[5] and not search.out_of_budget
    assert len(calls) <= 5 and "through heavy layer 6 of 20" in search.notes[0]  # half first, then bisection over 10


def test_a_recipe_needing_more_than_half_the_heavy_layers_float_is_given_up():
    calls: list = []
    search = find_leading_region(REGIONS, _needs_first(11, calls), lambda: True)
    assert search.found is None and len(calls) == 1 and "only keeping most heavy layers float" in search.notes[0]


def test_a_leading_region_cut_short_by_the_budget_is_a_passing_one():
    calls: list = []
    search = find_leading_region(REGIONS, _needs_first(3, calls), lambda: len(calls) < 2)
    assert search.found == REGIONS[4] and search.out_of_budget  # the half (10), then 5: passing, not yet the shortest


def test_leading_regions_follow_graph_order_and_end_at_heavy_layers():
    from onnx import helper

    nodes = [helper.make_node(op, [], [name], name=name) for op, name in
             (("Conv", "c1"), ("Mul", "m1"), ("Relu", "r1"), ("Conv", "c2"), ("Add", "a2"), ("MatMul", "mm"))]  # fmt: skip
    proto = helper.make_model(helper.make_graph(nodes, "g", [], []))
    regions = leading_regions(proto, {"c1", "m1", "c2", "a2", "mm"})  # r1 was not quantized
    assert regions == [("c1",), ("c1", "m1", "c2"), ("c1", "m1", "c2", "a2", "mm")]
