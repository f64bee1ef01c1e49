"""python -m demo compare ...: the headless CLI over the same runner the page uses; `cache ...`: its derived files;
`votes`: the blind test's results."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from demo.artifacts import cache, sources
from demo.reports import card, report
from demo.config import CHECKPOINT_METHODS, ArenaConfig, load_config
from demo.errors import ArenaError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    # Each subcommand takes --models too; left out there, it must not overwrite the one given before it.
    after = {"default": argparse.SUPPRESS}
    sub = parser.add_subparsers(dest="command", required=True)
    compare = sub.add_parser("compare", help="run one prompt on several variants, one after another")
    compare.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)", **after)
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
    cached = sub.add_parser("cache", help="list, verify or free the derived files in the cache folder",
                            description=f"Derived files live in ${cache.CACHE_ENV}, else ~/.cache/quantization-arena.")
    cached.add_argument("action", choices=("list", "verify", "clear"),
                        help="list: what is cached (sizes checked); verify: hash every file; clear: remove")
    cached.add_argument("path", nargs="?", help="clear only this entry (a path from `cache list`)")
    cached.add_argument("--models", help="models file, to name the command that rebuilds each entry", **after)
    cached.add_argument("--json", action="store_true", help="print JSON instead of a table")
    voted = sub.add_parser("votes", help="the blind test's results, or every battle and vote with --export",
                           description="The votes database: --db, else $ARENA_VOTES_DB, else the models file's "
                                       "blind.votes_db, else votes.sqlite3 in the cache folder.")
    voted.add_argument("--db", type=Path, help="the votes database (SQLite)")
    voted.add_argument("--models", help="models file, for blind.votes_db (default: $ARENA_MODELS, else models.yaml)",
                       **after)
    voted.add_argument("--json", action="store_true", help='print {"votes": N, "variants": [...]} as JSON')
    voted.add_argument("--export", type=Path, metavar="FILE.jsonl",
                       help="write every battle with its vote (or null) as JSON Lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "cache":
        return cache_command(args)
    if args.command == "votes":
        from demo.blind import votes_cli  # numpy, no torch

        return votes_cli.main(args)
    try:
        config = load_config(args.models)
        if args.list:
            for variant in config.variants.values():
                print(f"{variant.id}\t{variant.method}\t{variant.label}")
            return 0
        from demo.running.runner import Arena  # imports torch: not needed for `cache`

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


def cache_command(args) -> int:
    """`cache list|verify|clear`: exit 1 when verify finds damage or a path is refused, with one line why."""
    try:
        if args.action == "clear":
            return _clear(args)
        if args.path:
            raise ArenaError(f"`cache {args.action}` takes no path")
        found = cache.entries(full=args.action == "verify")
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a cache folder we may not read or delete: say which, in one line
        print(f"error: cannot {args.action} the cache in {cache.cache_dir()} ({exc.strerror}: {exc.filename})",
              file=sys.stderr)
        return 1
    commands = _rebuild_commands(args.models)
    found = [dataclasses.replace(e, rebuild_command=e.rebuild_command or commands.get(e.path)) for e in found]
    if args.json:
        listed = [dataclasses.asdict(e) | {"size_mib": round(e.size_mib, 1)} for e in found]
        print(json.dumps({"cache_dir": str(cache.cache_dir()), "entries": listed}, indent=2))
    else:
        print(_table(found))
    bad = [e for e in found if e.state != "ok" and e.kind != "leftover"]
    return 1 if args.action == "verify" and bad else 0


def _clear(args) -> int:
    freed_mib = cache.clear(args.path)
    if args.json:
        print(json.dumps({"cache_dir": str(cache.cache_dir()), "removed": args.path or "everything",
                          "freed_mib": round(freed_mib, 1)}))
    else:
        print(f"removed {args.path or 'every cached entry'} from {cache.cache_dir()}: {freed_mib:.1f} MiB freed")
    return 0


def _table(found: list[cache.CacheEntry]) -> str:
    if not found:
        return f"nothing cached in {cache.cache_dir()}"
    lines = [f"{cache.cache_dir()}:", f"{'state':<11} {'MiB':>8}  {'kind':<21} path"]
    for e in found:
        lines.append(f"{e.state:<11} {e.size_mib:>8.1f}  {e.kind:<21} {e.path}")
        if e.problem and e.state != "ok":
            lines.append(f"{'':<22}{e.problem}")
        if e.state != "ok":
            lines.append(f"{'':<22}fix: {_fix(e)}")
    lines.append(f"{len(found)} entries, {sum(e.size_mib for e in found):.1f} MiB")
    return "\n".join(lines)


def _fix(entry: cache.CacheEntry) -> str:
    clear = f"python -m demo cache clear {entry.path}"
    if entry.kind == "leftover":
        return f"`{clear}` frees it"
    if entry.kind == "bundled":
        return f"made again automatically at the next load ({entry.rebuild_command or 'run any comparison'})"
    if entry.rebuild_command:
        button = ", or press Quantize now" if "demo.quantize" in entry.rebuild_command else ""
        return f"`{entry.rebuild_command}` makes it again{button}"
    return f"`{clear}` frees it; it is made again when needed"


def _rebuild_commands(models: str | None) -> dict[str, str]:
    """Cache path (relative) -> the command that makes it again, from the models file; {} if it is unreadable."""
    try:
        config: ArenaConfig = load_config(models)
    except ArenaError:
        return {}
    root = cache.cache_dir()
    option = f" --models {models}" if models else ""
    commands = {}
    for variant in config.variants.values():
        base = config.bases[variant.base]
        if variant.method in CHECKPOINT_METHODS and variant.checkpoint is None:
            folder = sources.quantized_dir(base, variant.method, variant.settings)
            commands[folder.relative_to(root).as_posix()] = sources.quantize_command(variant.id) + option
        if base.source.kind == "synthetic" and variant.runtime == "transformers":  # any of its variants makes it
            from demo.artifacts.synthetic import synthetic_dir

            commands.setdefault(synthetic_dir(base.source).relative_to(root).as_posix(),
                                f"python -m demo compare{option} --variants {variant.id} --prompt hi --max-new-tokens 1")
        if base.source.kind == "bundled-gguf" and variant.id == base.baseline:
            try:
                folder = sources.bundled_dir(base.source)
            except ArenaError:
                continue
            commands[folder.relative_to(root).as_posix()] = (
                f"python -m demo compare{option} --variants {variant.id} --prompt hi --max-new-tokens 1")
    return commands


if __name__ == "__main__":
    sys.exit(main())
