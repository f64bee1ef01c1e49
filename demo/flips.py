"""python -m demo.flips: how many answers change between the baseline and each variant, over a prompt set.

Each prompt of the file (default assets/flip_prompts.json) goes through the app's own path
(Arena.compare_records: greedy, the models file's settings but for max new tokens) to the chosen variants and
their baselines together. Per prompt and variant: the answer, whether it departs from the baseline's answer
(any token differs) and whether its first token does, and whether it is right where the prompt says what a
right answer is. Per variant: those shares, the accuracy of both and the flips right -> wrong and wrong -> right,
each with a Wilson interval over prompts (demo.measuring.flips); per pair of variants of one base model,
which departs less from their baseline. Writes flips.json and flips.md to results/flips-<timestamp>/ or --out.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from demo.config import REPO_ROOT, load_config
from demo.errors import ArenaError, InvalidRequest
from demo.measuring import flips as stats
from demo.running.runner import Arena

PROMPTS_FILE = REPO_ROOT / "assets" / "flip_prompts.json"
MAX_NEW_TOKENS = 48
EXPECTED_KINDS = ("contains", "exact", "regex")

Progress = Callable[[float, str], None]


def normalise(text: str) -> str:
    """Runs of whitespace (newlines too) as one space, none at the ends."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Expected:
    """What counts as a right answer: accepted strings found in it (contains), the whole answer (exact), or a
    regular expression searched in it (regex); see the prompt file's "expected" line."""

    kind: str
    accepted: tuple[str, ...]
    pattern: re.Pattern

    @classmethod
    def parse(cls, raw: object, where: str) -> "Expected":
        if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in EXPECTED_KINDS:
            raise InvalidRequest(f"{where}: expected must have exactly one of {', '.join(EXPECTED_KINDS)}, "
                                 f"got {json.dumps(raw)[:80]}")
        kind, value = next(iter(raw.items()))
        accepted = (value,) if kind == "regex" else value
        if not isinstance(accepted, (list, tuple)) or not accepted or \
                not all(isinstance(a, str) and a.strip() for a in accepted):
            wanted = "a regular expression" if kind == "regex" else "a list of accepted strings"
            raise InvalidRequest(f"{where}: expected {kind} must be {wanted}, none of them empty")
        try:
            return cls(kind, tuple(accepted), _compile(kind, tuple(accepted)))
        except re.error as exc:
            raise InvalidRequest(f"{where}: expected regex {accepted[0]!r} does not compile: {exc}") from None

    def check(self, answer: str) -> bool:
        text = normalise(answer)
        if self.kind == "exact":
            text = text[:-1] if text.endswith(".") else text
            return self.pattern.fullmatch(text) is not None
        return self.pattern.search(text) is not None


def _compile(kind: str, accepted: tuple[str, ...]) -> re.Pattern:
    if kind == "regex":
        return re.compile(accepted[0])
    alternatives = "|".join(re.escape(normalise(a)) for a in accepted)
    if kind == "exact":
        return re.compile(f"(?:{alternatives})")
    # a whole word or number: "5" is not found in "15", "3.5" or "5,000", nor "Rome" in "Romeo"
    return re.compile(rf"(?<!\w)(?<!\d[.,])(?:{alternatives})(?!\w)(?![.,]\d)", re.IGNORECASE)


@dataclass(frozen=True)
class FlipPrompt:
    id: str
    category: str
    prompt: str
    expected: Expected | None


