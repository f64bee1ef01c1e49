"""Flips: the statistics against counts made by hand and intervals worked out apart (the Wilson bounds as the
roots of the score test's quadratic, Newcombe's paired interval written out), the prompt file and its checks,
and python -m demo.flips end to end on the bundled model. tests/test_intervals.py checks the intervals against
textbook values and by simulated coverage."""

import json
import math
import re
import subprocess
import sys
from statistics import NormalDist

import pytest

from demo import flips
from demo.errors import InvalidRequest
from demo.measuring import flips as stats
from tests.conftest import REPO

# --- a 10-prompt table counted by hand ----------------------------------------------------------------------
#            prompt:   0  1  2  3  4  5  6  7  8  9
BASE_RIGHT = [1, 1, 1, 0, 0, 1, 0, 1, 1, 0]
MINE_RIGHT = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]  # right -> wrong at 1 and 7, wrong -> right at 3 and 9
DEPARTS_AT = [None, 0, 5, 2, None, None, 0, 0, 3, 1]  # first differing token; None: the same answer


def hand_table() -> list[stats.Outcome]:
    return [stats.Outcome.from_departure(d, bool(b), bool(m)) for d, b, m in zip(DEPARTS_AT, BASE_RIGHT, MINE_RIGHT)]


def test_a_hand_counted_table():
    result = stats.variant_flips(hand_table())
    assert result.prompts == 10 and result.checked == 10
    assert (result.departs.count, result.departs.share) == (7, 0.7)  # all but prompts 0, 4, 5
    assert (result.first_token_differs.count, result.first_token_differs.share) == (3, 0.3)  # prompts 1, 6, 7
    assert (result.baseline_accuracy.count, result.variant_accuracy.count) == (6, 6)  # flat accuracy ...
    assert (result.right_to_wrong.count, result.wrong_to_right.count) == (2, 2)  # ... with four flips
    assert result.right_to_wrong.share == 0.2 and result.wrong_to_right.n == 10
    assert result.accuracy_change.difference == 0.0 and result.accuracy_change.n == 10
    for s in (result.departs, result.first_token_differs, result.baseline_accuracy, result.right_to_wrong):
        assert 0 <= s.low <= s.share <= s.high <= 1


def test_outcome_from_the_first_differing_token():
    assert stats.Outcome.from_departure(None) == stats.Outcome(False, False)
    assert stats.Outcome.from_departure(0) == stats.Outcome(True, True)
    assert stats.Outcome.from_departure(4, True, False) == stats.Outcome(True, False, True, False)


def test_without_expected_answers_there_is_no_accuracy():
    result = stats.variant_flips([stats.Outcome.from_departure(d) for d in DEPARTS_AT])
    assert result.checked == 0 and result.departs.count == 7
    assert result.baseline_accuracy is None and result.right_to_wrong is None and result.accuracy_change is None
    with pytest.raises(ValueError):
        stats.variant_flips([])


def _wilson_roots(count: int, n: int) -> tuple[float, float]:
    """The p where the score test turns, (p_hat - p)^2 = z^2 p (1 - p) / n: the roots of
    (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0, by the quadratic formula."""
    z2 = NormalDist().inv_cdf(0.975) ** 2
    p_hat = count / n
    a, b, c = 1 + z2 / n, -(2 * p_hat + z2 / n), p_hat ** 2
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


def test_the_wilson_interval_matches_one_computed_by_hand():
    flags = [True, False, False, True, True, False, True, False, False, False, True, False]
    result = stats.share(flags)
    assert (result.count, result.n) == (5, 12) and result.share == pytest.approx(5 / 12)
    assert (result.low, result.high) == pytest.approx(_wilson_roots(5, 12), abs=1e-12)
    assert (result.low, result.high) == pytest.approx((0.1933, 0.6805), abs=1e-4)


def test_the_interval_is_deterministic_contains_the_estimate_and_narrows():
    flags = [i % 10 < 3 for i in range(10)]
    assert stats.share(flags) == stats.share(flags)
    widths = []
    for n in (10, 100, 1000):
        s = stats.share([i % 10 < 3 for i in range(n)])
        assert s.share == pytest.approx(0.3) and s.low < s.share < s.high
        widths.append(s.high - s.low)
    assert widths[0] > widths[1] > widths[2] > 0


