"""The evaluation's charts: files written with and without the new KL fields, what each chart plots, and room
above the largest value."""

import math

import numpy as np
import pytest

from demo.reports import charts

FLOOR = {"kl_mean": 0.0004, "kl_p99_9": 0.01, "epsilon": 2.0 ** -9}
FLOOR_LABEL = "noise floor (ε = 2⁻⁹)"


def _row(variant, mib, mean, p99_9=None, per_position=None, error=None):
    kl = None if mean is None else {"mean": mean, "p99_9": p99_9, "max": p99_9}
    return {"variant": variant, "baseline": "s/fp32", "weights_mib": mib, "kl_divergence": mean, "perplexity": 9.5,
            "decode_tokens_per_s_p50": 20.0, "kl": kl, "kl_per_position": per_position, "error": error}


def _rows():
    rng = np.random.default_rng(1)
    return [_row("s/fp32", 513.0, 0.0, 0.0, [0.0] * 200),
            _row("s/bf16", 257.0, 0.001, 0.02, list(rng.exponential(0.001, 200))),
            _row("s/nf4", 120.0, 0.03, 0.6, [*rng.exponential(0.03, 198), float("nan"), 0.0]),
            _row("s/awq", 110.0, float("nan")),  # every KL position non-finite
            _row("s/gguf", 140.0, None),  # a runtime without full distributions
            _row("s/bad", None, None, error="out of memory")]


def _dashed(ax):
    return [line for line in ax.get_lines() if line.get_linestyle() == "--"]


def test_rows_without_the_new_fields_write_the_two_charts_as_before(tmp_path):
    rows = [{"variant": "s/fp32", "weights_mib": 513.0, "kl_divergence": 0.0, "decode_tokens_per_s_p50": 30.0},
            {"variant": "s/nf4", "weights_mib": 120.0, "kl_divergence": 0.03, "decode_tokens_per_s_p50": None}]
    paths = charts.write_charts(rows, tmp_path, noise_floor=FLOOR)
    assert set(paths) == {"quality_chart", "speed_chart"}
    assert all(p.stat().st_size > 10_000 for p in paths.values())


def test_rows_with_the_new_fields_write_every_chart(tmp_path):
    paths = charts.write_charts(_rows(), tmp_path, order=["s/fp32", "s/bf16", "s/nf4", "s/awq", "s/gguf", "s/bad"],
                                noise_floor=FLOOR)
    assert set(paths) == {"quality_chart", "speed_chart", "kl_chart", "frontier_chart", "kl_histogram"}
    assert paths["kl_chart"].name == "kl_vs_size.png" and paths["kl_histogram"].name == "kl_per_token.png"
    assert paths["frontier_chart"].name == "kl_vs_weights_frontier.png"
    assert all(p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths.values())


def test_a_missing_or_non_finite_kl_is_listed_never_drawn_at_zero():
    plot = charts.kl_plot(_rows(), FLOOR)
    assert [p.variant for p in plot.points] == ["s/bf16", "s/nf4"]
    assert plot.log_y  # 0.0004 .. 0.6: more than two decades
    assert plot.not_shown == ["awq (no KL)", "gguf (no KL)", "bad (failed)", "fp32 (KL 0: no place on a log axis)"]
    fig = charts.kl_figure(_rows(), charts.variant_colours(["s/fp32", "s/bf16"]), FLOOR)
    drawn_y = [float(y) for c in fig.axes[0].collections for _, y in c.get_offsets()]
    assert sorted(drawn_y) == sorted([0.001, 0.02, 0.03, 0.6])
    assert "not shown: awq (no KL)" in " ".join(t.get_text() for t in fig.texts)


def test_a_narrow_span_keeps_a_linear_axis_and_the_baseline_at_its_true_zero():
    rows = [_row("s/fp32", 513.0, 0.0, 0.0), _row("s/bf16", 257.0, 0.01, 0.03), _row("s/nf4", 120.0, 0.03, 0.09)]
    plot = charts.kl_plot(rows, {"kl_mean": 0.005, "kl_p99_9": 0.02, "epsilon": 2.0 ** -9})
    assert not plot.log_y and plot.not_shown == []
    assert [(p.variant, p.mean, p.p99_9) for p in plot.points] == [("s/fp32", 0.0, 0.0), ("s/bf16", 0.01, 0.03),
                                                                   ("s/nf4", 0.03, 0.09)]


