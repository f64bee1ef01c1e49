"""The summary charts' y axis ends on a tick above the tallest bar: checked against d3's tick rule (the one
Vega draws its axis with), written out here from d3-array's ticks.js."""

import math

import numpy as np
import pytest

from demo.ui import summary
from demo.ui.summary import axis_top, y_limits


def d3_ticks(stop: float, count: int) -> list[float]:
    """d3.ticks(0, stop, count): steps of 1, 2 or 5 times a power of ten, as near stop / count as d3 goes."""
    raw = stop / count
    power = math.floor(math.log10(raw))
    error = raw / 10 ** power
    factor = 10 if error >= math.sqrt(50) else 5 if error >= math.sqrt(10) else 2 if error >= math.sqrt(2) else 1
    step = factor * 10.0 ** power
    return [i * step for i in range(int(math.floor(stop / step + 1e-9)) + 1)]


@pytest.mark.parametrize("largest, top", [(2.5, 3), (7740, 10000), (7600, 8000), (257, 300), (162, 200), (1.3, 2),
                                          (0.0021, 0.003), (38.9, 60), (95.3, 200), (5.7, 6)])
def test_round_tops_by_hand(largest, top):
    assert axis_top(largest) == top


@pytest.mark.parametrize("largest", list(np.logspace(-3, 5, 97)) + [1, 10, 100, 0.95, 9.5, 190.5, 3.81])
def test_top_is_above_the_tallest_bar_and_a_tick_vega_draws(largest):
    top = axis_top(float(largest))
    assert top >= largest * 1.05  # the bar stops under the top
    assert top <= largest * 2.2  # and the chart is not mostly empty
    for count in range(3, 7):  # about one tick per 40 px of a 120-240 px plot
        assert math.isclose(d3_ticks(top, count)[-1], top, rel_tol=1e-9), (largest, top, count)


@pytest.mark.parametrize("largest", [0.0, -3.0, math.nan, math.inf, -math.inf])
def test_nothing_to_fit_leaves_the_axis_to_vega(largest):
    assert axis_top(largest) is None


def test_limits_start_at_zero_and_skip_missing_values():
    assert y_limits([1.2, math.nan, 2.4]) == [0, 3]
    assert y_limits([np.float64(257.0), np.float64(162.0)]) == [0, 300]
    assert y_limits([]) == [0, None]
    assert y_limits([math.nan]) == [0, None]


def test_summary_table_shows_every_missing_value_as_a_dash():
    """A variant that never loaded has no load text and no figures: the table says "–", never "nan" or "None"."""
    failed = {"variant": "m/gguf", "method": "gguf", "bits": 8, "status": "error", "error": "not quantized yet",
              "new_tokens": 0, "ttft_ms": None, "decode_tokens_per_s": None, "total_ms": None, "load_ms": None,
              "weights_mib": None, "peak_memory_mib": None}
    done = {**failed, "variant": "m/bf16", "method": "bf16", "bits": 16, "status": "done", "error": None,
            "new_tokens": 8, "ttft_ms": 40.0, "decode_tokens_per_s": 30.0, "total_ms": 300.0, "load_ms": 900.0,
            "cache_hit": False, "weights_mib": 256.0, "peak_memory_mib": 260.0}
    frame = summary.summary_frame([failed, done])
    html = summary.table_style(frame, {"m/gguf": "#000000", "m/bf16": "#ffffff"}).to_html()
    assert "nan" not in html and "None" not in html
    assert html.count("–") >= 8  # the failed row's load, times, sizes, bandwidth and fidelity cells


def _record(variant, method, kl, mib, kernel="native", energy=None):
    return {"variant": variant, "method": method, "bits": 4, "status": "done", "error": None, "new_tokens": 8,
            "ttft_ms": 40.0, "decode_tokens_per_s": 30.0, "total_ms": 300.0, "load_ms": 900.0, "cache_hit": False,
            "weights_mib": mib, "peak_memory_mib": mib + 4, "achieved_bandwidth_gb_s": 3.0, "bandwidth_share": 0.1,
            "energy_joules_per_token": energy, "kernel": {"kind": kernel, "reason": "r", "found_by": "f"},
            "fidelity": {"baseline": "m/fp32", "kl_divergence": kl, "top1_agreement": 1.0 if kl == 0 else 0.9},
            "answer_departs_at_token": None}


def test_fidelity_sits_next_to_the_name_and_a_column_empty_in_every_row_is_folded():
    """KL and top-1 come right after the variant's name, method and bits; energy, a dash in every row on a CPU,
    leaves the table for the conditions line."""
    from demo.reports import report

    records = [_record("m/fp32", "fp32", 0.0, 513.0), _record("m/hqq", "hqq", 0.02, 111.0, "emulated")]
    frame = summary.summary_frame(records)
    assert list(frame.columns[:5]) == ["variant", "method", "bits", "KL vs baseline (nats)", "top-1 agreement (%)"]
    assert summary.empty_columns(frame) == ["energy (J/token)"]
    records[0]["energy_joules_per_token"] = 0.5  # one row with a value keeps the column
    assert summary.empty_columns(summary.summary_frame(records)) == []
    assert frame["method"].tolist() == ["fp32", "hqq (emulated)"]
    assert len(report.summary_rows(records)[0]) == len(report.SUMMARY_HEADERS)


def test_the_kl_chart_rows_take_each_finished_variant_with_its_kernel():
    records = [_record("m/fp32", "fp32", 0.0, 513.0), _record("m/hqq", "hqq", 0.02, 111.0, "emulated"),
               {**_record("m/gguf", "gguf", None, 90.0), "status": "error", "fidelity": None}]
    rows = summary.kl_rows(records)
    assert [(r["variant"], r["kl"]["mean"], r["weights_mib"], r["kernel"]["kind"]) for r in rows] == [
        ("m/fp32", 0.0, 513.0, "native"), ("m/hqq", 0.02, 111.0, "emulated")]
