"""make bench, third part: a comparison's decode rate while ten clients refresh the blind test's Results view,
over its rate with nobody refreshing (target: at least 0.95).

The app runs as its own process (python app.py) over a votes database filled beforehand (VOTES votes spread
over the default base's variants, so every refresh has real statistics to show); ten clients fetch the Results
view as the Refresh button does in a browser (GET /gradio_api/arena/blind/results, revalidated with the ETag of the copy
they hold), while one gradio_client client times /compare. Quiet and storm runs are interleaved in pairs; the
ratio is make bench's paired statistic (benchmarks/bench_page.paired_verdict over demo.measuring.paired_ratio):
the median of the per-pair storm/quiet ratios with its 95% sign-test interval, "met" only where the whole
interval is at or above the target, "not met" where it is wholly below, else "can't tell". Writes
results/bench_storm.json.

torch decodes on one thread per core by default, and its threads meet at a barrier at every operation, so
any other work on the machine (the server answering refreshes, the refreshing clients themselves) stalls the
decode far out of proportion to the CPU it takes (docs/results.md). Run it with OMP_NUM_THREADS set to compare
thread counts; the record's environment names the count used.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from benchmarks.bench import app_server, make_missing_files, write_json  # noqa: E402
from benchmarks.bench_page import PROMPT, RUNS, STATISTIC, _record, interval_text, paired_verdict  # noqa: E402
from demo.measuring.paired_ratio import MIN_PAIRS  # noqa: E402

TARGET_RATIO = 0.95
CLIENTS = 10
VOTES = 300
INTERVAL_S = 1.0  # each client presses Refresh once a second: ten people doing nothing else
RESULTS_PATH = "gradio_api/arena/blind/results"  # what the Refresh button fetches (demo.ui.routes)


def fill_votes(path: Path, models: str | None) -> None:
    """VOTES voted battles between the first base's baseline and its other variants, choices drawn at random."""
    from demo.blind.votes import CHOICES, Battle, VoteStore, now_iso, session_digest
    from demo.config import load_config

    config = load_config(models) if models else load_config()
    base_id, base = next((b, m) for b, m in config.bases.items() if m.baseline)
    others = [v for v, m in config.variants.items() if m.base == base_id and v != base.baseline]
    store, rng = VoteStore(path), random.Random(0)
    for k in range(VOTES):
        a, b = (base.baseline, others[k % len(others)])[::rng.choice((1, -1))]
        store.add_battle(Battle(f"bench-{k}", now_iso(), session_digest("bench"), base_id, base.baseline, a, b,
                                PROMPT, {"decoding": "greedy"}, "answer a", "answer b", {"variant": a, "label": a},
                                {"variant": b, "label": b}, {"device_name": "bench"}))
        store.vote(f"bench-{k}", rng.choice(list(CHOICES)), "bench")
    store.close()


class Refresher:
    """One visitor's Results tab: fetches the view as the browser does, sending back the ETag of the copy it
    holds (the browser's cache does so for the page's fetch), and reading the chart only when its URL changes
    (an immutable URL, which the browser keeps)."""

    def __init__(self, url: str):
        self.url, self.etag, self.chart, self.answers = url, None, None, {}

    def refresh(self) -> None:
        import re
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.url + RESULTS_PATH, headers={"If-None-Match": self.etag} if self.etag else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                self.etag, html = answer.headers["ETag"], answer.read().decode()
                status = answer.status
        except urllib.error.HTTPError as exc:
            if exc.code != 304:
                raise
            status, html = 304, None
        self.answers[status] = self.answers.get(status, 0) + 1
        chart = re.search(r'<img src="([^"]+)"', html) if html else None
        if chart and chart.group(1) != self.chart:
            self.chart = chart.group(1)
            urllib.request.urlopen(self.url + self.chart, timeout=60).read()


def storm_clients(url: str) -> list[Refresher]:
    """The refreshing clients, each having read the view once before anything is timed (a page load's cost)."""
    clients = [Refresher(url) for _ in range(CLIENTS)]
    for client in clients:
        client.refresh()
    return clients


def storm(client: Refresher, stop: threading.Event, refreshes: list[int], interval_s: float) -> None:
    """One client pressing Refresh every interval_s seconds (0: again as soon as the last answer arrives)."""
    while not stop.is_set():
        started = time.perf_counter()
        client.refresh()
        refreshes.append(1)
        stop.wait(max(0.0, interval_s - (time.perf_counter() - started)))