def test_the_noise_floor_is_a_labelled_dashed_line_at_its_mean():
    fig = charts.kl_figure(_rows(), {}, FLOOR)
    ax = fig.axes[0]
    (line,) = _dashed(ax)
    assert set(line.get_ydata()) == {FLOOR["kl_mean"]} and line.get_label() == FLOOR_LABEL
    assert FLOOR_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_yscale() == "log"
    assert not _dashed(charts.kl_figure(_rows(), {}, None).axes[0])


def test_an_unavailable_noise_floor_is_said_not_drawn():
    unavailable = {"unavailable": "no noise floor: the baseline runs on llama.cpp"}
    fig = charts.kl_figure(_rows(), {}, unavailable)
    assert not _dashed(fig.axes[0])
    assert "noise floor (no noise floor: the baseline runs on llama.cpp)" in fig.texts[0].get_text()


def test_bits_per_weight_on_x_only_when_every_row_has_it():
    rows = [dict(_row("s/q8", 140.0, 0.002, 0.01), weights_bits_per_weight=8.5),
            dict(_row("s/q4", 90.0, 0.03, 0.2), weights_bits_per_weight=4.9)]
    plot = charts.kl_plot(rows)
    assert plot.x_label == "bits per weight" and [p.x for p in plot.points] == [8.5, 4.9]
    assert charts.kl_plot([*rows, _row("s/nf4", 120.0, 0.03, 0.5)]).x_label == "weights footprint (MiB)"


def test_histogram_takes_the_positive_finite_positions_on_log_bins():
    values, edges, notes = charts.kl_histogram_values(_rows())
    assert set(values) == {"s/bf16", "s/nf4"}
    assert values["s/nf4"].size == 198  # the NaN and the 0 left out
    assert notes == ["fp32 (KL 0 at every position)", "nf4: 1 position at KL 0"]
    ratios = edges[1:] / edges[:-1]
    assert np.allclose(ratios, ratios[0])  # log-spaced
    everything = np.concatenate(list(values.values()))
    assert edges[0] <= everything.min() and edges[-1] >= everything.max()
    assert sum(int(np.histogram(v, edges)[0].sum()) for v in values.values()) == 398
    fig = charts.kl_histogram_figure(_rows(), {}, FLOOR)
    (line,) = _dashed(fig.axes[0])
    assert set(line.get_xdata()) == {FLOOR["kl_mean"]} and fig.axes[0].get_xscale() == "log"


def test_histogram_of_rows_without_positions_draws_nothing():
    values, edges, _ = charts.kl_histogram_values([_row("s/fp32", 513.0, 0.0, 0.0, [0.0, 0.0])])
    assert values == {} and edges is None


@pytest.mark.parametrize("largest", [0.03, 1.0, 7.3, 20.0, 99.0, 100.0, 2154.2])
def test_linear_axes_leave_room_and_a_tick_above_the_largest_value(largest):
    ticks = charts.linear_ticks(largest)
    assert ticks[0] == 0 and ticks[-1] >= largest * charts.HEADROOM
    assert ticks[-2] < largest * charts.HEADROOM  # the first tick past the room, not one further
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0])


def test_log_axes_end_on_a_decade_above_the_largest_value():
    assert charts.log_ticks(0.0004, 0.6) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert charts.log_ticks(0.001, 0.1) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])  # 0.1 would touch the top
    many = charts.log_ticks(1e-9, 5.0)
    assert many[-1] >= 5.0 * charts.HEADROOM and many[0] <= 1e-9 and len(many) <= 10


