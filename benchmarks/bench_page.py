"""make bench, second part: the page's own Run event against the /compare API, in one process.

The app runs as its own process (python app.py, as deployed), so the client's parsing of what the
page streams is not counted against the server, as a browser's is not; both paths are called through
gradio_client on the same loaded variant, same prompt and settings, interleaved (page then API,
alternating which goes first). The
page's decode rate is read from the summary table its last update carries, so every update the page
streams while generating is paid for, as a browser would get it. Writes results/bench_page.json with
the page/API ratio (target: at least 0.95, i.e. the page costs under 5% of decode speed).

The ratio is make bench's paired statistic (demo.measuring.paired_ratio, as benchmarks/bench.py uses it): the
median of the per-pair page/API ratios with its 95% sign-test interval, and the verdict "met" only where the
whole interval is at or above the target, "not met" where it is wholly below, else "can't tell". Fewer than
paired_ratio.MIN_PAIRS pairs give no 95% interval at all, so they always say "can't tell". paired_verdict below
is shared with bench_storm.py and bench_zerogpu.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from benchmarks.bench import app_server, make_missing_files, write_json  # noqa: E402
from demo.config import load_config  # noqa: E402
from demo.measuring.paired_ratio import MIN_PAIRS, paired_ratio  # noqa: E402
from demo.ui import columns  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper."
TARGET_RATIO = 0.95
RUNS = 10  # pairs per variant: MIN_PAIRS is the fewest with a 95% interval, whose ends are then the extremes
STATISTIC = "median of the per-pair ratios, 95% sign-test interval (demo.measuring.paired_ratio)"


def paired_verdict(numerators: list[float], denominators: list[float], target: float = TARGET_RATIO) -> dict:
    """numerators[i] / denominators[i] over interleaved pairs as make bench reports it (benchmarks/bench.py): the
    median of the pair ratios (`ratio`), its sign-test interval (`ratio_low`, `ratio_high`, with its exact
    coverage `ratio_confidence`), `pairs`, and `target`: PairedRatio.verdict's "met" (the whole interval at or
    above target), "not met" (wholly below) or "can't tell". Fewer than MIN_PAIRS pairs have no 95% interval:
    the ends are None and the verdict "can't tell", whatever the ratio."""
    if len(numerators) != len(denominators):
        raise ValueError("numerators and denominators must pair up")
    if len(numerators) < MIN_PAIRS:
        ratio = statistics.median(a / b for a, b in zip(numerators, denominators)) if numerators else None
        return {"ratio": None if ratio is None else round(ratio, 4), "ratio_low": None, "ratio_high": None,
                "ratio_confidence": None, "pairs": len(numerators), "target": "can't tell",
                "why": f"{len(numerators)} pairs give no 95% interval: at least {MIN_PAIRS} are needed"}
    paired = paired_ratio(numerators, denominators)
    return {"ratio": round(paired.ratio, 4), "ratio_low": round(paired.low, 4), "ratio_high": round(paired.high, 4),
            "ratio_confidence": round(paired.confidence, 4), "pairs": paired.pairs, "target": paired.verdict(target)}


def interval_text(verdict: dict) -> str:
    """"0.985 [0.962, 1.004] over 10 pairs: can't tell", for the scripts' printed lines."""
    ratio = "–" if verdict["ratio"] is None else f"{verdict['ratio']:.3f}"
    if verdict["ratio_low"] is None:
        return f"{ratio} over {verdict['pairs']} pairs, too few for a 95% interval: {verdict['target']}"
    return (f"{ratio} [{verdict['ratio_low']:.3f}, {verdict['ratio_high']:.3f}] over {verdict['pairs']} pairs: "
            f"{verdict['target']}")