def decode_under_storm(refreshers: list, client, variant_id: str, max_new_tokens: int,
                       interval_s: float) -> tuple[float, int]:
    stop, refreshes = threading.Event(), []
    clients = [threading.Thread(target=storm, args=(refresher, stop, refreshes, interval_s), daemon=True)
               for refresher in refreshers]
    for t in clients:
        t.start()
    try:
        rate = _record(client, variant_id, max_new_tokens)["decode_tokens_per_s"]
    finally:
        stop.set()
        for t in clients:
            t.join(60)
    return rate, len(refreshes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    parser.add_argument("--variant", default="smollm2/bf16")
    parser.add_argument("--runs", type=int, default=RUNS, help="interleaved quiet/storm pairs (at least "
                        f"{MIN_PAIRS} for a 95%% interval; fewer always say can't tell)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="long enough for each client to refresh"
                        " several times within one timed decode")
    parser.add_argument("--interval-s", type=float, default=INTERVAL_S,
                        help="each client refreshes once per this many seconds; 0: as fast as answers come back")
    parser.add_argument("--out", default=str(REPO / "results" / "bench_storm.json"))
    args = parser.parse_args()

    from gradio_client import Client

    from demo.config import load_config

    not_made = make_missing_files(load_config(args.models), args.models, [args.variant])
    if not_made:
        raise SystemExit(f"not measured: {not_made}")
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as folder:
        os.environ["ARENA_VOTES_DB"] = str(Path(folder) / "votes.sqlite3")  # the app under test reads this one
        fill_votes(Path(os.environ["ARENA_VOTES_DB"]), args.models)
        load_before = os.getloadavg()[0]
        with app_server(args.models) as (url, _):
            client = Client(url, verbose=False)
            environment = _record(client, args.variant, args.max_new_tokens)["environment"]  # warm-up: loads it
            refreshers = storm_clients(url)
            quiet, stormy, refreshes = [], [], []
            for run in range(args.runs):
                for kind in (("quiet", "storm") if run % 2 == 0 else ("storm", "quiet")):
                    if kind == "quiet":
                        quiet.append(_record(client, args.variant, args.max_new_tokens)["decode_tokens_per_s"])
                    else:
                        rate, count = decode_under_storm(refreshers, client, args.variant, args.max_new_tokens,
                                                         args.interval_s)
                        stormy.append(rate)
                        refreshes.append(count)
    verdict = paired_verdict(stormy, quiet, TARGET_RATIO)  # ratio: the median of the per-pair storm/quiet ratios
    print(f"{args.variant}: quiet {statistics.median(quiet):.2f} tok/s, under {CLIENTS} refreshing clients "
          f"{statistics.median(stormy):.2f} tok/s, storm/quiet {interval_text(verdict)} (target {TARGET_RATIO})",
          flush=True)
    write_json({
        "environment": environment,
        "conditions": {"prompt": PROMPT, "variant": args.variant, "max_new_tokens": args.max_new_tokens,
                       "decoding": "greedy", "server": "python app.py, its own process", "runs": args.runs,
                       "statistic": STATISTIC, "order": "interleaved, alternating which goes first",
                       "storm": f"{CLIENTS} clients fetching /{RESULTS_PATH} as the page's Refresh does "
                                f"(revalidated with the ETag held), each once per {args.interval_s} s "
                                "(0: as fast as the answers come back)",
                       "clients_run_on": "the same machine as the app (their own CPU use counts against it)",
                       "votes_in_database": VOTES, "target_ratio": TARGET_RATIO,
                       "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                       "cpu_count": os.cpu_count()},
        "quiet_decode_tokens_per_s": [round(x, 2) for x in quiet],
        "storm_decode_tokens_per_s": [round(x, 2) for x in stormy],
        "refreshes_during_each_storm_run": refreshes,
        "answers_by_status": {str(k): sum(r.answers.get(k, 0) for r in refreshers)
                              for k in sorted({k for r in refreshers for k in r.answers})},
        **verdict,  # ratio, ratio_low, ratio_high, ratio_confidence, pairs, target: met | not met | can't tell
        "ratio_of_medians": round(statistics.median(stormy) / statistics.median(quiet), 3),
        "meets_target": verdict["target"] == "met",
    }, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
