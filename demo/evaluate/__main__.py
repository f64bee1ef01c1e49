"""python -m demo.evaluate: the command line (see the package's docstring)."""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import demo.evaluate as package
from demo.config import REPO_ROOT, load_config
from demo.errors import ArenaError, InvalidRequest
from demo.evaluate import depth, serving
from demo.evaluate.depth_outputs import depth_conditions, write_depth_outputs
from demo.evaluate.outputs import conditions, write_outputs
from demo.evaluate.serving_outputs import serving_conditions, write_serving_outputs
from demo.evaluate.plan import EVALUATION_FILE, PROMPTS_FILE, PROTOCOLS, Protocol
from demo.evaluate.run import evaluate
from demo.measuring import protocols
from demo.running.runner import Arena


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.evaluate", description=package.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    parser.add_argument("--variants", required=True, help="comma-separated variant ids")
    parser.add_argument("--text", type=Path, default=EVALUATION_FILE, help="held-out text (default: assets/evaluation.txt)")
    parser.add_argument("--out", type=Path, help="output folder (default: results/<timestamp>)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per variant after one warm-up")
    parser.add_argument("--max-new-tokens", type=int, help="new tokens a run generates (default 64; depth: 16)")
    parser.add_argument("--protocol", choices=(*PROTOCOLS, "depth", "serving"), default="sliding",
                        help="which tokens are fed and scored (default: sliding; see above); depth, serving: the "
                             "sweeps below")
    parser.add_argument("--ctx", type=int, default=protocols.LLAMACPP_CTX,
                        help=f"llamacpp: tokens per chunk (default {protocols.LLAMACPP_CTX}, as llama.cpp)")
    parser.add_argument("--prompts", type=Path, default=PROMPTS_FILE,
                        help="trace: prompt file, JSON {\"prompts\": [...]} or one a line (default: the blind test's)")
    parser.add_argument("--depths", default=",".join(map(str, depth.DEFAULT_DEPTHS)),
                        help="depth: context lengths in tokens, comma-separated (default: %(default)s)")
    parser.add_argument("--needles", type=int, default=3, help="depth: places the fact is planted at per depth")
    parser.add_argument("--long-text", type=Path, default=depth.LONG_TEXT,
                        help="depth: the long text (default: assets/long_context.txt)")
    parser.add_argument("--concurrency", default=",".join(map(str, serving.DEFAULT_CONCURRENCY)),
                        help="serving: requests in flight at once, comma-separated levels (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=serving.ROUNDS,
                        help="serving: timed runs of every level, interleaved (default %(default)s, the fewest that "
                             "give the ratio against the smallest level an interval)")
    parser.add_argument("--serving-prompts", type=Path, default=serving.PROMPTS_FILE,
                        help="serving: the requests' prompts, JSON {\"prompts\": [...]} (default: "
                             "assets/serving_prompts.json)")
    parser.add_argument("--engine", choices=serving.ENGINES, default="runtime",
                        help="serving: what serves transformers-format weights: runtime (one batched generate() in "
                             "the arena) or vllm (vLLM's own server, from make vllm); GGUF variants are always "
                             "served by llama-server, remote ones by their engine")
    args = parser.parse_args(argv)
    if args.protocol == "depth":
        return _depth(args)
    if args.protocol == "serving":
        return _serving(args)
    protocol = Protocol(args.protocol, args.ctx, args.prompts)
    try:
        arena = Arena(load_config(args.models))
        if not args.text.is_file():
            raise InvalidRequest(f"text file '{args.text}' not found")
        variant_ids = [v.strip() for v in args.variants.split(",") if v.strip()]
        results = evaluate(arena, variant_ids, args.text.read_text(encoding="utf-8"), args.runs, args.max_new_tokens or 64,
                           protocol=protocol)
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = args.out or REPO_ROOT / "results" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    paths = write_outputs(results, arena, out, conditions(args.text, args.runs, args.max_new_tokens or 64, protocol))
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _depth(args) -> int:
    """The depth sweep (demo.evaluate.depth): its own rows, one per variant and depth."""
    try:
        depths = tuple(int(d) for d in args.depths.split(",") if d.strip())
    except ValueError:
        print(f"error: --depths must be whole numbers separated by commas, got {args.depths!r}", file=sys.stderr)
        return 1
    plan = depth.DepthPlan(depths, args.needles, args.max_new_tokens or depth.NEW_TOKENS, args.long_text)
    try:
        plan.check()
        variant_ids = [v.strip() for v in args.variants.split(",") if v.strip()]
        config, notes = depth.config_for_depths(load_config(args.models), depths, variant_ids)
        arena = Arena(config)
        started = time.perf_counter()
        rows = depth.sweep(arena, variant_ids, plan)
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = args.out or REPO_ROOT / "results" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    conditions = depth_conditions(plan, notes, time.perf_counter() - started)
    paths = write_depth_outputs(rows, arena.environment(), out, conditions, list(arena.config.variants))
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _serving(args) -> int:
    """The serving sweep (demo.evaluate.serving): its own rows, one per variant and concurrency level."""
    try:
        levels = tuple(int(c) for c in args.concurrency.split(",") if c.strip())
    except ValueError:
        print(f"error: --concurrency must be whole numbers separated by commas, got {args.concurrency!r}",
              file=sys.stderr)
        return 1
    plan = serving.ServingPlan(levels, args.max_new_tokens or serving.NEW_TOKENS, args.rounds, args.serving_prompts,
                               engine=args.engine)
    try:
        plan.check()
        variant_ids = [v.strip() for v in args.variants.split(",") if v.strip()]
        arena = Arena(load_config(args.models))
        started = time.perf_counter()
        rows = serving.sweep(arena, variant_ids, plan)
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = args.out or REPO_ROOT / "results" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    paths = write_serving_outputs(rows, plan, arena.environment(), out,
                                  serving_conditions(plan, time.perf_counter() - started), list(arena.config.variants))
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