def page_decode_tokens_per_s(client, variant_id: str, max_new_tokens: int) -> float:
    """One run as the page makes it (its undocumented events, in the order the browser chains them: set
    the columns up, stream them, then the summary); the decode rate from the summary's table."""
    args = (PROMPT, [variant_id], max_new_tokens, False, 0.7, 0.9, 0)
    client.predict(*args, api_name="/run_start")
    client.predict(*args, api_name="/run")
    outputs = client.predict(api_name="/run_summary")
    table = next(o for o in outputs if isinstance(o, dict) and "decode (tok/s)" in o.get("headers", []))
    column = table["headers"].index("decode (tok/s)")
    return float(table["data"][0][column])


def _record(client, variant_id: str, max_new_tokens: int) -> dict:
    [record] = client.predict(prompt=PROMPT, variants=[variant_id], max_new_tokens=max_new_tokens,
                              api_name="/compare")
    if record["error"]:
        raise RuntimeError(f"{variant_id}: {record['error']}")
    return record


def api_decode_tokens_per_s(client, variant_id: str, max_new_tokens: int) -> float:
    return _record(client, variant_id, max_new_tokens)["decode_tokens_per_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    parser.add_argument("--variants", default="smollm2/bf16,smollm2/fp32", help="comma-separated ids")
    parser.add_argument("--runs", type=int, default=RUNS, help="interleaved page/API pairs per variant (at least "
                        f"{MIN_PAIRS} for a 95%% interval; fewer always say can't tell)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default=str(REPO / "results" / "bench_page.json"))
    args = parser.parse_args()

    from gradio_client import Client

    not_made = make_missing_files(load_config(args.models), args.models, args.variants.split(","))
    if not_made:
        raise SystemExit(f"not measured: {not_made}")
    rows, load_before = [], os.getloadavg()[0]
    with app_server(args.models) as (url, _):
        client = Client(url, verbose=False)
        environment = None
        for variant_id in args.variants.split(","):
            # warm-up, not counted: loads the variant (cold) and runs it once
            environment = _record(client, variant_id, args.max_new_tokens)["environment"]
            page, api = [], []
            for run in range(args.runs):
                pair = [(page, page_decode_tokens_per_s), (api, api_decode_tokens_per_s)]
                for rates, measure in pair if run % 2 == 0 else reversed(pair):
                    rates.append(measure(client, variant_id, args.max_new_tokens))
            row = {"variant": variant_id,
                   "page_decode_tokens_per_s": round(statistics.median(page), 2),
                   "api_decode_tokens_per_s": round(statistics.median(api), 2),
                   **paired_verdict(page, api),  # ratio: the median of the per-pair page/API ratios
                   "ratio_of_medians": round(statistics.median(page) / statistics.median(api), 3),
                   "page_runs_tokens_per_s": [round(x, 2) for x in page],
                   "api_runs_tokens_per_s": [round(x, 2) for x in api]}
            rows.append(row)
            print(f"{variant_id:<20} page {row['page_decode_tokens_per_s']:7.2f} tok/s  API "
                  f"{row['api_decode_tokens_per_s']:7.2f} tok/s  page/API {interval_text(row)} "
                  f"(target {TARGET_RATIO})", flush=True)
    settings = {"decoding": "greedy", "max_new_tokens": args.max_new_tokens}
    result = {
        "environment": environment,
        "conditions": {"prompt": PROMPT, "settings": settings, "server": "python app.py, its own process",
                       "runs": args.runs, "statistic": STATISTIC, "order": "interleaved, alternating which goes first",
                       "page": "the Run button's three events through gradio_client, decode rate from the summary table (1 decimal)",
                       "api": "/compare through gradio_client", "text_update_interval_s": columns.TEXT_INTERVAL_S,
                       "target_ratio": TARGET_RATIO,
                       # Other work on the machine moves both paths' rates; above the core count, the ratio is noise.
                       "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                       "cpu_count": os.cpu_count()},
        "variants": rows,
        # every variant's page/API interval at or above the target ("can't tell" counts as not shown)
        "meets_target": all(r["target"] == "met" for r in rows),
    }
    write_json(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