@pytest.mark.parametrize("value", [True, False])
def test_an_all_same_input_has_a_positive_width_interval(value):
    # A bootstrap resamples 8 equal flags into 8 equal flags and reads 0-0 or 100-100 %; Wilson's interval at
    # 0 (or 8) of 8 runs to z^2 / (8 + z^2) = 0.324 from the edge.
    s = stats.share([value] * 8)
    edge = _wilson_roots(0, 8)[1]
    assert s.share == float(value) and s.high - s.low == pytest.approx(edge)
    assert (s.low, s.high) == pytest.approx((1 - edge, 1.0) if value else (0.0, edge))
    d = stats.paired_difference([value] * 8, [value] * 8)
    assert d.difference == 0.0 and not d.excludes_zero
    assert (d.low, d.high) == pytest.approx((-edge, edge))  # no correlation term: one margin is empty


def test_the_paired_difference_matches_one_computed_by_hand():
    a = [1, 1, 0, 0, 1, 1, 0, 1]
    b = [0, 1, 0, 0, 0, 1, 0, 0]
    # both 2 (prompts 1, 5), only a 3 (0, 4, 7), only b 0, neither 3: p1 = 5/8, p2 = 2/8. Newcombe's psi:
    # (2 * 3 - 3 * 0) = 6 exceeds n/2 = 4, so psi = (6 - 4) / sqrt(5 * 3 * 2 * 6) = 2 / sqrt(180).
    (l1, u1), (l2, u2) = _wilson_roots(5, 8), _wilson_roots(2, 8)
    p1, p2, psi = 5 / 8, 2 / 8, 2 / math.sqrt(180)
    low = p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * psi * (p1 - l1) * (u2 - p2))
    high = p1 - p2 + math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * psi * (p2 - l2) * (u1 - p1))
    d = stats.paired_difference(a, b, "x", "y")
    assert (d.a_value, d.b_value, d.difference, d.n) == (5 / 8, 2 / 8, 3 / 8, 8)
    assert (d.low, d.high) == pytest.approx((low, high), abs=1e-12)
    # Eight prompts cannot rule out that b departs more often: the interval reaches below 0 (a bootstrap
    # could not, as no prompt in this sample has b depart alone, and so was overconfident).
    assert d.low == pytest.approx(-0.0558, abs=1e-4) and not d.excludes_zero
    with pytest.raises(ValueError):
        stats.paired_difference([1, 0], [1])


def test_closer_to_the_baseline_only_where_the_interval_excludes_zero():
    many = stats.paired_difference([1] * 30 + [0] * 10, [0] * 40, "x", "y")
    assert many.excludes_zero and stats.closer_to_baseline(many) == "y"
    assert stats.closer_to_baseline(stats.paired_difference([0] * 40, [1] * 30 + [0] * 10, "x", "y")) == "x"
    one = stats.paired_difference([1, 0, 0, 0], [0, 0, 0, 0], "x", "y")  # one flip in four prompts: too few
    assert not one.excludes_zero and stats.closer_to_baseline(one) is None


# --- expected answers and the prompt file --------------------------------------------------------------------
def test_contains_finds_whole_words_and_numbers_only():
    five = flips.Expected.parse({"contains": ["5", "five"]}, "t")
    assert five.check("2 + 3 = 5.") and five.check("The answer is Five") and five.check("5,")
    assert not any(five.check(t) for t in ("15", "3.5", "5,000", "fivefold", "52"))
    city = flips.Expected.parse({"contains": ["Rome"]}, "t")
    assert city.check("It is ROME") and not city.check("Romeo and Juliet")
    assert flips.Expected.parse({"contains": ["blue whale"]}, "t").check("the blue\n  whale")


def test_exact_and_regex():
    year = flips.Expected.parse({"exact": ["1945"]}, "t")
    assert year.check(" 1945.\n") and not year.check("In 1945.") and not year.check("19456")
    symbol = flips.Expected.parse({"exact": ["Na"]}, "t")
    assert symbol.check("Na") and not symbol.check("NA")
    upper = flips.Expected.parse({"regex": r"^[^a-z]*\bROME\b[^a-z]*$"}, "t")
    assert upper.check("ROME.") and not upper.check("Rome.") and not upper.check("THE CAPITAL is ROME")


def _write(tmp_path, prompts) -> object:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"prompts": prompts}))
    return path


