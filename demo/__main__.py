"""python -m demo compare ...: the headless CLI over the same runner the page uses."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from demo import card, report
from demo.config import load_config
from demo.errors import ArenaError
from demo.runner import Arena


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    compare = sub.add_parser("compare", help="run one prompt on several variants, one after another")
    compare.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    compare.add_argument("--list", action="store_true", help="list the variant ids and exit")
    compare.add_argument("--prompt", help="the prompt (the chat template is applied when the model has one)")
    compare.add_argument("--variants", help="comma-separated variant ids, e.g. smollm2/fp32,smollm2/bnb-nf4")
    compare.add_argument("--max-new-tokens", type=int, default=None, help="default: models file's generation")
    compare.add_argument("--sample", action="store_true", help="sample instead of greedy (needs --seed)")
    compare.add_argument("--seed", type=int, default=None)
    compare.add_argument("--temperature", type=float, default=None)
    compare.add_argument("--top-p", type=float, default=None)
    compare.add_argument("--json", action="store_true", help="print one JSON record per variant")
    compare.add_argument("--out", type=Path, help="also write comparison.json, comparison.csv and comparison.md here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.models)
        if args.list:
            for variant in config.variants.values():
                print(f"{variant.id}\t{variant.method}\t{variant.label}")
            return 0
        arena = Arena(config)
        if args.prompt is None or args.variants is None:
            raise ArenaError("compare needs --prompt and --variants (or --list)")
        settings = arena.settings(args.max_new_tokens, args.sample, args.temperature, args.top_p, args.seed)
        variant_ids = [v.strip() for v in args.variants.split(",") if v.strip()]
        records = arena.compare_records(args.prompt, variant_ids, settings)
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(records, indent=2) if args.json else report.text_report(records))
    if args.out:
        try:
            paths = card.write(records, args.out)
        except OSError as exc:
            print(f"error: cannot write to '{args.out}' ({exc.strerror})", file=sys.stderr)
            return 1
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