def test_every_chart_has_its_top_tick_above_its_largest_value():
    rows = _rows()
    quality = charts.scatter_figure(rows, "kl_divergence", "KL", "t", {}).axes[0]
    kl = charts.kl_figure(rows, {}, FLOOR).axes[0]
    histogram = charts.kl_histogram_figure(rows, {}, FLOOR).axes[0]
    tallest_bar = max(patch.get_path().vertices[:, 1].max() for patch in histogram.patches)
    for ax, largest in ((quality, 0.03), (kl, 0.6), (histogram, tallest_bar)):
        top = ax.get_ylim()[1]
        assert top >= largest * charts.HEADROOM and math.isclose(ax.get_yticks()[-1], top)


def test_finite_and_epsilon_text():
    assert [charts.finite(v) for v in (None, float("nan"), float("inf"), "0.1", True, np.float32(0.5), 2)] == \
        [None, None, None, None, None, 0.5, 2.0]
    assert charts.epsilon_text(2.0 ** -9) == "2⁻⁹" and charts.epsilon_text(0.001) == "0.001"


def test_variants_that_share_a_colour_never_share_a_marker_or_line_style():
    ids = [f"b/v{i}" for i in range(12)]
    colours, marks = charts.variant_colours(ids), charts.variant_marks(ids)
    looks = {(colours[v], *marks[v]) for v in ids}
    assert len(looks) == 12 and colours["b/v0"] == colours["b/v7"] and marks["b/v0"] != marks["b/v7"]
    assert all(style != "--" for _, style in marks.values())  # dashed is the noise floor's


def test_emulated_variants_are_hollow_points_and_the_title_says_so():
    rows = [_row("s/fp32", 513.0, 0.0), _row("s/int4", 111.0, 0.03), _row("s/hqq", 111.0, 0.02)]
    rows[0]["kernel"], rows[1]["kernel"] = {"kind": "native"}, {"kind": "native"}
    rows[2]["kernel"] = {"kind": "emulated"}
    plot = charts.kl_plot(rows)
    assert [p.emulated for p in plot.points] == [False, False, True]
    ax = charts.kl_figure(rows, {"s/fp32": "#0072B2", "s/int4": "#D55E00", "s/hqq": "#009E73"}).axes[0]
    faces = {c.get_label(): c.get_facecolor()[0] for c in ax.collections}
    assert tuple(faces["hqq (emulated)"][:3]) == (1.0, 1.0, 1.0)  # hollow: a white face, the colour on its edge
    assert tuple(faces["int4"][:3]) != (1.0, 1.0, 1.0)
    assert "hollow: emulated kernel" in ax.get_title()
    assert "hollow" not in charts.kl_figure(rows[:2], {}).axes[0].get_title()


def test_the_frontier_marks_what_nothing_smaller_beats_and_names_every_point(tmp_path):
    rows = [_row("s/fp32", 513.0, 0.0), _row("s/bf16", 257.0, 0.001), _row("s/q8", 136.0, 0.0035),
            _row("s/nf4", 162.0, 0.27), _row("s/q4", 99.0, 0.05), _row("s/hqq", 111.0, 0.2),
            _row("s/bad", None, None, error="out of memory")]
    rows[5]["kernel"] = {"kind": "emulated"}
    points, notes = charts.frontier_points(rows)
    assert {p.variant for p in points if p.on_frontier} == {"s/q4", "s/q8", "s/bf16"}  # nf4, hqq: q4 is smaller and closer
    assert [p.emulated for p in points if p.variant == "s/hqq"] == [True]
    assert notes == ["fp32 (KL 0: the baseline itself)", "bad (failed)"]
    path = charts.write_frontier(rows, {}, tmp_path / "frontier.png")
    assert path.stat().st_size > 10_000
    ax = charts.frontier_figure(rows, {}).axes[0]
    assert {t.get_text() for t in ax.texts} >= {"q4", "q8", "bf16", "nf4", "hqq (emulated)"}
    assert ax.get_xscale() == ax.get_yscale() == "log" and "hollow: emulated kernel" in ax.get_title()
    assert charts.write_frontier([_row("s/fp32", 513.0, 0.0)], {}, tmp_path / "none.png") is None