@pytest.mark.parametrize("entry, message", [
    ({"id": "q-7", "category": "facts", "expected": {"contains": ["x"]}}, "prompt 'q-7': missing or empty prompt"),
    ({"id": "q-7", "category": "facts", "prompt": "Hi?", "expected": {"regex": "(unclosed"}},
     "prompt 'q-7': expected regex '(unclosed' does not compile"),
    ({"id": "q-7", "category": "facts", "prompt": "Hi?", "expected": {"match": ["x"]}},
     "prompt 'q-7': expected must have exactly one of contains, exact, regex"),
    ({"id": "q-7", "category": "facts", "prompt": "Hi?", "expected": {"contains": []}},
     "prompt 'q-7': expected contains must be a list of accepted strings"),
    ({"category": "facts", "prompt": "Hi?"}, "prompt #1: missing or empty id"),
])
def test_a_bad_prompt_is_named(tmp_path, entry, message):
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        flips.load_prompts(_write(tmp_path, [entry]))


def test_bad_prompt_files(tmp_path):
    entry = {"id": "a", "category": "c", "prompt": "p"}
    with pytest.raises(InvalidRequest, match="prompt id 'a' is used twice"):
        flips.load_prompts(_write(tmp_path, [entry, entry]))
    with pytest.raises(InvalidRequest, match="not found"):
        flips.load_prompts(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InvalidRequest, match="not readable JSON"):
        flips.load_prompts(tmp_path / "broken.json")
    with pytest.raises(InvalidRequest, match="--limit must be at least 1"):
        flips.load_prompts(_write(tmp_path, [entry]), limit=0)
    assert flips.load_prompts(_write(tmp_path, [entry, {**entry, "id": "b"}]), limit=1)[0].expected is None


def test_the_bundled_prompt_file():
    prompts = flips.load_prompts(flips.PROMPTS_FILE)
    about = json.loads(flips.PROMPTS_FILE.read_text())["about"]
    assert "Quantization Arena" in about and "licence" in about
    assert len(prompts) >= 100 and all(p.expected is not None for p in prompts)
    assert {p.category for p in prompts} == {"arithmetic", "facts", "formats", "instructions"}
    assert all(len(p.prompt) < 120 for p in prompts)


def test_the_bundled_arithmetic_is_right():
    """Every "What is A op B?" recomputed here, and a right answer checked as right, a near miss as wrong."""
    operations = {"+": int.__add__, "-": int.__sub__, "times": int.__mul__, "divided by": int.__floordiv__}
    asked = [p for p in flips.load_prompts(flips.PROMPTS_FILE) if p.category == "arithmetic"]
    computed = 0
    for p in asked:
        found = re.fullmatch(r"What is (\d+) (\+|-|times|divided by) (\d+)\?", p.prompt)
        if found:
            a, op, b = int(found[1]), found[2], int(found[3])
            assert op != "divided by" or a % b == 0, p.id
            answer = operations[op](a, b)
            assert p.expected.check(f"{a} {op} {b} = {answer}."), p.id
            assert not p.expected.check(f"{a} {op} {b} = {answer + 1}."), p.id
            computed += 1
    assert computed >= 25


# --- a run's statistics from hand-made records (no model) -----------------------------------------------------
def _record(variant, text, departs_at=None, error=None, fidelity=True):
    return {"variant": variant, "text": text, "new_tokens": 3, "truncated": False, "error": error,
            "fidelity": {} if fidelity and not error else None, "answer_departs_at_token": departs_at}