def load_prompts(path: Path, limit: int | None = None) -> list[FlipPrompt]:
    """The prompt file's prompts (the first `limit` of them), each checked; a bad one is named by its id."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidRequest(f"prompt file '{path}' not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"prompt file '{path}' is not readable JSON: {exc}") from None
    raw = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest(f"prompt file '{path}': needs a non-empty list under \"prompts\"")
    prompts = [_prompt(entry, i, path) for i, entry in enumerate(raw)]
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise InvalidRequest(f"prompt file '{path}': prompt id '{p.id}' is used twice")
        seen.add(p.id)
    if limit is not None and limit < 1:
        raise InvalidRequest(f"--limit must be at least 1, got {limit}")
    return prompts[:limit]


def _prompt(entry: object, index: int, path: Path) -> FlipPrompt:
    where = f"prompt file '{path}': prompt #{index + 1}"
    if not isinstance(entry, dict):
        raise InvalidRequest(f"{where} is not an object")
    if isinstance(entry.get("id"), str) and entry["id"].strip():
        where = f"prompt file '{path}': prompt '{entry['id']}'"
    missing = [k for k in ("id", "category", "prompt") if not isinstance(entry.get(k), str) or not entry[k].strip()]
    if missing:
        raise InvalidRequest(f"{where}: missing or empty {', '.join(missing)}")
    expected = Expected.parse(entry["expected"], where) if entry.get("expected") is not None else None
    return FlipPrompt(entry["id"], entry["category"], entry["prompt"], expected)


@dataclass
class FlipsRun:
    """What a run saw: the variants asked for, their baselines, and per prompt id each variant's answer row."""

    variants: list[str]
    baselines: dict[str, str]  # variant -> its baseline
    settings: dict  # the generation settings, as GenerationSettings.describe() records them
    prompts: list[FlipPrompt]
    answers: dict[str, dict[str, dict]]  # prompt id -> variant -> answer row (see _answer_row)


def run_flips(arena: Arena, variant_ids: list[str], prompts: list[FlipPrompt], max_new_tokens: int = MAX_NEW_TOKENS,
              progress: Progress | None = None, stop: threading.Event | None = None) -> FlipsRun:
    """Every prompt through the chosen variants and their baselines, one comparison per prompt; once `stop`
    is set the prompts not yet started are left out."""
    if not prompts:
        raise InvalidRequest("no prompts to run")
    variant_ids = list(dict.fromkeys(variant_ids))
    baselines = _baselines(arena, variant_ids)
    running = list(dict.fromkeys([*baselines.values(), *variant_ids]))  # each baseline first: the reference
    for prompt in prompts:  # every prompt checked before the first one runs
        arena.validate(prompt.prompt, running)
    settings = arena.settings(max_new_tokens=max_new_tokens)
    report = progress or (lambda fraction, message: None)
    run = FlipsRun(variant_ids, baselines, settings.describe(), [], {})
    for index, prompt in enumerate(tqdm(prompts, desc="Flips", unit="prompt")):
        if stop is not None and stop.is_set():
            break
        report(index / len(prompts), f"prompt {prompt.id}")
        records = {r["variant"]: r for r in arena.compare_records(prompt.prompt, running, settings)}
        run.answers[prompt.id] = {v: _answer_row(records[v], records[baselines[v]], prompt) for v in running}
        run.prompts.append(prompt)
    report(1.0, "done")
    return run


def _baselines(arena: Arena, variant_ids: list[str]) -> dict[str, str]:
    arena.validate("flips", variant_ids)  # unknown ids named before anything else is asked of them
    baselines = {}
    for v in variant_ids:
        baseline = arena.config.base_of(v).baseline
        if arena.config.base_of(v).random_weights:
            raise InvalidRequest(f"variant '{v}' has random weights (speed and memory only): whether its answers "
                                 "change says nothing about quantization, so flips are not computed for it")
        if baseline is None:
            raise InvalidRequest(f"variant '{v}' has no baseline to flip against (its base model names none)")
        baselines[v] = baseline
    for baseline in set(baselines.values()):
        baselines[baseline] = baseline
    return baselines


