"""`python -m demo votes`: the blind test's results from the votes database, as a table or JSON, or an export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from demo.blind import ratings
from demo.config import load_config
from demo.errors import ArenaError
from demo.blind.votes import VOTES_ENV, VoteStore, votes_path


def main(args) -> int:
    """Exit 0 with the results (none yet is a result), 1 with one line when the database cannot be read."""
    try:
        path = _path(args)
        if not path.is_file():
            if args.export:
                raise ArenaError(f"no votes database at {path}: nothing to export")
            return _print({"votes": 0, "variants": []}, path, (0, 0), args.json)
        store = VoteStore(path, read_only=True)
        try:
            if args.export:
                written = store.export(args.export)
                print(f"wrote {written} battles to {args.export}", file=sys.stderr)
                return 0
            return _print(ratings.summarize(store.outcomes()), path, store.counts(), args.json)
        finally:
            store.close()
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write {exc.filename} ({exc.strerror})", file=sys.stderr)
        return 1


def _path(args) -> Path:
    import os

    if args.db is not None or os.environ.get(VOTES_ENV):
        return args.db or votes_path()
    return votes_path(load_config(args.models))


def _print(summary: dict, path: Path, counts: tuple[int, int], as_json: bool) -> int:
    if as_json:
        print(json.dumps({**summary, "database": str(path), "battles": counts[0]}, indent=2))
    else:
        print(text_table(summary, path, counts))
    return 0


def text_table(summary: dict, path: Path, counts: tuple[int, int]) -> str:
    battles, votes = counts
    lines = [f"{path}: {votes} votes in {battles} battles"]
    if summary.get("flagged_votes"):
        lines[0] += (f"; {summary['flagged_votes']} look scripted ({summary['flag_rules']}) and are left out of "
                     "the figures below")
    if not summary["variants"]:
        return lines[0] + "\nno votes yet"
    head = f"{'variant':<28} {'votes':>5}  {'preferred':<14} {'tie':<14} {'baseline pref.':<14} " \
           f"{'indistinguishable':<17}  rating (Elo, baseline 0)"
    lines += [head, "-" * len(head)]
    for r in summary["variants"]:
        if r["role"] == "baseline":
            lines.append(f"{r['variant'] + ' (baseline)':<28} {r['votes']:>5}  {'':<14} {'':<14} {'':<14} "
                         f"{'':<17}  0 (anchor)")
            continue
        cells = [_pct(r, k) for k in ("preferred", "tied", "baseline_preferred")]
        low, high = r["rating_interval"]
        lines.append(f"{r['variant']:<28} {r['votes']:>5}  {cells[0]:<14} {cells[1]:<14} {cells[2]:<14} "
                     f"{_pct(r, 'indistinguishable'):<17}  {r['rating']:+.0f} ({low:+.0f} to {high:+.0f})")
    lines.append("rates with 95% Wilson intervals; tie counts 'both bad' too; indistinguishable = preferred + tie")
    return "\n".join(lines)


def _pct(row: dict, key: str) -> str:
    low, high = row["intervals"][key]
    return f"{100 * row['rates'][key]:.0f}% ({100 * low:.0f}-{100 * high:.0f})"