def test_statistics_of_a_run_from_its_records():
    prompt = [flips.FlipPrompt(f"p{i}", "arithmetic", "q", flips.Expected.parse({"contains": ["5"]}, "t"))
              for i in range(4)]
    base, a, b = "m/fp32", "m/a", "m/b"
    records = [  # per prompt: baseline, a, b
        (_record(base, "5"), _record(a, "5"), _record(b, "6", departs_at=0)),
        (_record(base, "4"), _record(a, "it is 5", departs_at=0), _record(b, "4")),
        (_record(base, "5"), _record(a, "5 and", departs_at=1), _record(b, "", error="generation failed")),
        (_record(base, "", error="kernel"), _record(a, "5"), _record(b, "5")),
    ]
    run = flips.FlipsRun([base, a, b], {base: base, a: base, b: base}, {}, prompt, {})
    for p, (rb, ra, rc) in zip(prompt, records):
        run.answers[p.id] = {r["variant"]: flips._answer_row(r, rb, p) for r in (rb, ra, rc)}
    assert run.answers["p3"][a]["error"] == "its baseline failed: kernel"
    figures = flips.statistics(run)["variants"]
    assert figures[base]["departs"]["count"] == 0 and figures[base]["prompts"] == 3
    assert (figures[a]["prompts"], figures[a]["failed_prompts"]) == (3, 1)
    assert (figures[a]["departs"]["count"], figures[a]["first_token_differs"]["count"]) == (2, 1)
    assert (figures[a]["wrong_to_right"]["count"], figures[a]["right_to_wrong"]["count"]) == (1, 0)
    assert (figures[b]["prompts"], figures[b]["departs"]["count"], figures[b]["right_to_wrong"]["count"]) == (2, 1, 1)
    comparisons = flips.statistics(run)["comparisons"]
    a_b = next(c for c in comparisons if (c["a"], c["b"]) == (a, b))
    assert (a_b["n"], a_b["a_value"], a_b["b_value"], a_b["difference"]) == (2, 0.5, 0.5, 0.0)  # p0, p1: one each
    assert a_b["closer_to_baseline"] is None
    figures = flips.statistics(run)
    table = flips.markdown(figures, {}, flips.conditions(flips.PROMPTS_FILE, run))
    assert f"## {b} against {base}" in table and "right → wrong" in table and "Paired comparisons" in table


