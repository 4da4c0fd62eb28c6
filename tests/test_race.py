"""The race's schedule and its paired decision rule, on known sequences of values (issue 28's core)."""

from __future__ import annotations

import math

import pytest

from autopeft.search.race import (
    DISPLACE_SE,
    Rung,
    Schedule,
    decide,
    paired_difference,
    plan_race,
    rank,
    rate_bracket,
)


def _shape(schedule: Schedule) -> list[tuple[float, int, int]]:
    return [(round(r.fraction, 4), len(r.seeds), r.entrants) for r in schedule.rungs]


def test_a_race_of_nine_entrants_halves_by_three_up_to_the_final_fidelity_with_three_seeds() -> None:
    schedule = plan_race(9, budget=12)
    assert _shape(schedule) == [(0.1111, 1, 9), (0.3333, 2, 3), (1.0, 3, 2)]
    assert schedule.cost == pytest.approx(9 * 1 / 9 + 3 * 2 / 3 + 2 * 3)
    assert [r.seeds for r in schedule.rungs] == [
        (0,),
        (0, 1),
        (0, 1, 2),
    ]  # paired: every rung's seeds extend the last's


def test_the_fewest_rungs_that_fit_are_chosen() -> None:
    # Two rungs (cost 15) fit a budget of 15; at 14 only the three-rung race (cost 9) does.
    assert len(plan_race(9, budget=15).rungs) == 2
    assert len(plan_race(9, budget=14).rungs) == 3
    assert _shape(plan_race(2, budget=6)) == [(1.0, 3, 2)]  # nothing to cut: everyone at full fidelity


def test_a_budget_no_race_fits_names_the_cheapest_cost() -> None:
    with pytest.raises(
        ValueError, match=r"a race of 9 entrants needs at least 9\.0 full trainings, and the budget is 4"
    ):
        plan_race(9, budget=4)
    with pytest.raises(ValueError, match="no race"):
        plan_race(0, budget=10)


def test_no_rung_is_shorter_than_the_minimum_fraction() -> None:
    schedule = plan_race(27, budget=100, min_fraction=1 / 3)
    assert min(r.fraction for r in schedule.rungs) >= 1 / 3
    assert Rung(0.5, (0, 1), 4).cost == 4.0


def test_a_bracket_is_log_spaced_around_the_prior_and_clipped_without_duplicates() -> None:
    assert rate_bracket(3e-3) == pytest.approx((1e-3, 3e-3, 9e-3))
    assert rate_bracket(3e-3, high=5e-3) == pytest.approx((1e-3, 3e-3, 5e-3))
    assert rate_bracket(3e-3, size=3, high=1e-3) == (1e-3,)
    assert rate_bracket(1e-2, size=2, spread=4) == pytest.approx((5e-3, 2e-2))
    with pytest.raises(ValueError):
        rate_bracket(0.0)


def test_a_paired_difference_is_taken_seed_by_seed_on_shared_seeds() -> None:
    diff = paired_difference({0: 0.80, 1: 0.70, 2: 0.75, 9: 0.1}, {0: 0.78, 1: 0.69, 2: 0.72})
    assert diff.n == 3 and diff.mean == pytest.approx(0.02)
    assert diff.sd == pytest.approx(0.01) and diff.se == pytest.approx(0.01 / math.sqrt(3))
    low, high = diff.interval()
    assert low == pytest.approx(0.02 - 1.96 * 0.01 / math.sqrt(3)) and high > 0.02
    # A perplexity falls: a lower challenger is the better one, and its difference is positive.
    assert paired_difference({0: 55.0}, {0: 60.0}, sign=-1).mean == 5.0
    assert paired_difference({0: 55.0}, {0: 60.0}).se == math.inf  # one pair shows no noise
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_pairing_sees_a_gain_that_unpaired_spreads_would_hide() -> None:
    # The seeds move both entrants by ±5 points; the challenger is 1 point better on every one of them.
    incumbent = {0: 0.70, 1: 0.80, 2: 0.75, 3: 0.65, 4: 0.85}
    challenger = {s: v + 0.01 for s, v in incumbent.items()}
    decision = decide({"incumbent": incumbent, "challenger": challenger}, "incumbent", seeds=range(5))
    assert decision.displaced and decision.chosen == "challenger"
    assert decision.difference is not None and decision.difference.mean == pytest.approx(0.01)