def _answer_row(record: dict, reference: dict, prompt: FlipPrompt) -> dict:
    """One variant's answer to one prompt; departs / first_token_differs are None where it was not compared."""
    is_reference = record is reference
    error = record["error"] or (None if is_reference or reference["error"] is None
                                else f"its baseline failed: {reference['error']}")
    compared = error is None and (is_reference or record["fidelity"] is not None)
    departs_at = None if is_reference else record["answer_departs_at_token"]
    if error is None and not compared:
        error = "not compared with the baseline's answer (scoring failed or the baseline's answer was empty)"
    return {"text": record["text"], "new_tokens": record["new_tokens"], "truncated": record["truncated"],
            "correct": None if error or prompt.expected is None else prompt.expected.check(record["text"]),
            "departs": departs_at is not None if compared else None,
            "first_token_differs": departs_at == 0 if compared else None,
            "departs_at_token": departs_at, "error": error}


def outcomes(run: FlipsRun, variant: str) -> dict[str, stats.Outcome]:
    """Prompt id -> the variant's outcome against its baseline, for the prompts both answered."""
    baseline = run.baselines[variant]
    found = {}
    for prompt in run.prompts:
        mine, base = run.answers[prompt.id][variant], run.answers[prompt.id][baseline]
        if mine["departs"] is None:
            continue
        found[prompt.id] = stats.Outcome(mine["departs"], mine["first_token_differs"], base["correct"],
                                         mine["correct"])
    return found


def statistics(run: FlipsRun) -> dict:
    """Per variant its flips (or why there are none) and, per pair of variants of one base model, the paired
    difference of their departure shares."""
    per_variant, found = {}, {v: outcomes(run, v) for v in run.variants}
    for v in run.variants:
        entry = {"baseline": run.baselines[v], "failed_prompts": len(run.prompts) - len(found[v])}
        if found[v]:
            entry.update(stats.variant_flips(list(found[v].values()), v, run.baselines[v]).as_dict())
        else:
            entry["error"] = next((run.answers[p.id][v]["error"] for p in run.prompts), "no prompt was run")
        per_variant[v] = entry
    comparisons = []
    for a, b in itertools.combinations(run.variants, 2):
        common = [p for p in found[a] if p in found[b]]
        if run.baselines[a] != run.baselines[b] or not common:
            continue
        difference = stats.paired_difference([found[a][p].departs for p in common],
                                             [found[b][p].departs for p in common], a, b)
        comparisons.append({"statistic": "departs", **difference.as_dict(), "baseline": run.baselines[a],
                            "closer_to_baseline": stats.closer_to_baseline(difference)})
    return {"variants": per_variant, "comparisons": comparisons}


def prompt_rows(run: FlipsRun) -> list[dict]:
    return [{"id": p.id, "category": p.category, "prompt": p.prompt,
             "expected": None if p.expected is None else {p.expected.kind: list(p.expected.accepted)},
             "answers": run.answers[p.id]} for p in run.prompts]


def conditions(prompts_file: Path, run: FlipsRun) -> dict:
    return {"prompt_file": str(prompts_file), "prompts": len(run.prompts), "settings": run.settings,
            "interval_method": stats.method(),
            "departs": "any token of the variant's greedy answer differs from the baseline's (a longer or shorter "
                       "answer too); first_token_differs: its first token differs",
            "flips": "right_to_wrong: the baseline's answer right and the variant's wrong; wrong_to_right: the "
                     "reverse; shares of the prompts with an expected answer that both answered",
            "comparisons": "departure share of a minus that of b over the prompts both answered, Newcombe's paired interval; "
                           "closer_to_baseline names the one that departs less where the interval excludes 0"}