# --- end to end on the bundled model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    out = tmp_path_factory.mktemp("flips") / "run"
    run = subprocess.run([sys.executable, "-m", "demo.flips", "--variants", "smollm2/fp32,smollm2/bf16",
                          "--limit", "3", "--out", str(out), "--max-new-tokens", "16"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return out


def test_end_to_end_files_and_the_baseline_against_itself(flipped):
    data = json.loads((flipped / "flips.json").read_text())
    assert data["environment"]["torch"] and "Wilson" in data["conditions"]["interval_method"]
    assert data["conditions"]["settings"] == {"decoding": "greedy", "max_new_tokens": 16}
    assert data["conditions"]["prompts"] == 3 and "Wilson" in data["conditions"]["interval_method"]
    assert [p["id"] for p in data["prompts"]] == [p.id for p in flips.load_prompts(flips.PROMPTS_FILE, 3)]
    baseline = data["variants"]["smollm2/fp32"]
    assert baseline["departs"]["count"] == baseline["first_token_differs"]["count"] == 0
    assert baseline["right_to_wrong"]["count"] == baseline["wrong_to_right"]["count"] == 0
    assert baseline["baseline_accuracy"] == baseline["variant_accuracy"]
    table = (flipped / "flips.md").read_text()
    assert "## smollm2/bf16 against smollm2/fp32" in table and "Paired comparisons" in table


def test_end_to_end_statistics_agree_with_the_answers(flipped):
    data = json.loads((flipped / "flips.json").read_text())
    expected = {p.id: p.expected for p in flips.load_prompts(flips.PROMPTS_FILE, 3)}
    for variant, figures in data["variants"].items():
        rows = [(p["answers"][variant], p["answers"]["smollm2/fp32"], expected[p["id"]]) for p in data["prompts"]]
        assert all(mine["error"] is None and mine["new_tokens"] > 0 for mine, _, _ in rows), rows
        assert all(mine["correct"] == check.check(mine["text"]) for mine, _, check in rows)
        assert all(mine["departs"] == (mine["departs_at_token"] is not None) for mine, _, _ in rows)
        for mine, base, _ in rows:  # a different text always departs; the same tokens always give the same text
            assert mine["departs"] or mine["text"] == base["text"]
        assert figures["departs"]["count"] == sum(mine["departs"] for mine, _, _ in rows)
        assert figures["first_token_differs"]["count"] == sum(mine["first_token_differs"] for mine, _, _ in rows)
        assert figures["first_token_differs"]["count"] <= figures["departs"]["count"]
        assert figures["right_to_wrong"]["count"] == sum(b["correct"] and not m["correct"] for m, b, _ in rows)
        assert figures["wrong_to_right"]["count"] == sum(m["correct"] and not b["correct"] for m, b, _ in rows)
        change = figures["variant_accuracy"]["share"] - figures["baseline_accuracy"]["share"]
        assert change == pytest.approx((figures["wrong_to_right"]["count"] - figures["right_to_wrong"]["count"]) / 3)
        for name in ("departs", "first_token_differs", "baseline_accuracy", "variant_accuracy"):
            assert figures[name]["low"] <= figures[name]["share"] <= figures[name]["high"]
    [pair] = data["comparisons"]
    assert pair["difference"] == pytest.approx(pair["a_value"] - pair["b_value"]) and pair["a_value"] == 0


def test_a_bad_prompt_file_is_one_line_and_exit_1(tmp_path, capsys):
    path = _write(tmp_path, [{"id": "q-9", "category": "facts", "prompt": "Hi?", "expected": {"regex": "[a-"}}])
    assert flips.main(["--variants", "smollm2/bf16", "--prompts", str(path), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "prompt 'q-9'" in err and len(err.splitlines()) == 1
    assert flips.main(["--variants", "smollm2/fp64", "--out", str(tmp_path / "o")]) == 1
    assert "unknown variant id(s): smollm2/fp64" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# A right and a near-miss answer, written by hand, for every prompt whose check is about the form of the answer.
FORM_SAMPLES = {
    "format-01": ("1945", "It ended in 1945."), "format-02": ("1969.", "July 20, 1969"),
    "format-03": ("1989", "1991"), "format-04": ("2021-07-04", "2021-04-07"),
    "format-05": ("2020-12-25", "25-12-2020"), "format-06": ("It is 2000-01-01.", "01/01/2000"),
    "format-07": ("12", "twelve"), "format-08": ("42", "forty-two"), "format-09": ("3.5", "3,5"),
    "format-10": ("56", "The answer is 56."), "format-11": ("9", "5 + 4 = 9"), "format-12": ("HELLO", "Hello"),
    "format-13": ("world", "WORLD"), "format-14": ("15:30", "3:30 PM"), "format-15": ("1/2", "50/100"),
    "format-16": ("2,000", "2000 metres"), "format-17": ('["apple", "banana", "cherry"]', "[apple, banana, cherry]"),
    "format-18": ("1,000,000", "1000000"), "format-19": ("Na", "The symbol is Na."), "format-20": ("X", "XL"),
    "format-21": ("V", "IV"), "format-22": ("kg", "kilo"), "format-23": ("Yes.", "No, it is not."),
    "format-24": ("No.", "Yes, of course."), "format-25": ("True", "False"), "format-26": ("False.", "True."),
    "instr-01": ("Fish, milk, naps.", "Cats like fish and naps."), "instr-02": ("White.", "Snow is white."),
    "instr-03": ("ROME", "Rome"), "instr-04": ("madrid", "Madrid"), "instr-05": ("Banana.", "Banana is a fruit."),
    "instr-06": ("elephant", "The word is elephant."), "instr-07": ("The cat sat on the mat.", "The cat sat."),
    "instr-08": ("Yes, water is wet.", "Water is wet, yes."), "instr-09": ("Sure! An apple.", "An apple, sure."),
    "instr-10": ("Blue. Done.", "Done: blue."), "instr-11": ("2", "Two"),
    "instr-12": ("Red, green, blue.", "Red and green."), "instr-13": ("Red", "Red is a primary colour."),
    "instr-14": ("Cat", "A horse"), "instr-15": ("The capital of Germany is Berlin.", "It is Berlin. Nice city."),
    "instr-16": ("1, 2, 3, 4, 5", "1 2 3 4 5"), "instr-17": ("5 4 3 2 1", "5, 4, 3, 2, 1"),
    "instr-18": ("A B C D E", "a b c d e"), "instr-19": ("[hello]", "(hello)"), "instr-20": ('"quiet"', "'quiet'"),
    "instr-21": ("7", "The number is 7."), "instr-22": ("Earth", "We live on Earth."),
    "instr-23": ("Hello", "Hello, good day."), "instr-24": ("tac", "cat"),
}


def test_the_bundled_form_checks_accept_a_right_answer_and_refuse_a_near_miss():
    prompts = {p.id: p for p in flips.load_prompts(flips.PROMPTS_FILE)}
    assert set(FORM_SAMPLES) == {i for i, p in prompts.items() if p.category in ("formats", "instructions")}
    for prompt_id, (right, near_miss) in FORM_SAMPLES.items():
        assert prompts[prompt_id].expected.check(right), (prompt_id, right)
        assert not prompts[prompt_id].expected.check(near_miss), (prompt_id, near_miss)