def test_a_gain_within_the_noise_leaves_the_incumbent() -> None:
    incumbent = {0: 0.70, 1: 0.80, 2: 0.75}
    challenger = {0: 0.74, 1: 0.78, 2: 0.76}  # +4, -2, +1 points: mean +1, se 1.8
    decision = decide({"incumbent": incumbent, "challenger": challenger}, "incumbent", seeds=[0, 1, 2])
    assert decision.best == "challenger" and not decision.displaced and decision.chosen == "incumbent"
    assert decision.difference is not None
    assert decision.difference.mean < DISPLACE_SE * decision.difference.se


def test_the_threshold_is_the_rule() -> None:
    incumbent = {0: 0.70, 1: 0.80, 2: 0.75}
    challenger = {0: 0.73, 1: 0.81, 2: 0.77}  # +3, +1, +2: mean 2, se 0.577: 3.46 standard errors
    scores = {"i": incumbent, "c": challenger}
    assert decide(scores, "i", [0, 1, 2], threshold=3.0).displaced
    assert not decide(scores, "i", [0, 1, 2], threshold=3.5).displaced


def test_the_incumbent_on_top_is_kept_without_a_difference() -> None:
    scores = {"i": {0: 0.9, 1: 0.9, 2: 0.9}, "c": {0: 0.8, 1: 0.85, 2: 0.7}}
    decision = decide(scores, "i", [0, 1, 2])
    assert decision.chosen == decision.best == "i" and decision.difference is None and not decision.displaced


def test_lower_is_better_for_a_loss() -> None:
    scores = {"i": {0: 61.0, 1: 60.5, 2: 61.3}, "c": {0: 57.0, 1: 56.8, 2: 57.1}}
    decision = decide(scores, "i", [0, 1, 2], sign=-1)
    assert decision.displaced and decision.chosen == "c"


def test_ranking_waits_for_every_seed_of_the_rung() -> None:
    scores = {"a": {0: 0.7, 1: 0.7}, "b": {0: 0.9}, "c": {0: 0.6, 1: 0.8}}
    assert rank(scores, [0, 1]) == ["a", "c"]  # b has not run seed 1 yet: its mean would not be paired
    assert rank(scores, [0]) == ["b", "a", "c"]
    assert rank(scores, [0], sign=-1) == ["c", "a", "b"]
    with pytest.raises(ValueError, match="incumbent has not run"):
        decide(scores, "b", [0, 1])


def test_a_structure_draw_the_race_has_becomes_a_new_rank_even_at_the_smallest() -> None:
    """Two structure trials that draw rank 2 on the MLP (the smallest rank) train two structures:
    the second comes up to rank 4 instead of training the first one's configuration again."""
    import json
    from types import SimpleNamespace

    import optuna

    from autopeft.blocks import build_context
    from autopeft.search.portfolio import structure_config
    from autopeft.testing import tiny_llama_lm
    from autopeft_plugins.lora import Lora

    model = tiny_llama_lm()
    bench = SimpleNamespace(
        enabled={"lora": Lora()}, options={"lora": {}}, ctx=build_context(model, new_head=False), budget=10**9
    )
    space = SimpleNamespace(bench=bench)
    around = {"alpha": 2, "dropout": 0.0, "ranks": [8, 8, 8], "targets": "query+value", "variant": "lora"}
    draw = {"structure.targets": "mlp", "structure.rank": 2, "structure.tilt": "flat"}
    first = structure_config(optuna.trial.FixedTrial(draw), space, around)
    assert first["ranks"] == [2, 2, 2] and first["targets"] == "mlp"
    second = structure_config(optuna.trial.FixedTrial(draw), space, around, {json.dumps(first, sort_keys=True)})
    assert second["ranks"] == [4, 4, 4] and second["targets"] == "mlp"
    bench.budget = Lora().count_trainable(bench.ctx, first)  # nothing larger fits: the draw stands
    assert structure_config(optuna.trial.FixedTrial(draw), space, around, {json.dumps(first, sort_keys=True)}) == first
