"""The verdict bench_page, bench_storm and bench_zerogpu give their ratios: make bench's paired statistic
(demo.measuring.paired_ratio), "met" only where the whole interval clears the target."""

import pytest

from benchmarks import bench_page, bench_storm, bench_zerogpu
from demo.measuring.paired_ratio import MIN_PAIRS, paired_ratio


def _pairs(ratios: list[float]) -> tuple[list[float], list[float]]:
    denominators = [40.0 + i for i in range(len(ratios))]  # the machine's speed drifts; the ratios hold
    return [r * d for r, d in zip(ratios, denominators)], denominators


def test_the_interval_and_ratio_are_paired_ratio_s():
    numerators, denominators = _pairs([0.97, 1.01, 0.99, 0.96, 1.02, 0.98, 1.00, 0.99, 1.03, 0.97])
    verdict = bench_page.paired_verdict(numerators, denominators)
    expected = paired_ratio(numerators, denominators)
    assert verdict["ratio"] == pytest.approx(expected.ratio, abs=1e-4)
    assert (verdict["ratio_low"], verdict["ratio_high"]) == pytest.approx((expected.low, expected.high), abs=1e-4)
    assert verdict["ratio_confidence"] >= 0.95 and verdict["pairs"] == 10
    assert verdict["target"] == "met"  # every pair ratio but the extremes at or above 0.96


def test_an_interval_wholly_below_the_target_is_not_met():
    verdict = bench_page.paired_verdict(*_pairs([0.90, 0.91, 0.89, 0.92, 0.90, 0.93, 0.88, 0.91]))
    assert verdict["ratio_high"] < 0.95 and verdict["target"] == "not met"


def test_an_interval_across_the_target_cannot_tell_even_with_its_median_above():
    verdict = bench_page.paired_verdict(*_pairs([0.93, 1.00, 0.99, 0.94, 1.01, 0.98, 0.97, 0.92, 1.02, 0.99]))
    assert verdict["ratio"] >= 0.95
    assert verdict["ratio_low"] < 0.95 <= verdict["ratio_high"] and verdict["target"] == "can't tell"


def test_the_target_is_the_caller_s():
    pairs = _pairs([0.97, 0.98, 0.99, 0.97, 0.98, 0.99])
    assert bench_page.paired_verdict(*pairs, target=0.95)["target"] == "met"
    assert bench_page.paired_verdict(*pairs, target=0.999)["target"] == "not met"


def test_too_few_pairs_for_an_interval_cannot_tell_however_high_the_ratio():
    verdict = bench_page.paired_verdict(*_pairs([1.10, 1.20, 1.15, 1.12, 1.30]))  # the old default: 5 pairs
    assert verdict["pairs"] == 5 < MIN_PAIRS
    assert verdict["target"] == "can't tell" and verdict["ratio_low"] is None and verdict["ratio_high"] is None
    assert verdict["ratio"] == pytest.approx(1.15, abs=1e-4)
    assert bench_page.interval_text(verdict) == "1.150 over 5 pairs, too few for a 95% interval: can't tell"


def test_unpaired_rates_are_refused():
    with pytest.raises(ValueError):
        bench_page.paired_verdict([1.0] * 6, [1.0] * 7)


def test_the_three_scripts_share_one_verdict_and_default_to_enough_pairs():
    assert bench_storm.paired_verdict is bench_page.paired_verdict is bench_zerogpu.paired_verdict
    assert bench_page.RUNS >= MIN_PAIRS
    text = bench_page.interval_text(bench_page.paired_verdict(*_pairs([0.97, 0.98, 0.99, 0.97, 0.98, 0.99])))
    assert text == "0.980 [0.970, 0.990] over 6 pairs: met"