def write_outputs(run: FlipsRun, figures: dict, arena: Arena, out: Path, conditions_: dict) -> dict[str, Path]:
    """flips.json and flips.md under `out`; returns their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "flips.json", "markdown": out / "flips.md"}
    document = {"conditions": conditions_, "environment": arena.environment(), **figures,
                "prompts": prompt_rows(run)}
    paths["json"].write_text(json.dumps(document, indent=2, ensure_ascii=False), encoding="utf-8")
    paths["markdown"].write_text(markdown(figures, arena.environment(), conditions_), encoding="utf-8")
    return paths


def markdown(figures: dict, env: dict, conditions_: dict) -> str:
    """A table per variant (each figure with its interval), the paired comparisons, then the conditions."""
    parts = []
    for variant, entry in figures["variants"].items():
        parts.append(f"## {variant} against {entry['baseline']}\n")
        if "error" in entry:
            parts.append(f"No prompt answered by both: {entry['error']}\n")
            continue
        rows = [("departs from the baseline's answer", entry["departs"]),
                ("first token differs", entry["first_token_differs"]),
                ("baseline accuracy", entry["baseline_accuracy"]), ("variant accuracy", entry["variant_accuracy"]),
                ("right → wrong", entry["right_to_wrong"]), ("wrong → right", entry["wrong_to_right"])]
        lines = ["| statistic | share | prompts | 95 % interval |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {_share_cells(value)} |" for name, value in rows]
        change = entry["accuracy_change"]
        if change is not None:
            lines.append(f"| accuracy change (variant − baseline) | {_points(change['difference'])} | "
                         f"{change['n']} | [{_points(change['low'])}, {_points(change['high'])}] |")
        failed = entry["failed_prompts"]
        failed = f" {failed} prompt(s) left out: an error on one side." if failed else ""
        parts.append("\n".join(lines) + f"\n\n{entry['prompts']} prompts, {entry['checked']} with an expected "
                     f"answer.{failed}\n")
    parts.append(_comparisons(figures["comparisons"]))
    parts.append(f"Conditions: {conditions_['prompts']} prompts of {Path(conditions_['prompt_file']).name}; "
                 f"{_settings_text(conditions_['settings'])}; {env.get('device_name')}, torch {env.get('torch')}, "
                 f"transformers {env.get('transformers')}. Intervals: {conditions_['interval_method']}.\n")
    return "\n".join(parts)


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {value}" if name != "decoding" else str(value)
                     for name, value in settings.items())


def _share_cells(value: dict | None) -> str:
    if value is None:
        return "– | – | –"
    return (f"{100 * value['share']:.1f} % | {value['count']}/{value['n']} | "
            f"[{100 * value['low']:.1f}, {100 * value['high']:.1f}] %")


def _points(fraction: float) -> str:
    return f"{100 * fraction:+.1f} pts"


def _comparisons(comparisons: list[dict]) -> str:
    if not comparisons:
        return "## Paired comparisons\n\nNone: they need two variants of one base model.\n"
    lines = ["## Paired comparisons (departure share, a − b)\n", "| a | b | prompts | a departs | b departs | "
             "a − b | 95 % interval | closer to the baseline |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for c in comparisons:
        verdict = c["closer_to_baseline"] or "neither (the interval includes 0)"
        lines.append(f"| {c['a']} | {c['b']} | {c['n']} | {100 * c['a_value']:.1f} % | {100 * c['b_value']:.1f} % | "
                     f"{_points(c['difference'])} | [{_points(c['low'])}, {_points(c['high'])}] | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.flips", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    parser.add_argument("--variants", required=True, help="comma-separated variant ids (their baselines run too)")
    parser.add_argument("--prompts", type=Path, default=PROMPTS_FILE, help="prompt file (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--limit", type=int, help="only the first N prompts, for a quick look")
    parser.add_argument("--out", type=Path, help="output folder (default: results/flips-<timestamp>)")
    args = parser.parse_args(argv)
    try:
        arena = Arena(load_config(args.models))
        prompts = load_prompts(args.prompts, args.limit)
        variant_ids = [v.strip() for v in args.variants.split(",") if v.strip()]
        run = run_flips(arena, variant_ids, prompts, args.max_new_tokens)
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    figures = statistics(run)
    out = args.out or REPO_ROOT / "results" / datetime.datetime.now().strftime("flips-%Y%m%d-%H%M%S")
    paths = write_outputs(run, figures, arena, out, conditions(args.prompts, run))
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
