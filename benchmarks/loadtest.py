"""make loadtest: many users at once against the real app on 127.0.0.1; writes results/loadtest.json.

Starts app.py behind "a proxy" at 127.0.0.1 (ARENA_TRUSTED_PROXIES), warms the variants up, then USERS
gradio_client users, each from an address of its own (X-Forwarded-For, as the proxy would append it), send
REQUESTS short comparisons one after another, all users at once. Beside them a greedy client (one gradio_client Client from one
address) keeps as many comparisons in flight as its share allows (limits.max_pending_per_client) plus one,
resubmitting at once whenever one ends or is refused, until the users are done. Each request has its own
prompt, so an answer carrying another request's prompt counts as mixed. Outcomes: completed (records for this
request, every variant done), busy (the arena's "busy, try again"), failed (any other error), lost (no answer
before the deadline). Queue wait = the client's latency minus the time the variants actually spent loading and
generating (their load_ms + total_ms). The server's RSS is sampled every 50 ms. Bounded: REQUESTS per user, a
per-request deadline, and an overall deadline.

results/loadtest.json: the users' counts and waits as before; `greedy`: the greedy client's submitted, completed,
busy (refused at its share), failed, lost and mixed counts, its share of all completions (`share_of_completions`,
beside `even_share` = 1 / (users + 1), what one client would get if every client asked as often) and its queue
wait p50 / p95. The target: nothing lost, mixed or failed for anyone, the server's RSS within the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from demo.config import load_config  # noqa: E402
from demo.measuring.system import environment  # noqa: E402

VARIANTS = ["smollm2/bf16", "smollm2/bnb-nf4"]
GREEDY_ADDRESS = "203.0.113.1"
OVERHEAD_MIB = 2048  # Python, torch, transformers, gradio and allocator slack on top of the weights budget


def start_app(port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "ARENA_TRUSTED_PROXIES": "127.0.0.1"}
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited; see {log_path}")
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("app.py was not ready within 120 s")


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process, self.peak_mib, self.stop = psutil.Process(pid), 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.peak_mib = max(self.peak_mib, self.process.memory_info().rss / 2**20)
            except psutil.Error:
                return


def ask(client, prompt: str, max_new_tokens: int, timeout_s: float) -> dict:
    """One comparison through /compare, and what came of it."""
    start = time.perf_counter()
    job = client.submit(prompt=prompt, variants=VARIANTS, max_new_tokens=max_new_tokens, api_name="/compare")
    try:
        records = job.result(timeout=timeout_s)
    except TimeoutError:
        job.cancel()
        return {"outcome": "lost"}
    except Exception as exc:  # the server's gr.Error arrives as an AppError
        return {"outcome": "busy" if "busy" in str(exc) else "failed", "error": str(exc)[:200]}
    latency_ms = (time.perf_counter() - start) * 1e3
    if not records or any(r.get("prompt") != prompt for r in records):
        return {"outcome": "mixed"}
    if all(r["status"] == "done" for r in records):
        ran_ms = sum((r["load_ms"] or 0) + (r["total_ms"] or 0) for r in records)
        return {"outcome": "completed", "queue_wait_ms": max(0.0, latency_ms - ran_ms)}
    return {"outcome": "failed", "error": "; ".join(str(r["error"]) for r in records)[:200]}


def one_user(url: str, user: int, requests: int, max_new_tokens: int, timeout_s: float, outcomes: list) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False, headers={"X-Forwarded-For": address(user)})
    for i in range(requests):
        outcomes.append(ask(client, f"Request {user}-{i}: name one fruit and one colour.", max_new_tokens, timeout_s))


def greedy_client(url: str, slots: int, max_new_tokens: int, timeout_s: float, done: threading.Event,
                  outcomes: list) -> list[threading.Thread]:
    """One client (one session) with `slots` comparisons in flight, each resubmitted as soon as it ends or is
    refused, until `done`; returns its threads."""
    from gradio_client import Client

    client, numbers = Client(url, verbose=False, headers={"X-Forwarded-For": GREEDY_ADDRESS}), iter(range(10**9))

    def keep_asking(slot: int) -> None:
        while not done.is_set():
            outcome = ask(client, f"Greedy {slot}-{next(numbers)}: name one tree.", max_new_tokens, timeout_s)
            outcomes.append(outcome)
            if outcome["outcome"] == "busy":
                done.wait(0.1)  # as fast as allowed: again at once, without spinning on the refusal

    threads = [threading.Thread(target=keep_asking, args=(slot,), daemon=True) for slot in range(slots)]
    for thread in threads:
        thread.start()
    return threads


def address(user: int) -> str:
    """The address the proxy names for a user: one of its own (users are people, not sessions)."""
    return f"198.18.{user // 250}.{user % 250 + 1}"


def percentile(values: list[float], fraction: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 1) if ordered else None


def greedy_summary(outcomes: list[dict], users_completed: int, users: int) -> dict:
    count = {k: sum(o["outcome"] == k for o in outcomes) for k in ("completed", "busy", "failed", "mixed", "lost")}
    waits = [o["queue_wait_ms"] for o in outcomes if "queue_wait_ms" in o]
    total = count["completed"] + users_completed
    return {"submitted": len(outcomes), **count,
            "share_of_completions": round(count["completed"] / total, 3) if total else None,
            "even_share": round(1 / (users + 1), 3),
            "queue_wait_ms_p50": round(statistics.median(waits), 1) if waits else None,
            "queue_wait_ms_p95": percentile(waits, 0.95)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3, help="comparisons per user")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--request-timeout-s", type=float, default=300)
    parser.add_argument("--greedy-slots", type=int, default=None,
                        help="comparisons the greedy client keeps in flight (default: its share + 1; 0: none)")
    parser.add_argument("--out", default=str(REPO / "results" / "loadtest.json"))
    args = parser.parse_args()

    from bench import free_port  # benchmarks/ is on sys.path when this script runs

    config = load_config()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start_app(port, out.with_suffix(".log"))
    url = f"http://127.0.0.1:{port}/"
    sampler = RssSampler(proc.pid)
    try:
        from gradio_client import Client

        Client(url, verbose=False).predict(prompt="warm up", variants=VARIANTS, max_new_tokens=2, api_name="/compare")
        sampler.start()
        outcomes: list[dict] = []
        greedy_outcomes: list[dict] = []
        users_done = threading.Event()
        slots = config.limits.max_pending_per_client + 1 if args.greedy_slots is None else args.greedy_slots
        users = [threading.Thread(target=one_user, args=(url, u, args.requests, args.max_new_tokens,
                                                          args.request_timeout_s, outcomes)) for u in range(args.users)]
        started = time.perf_counter()
        greedy = greedy_client(url, slots, args.max_new_tokens, args.request_timeout_s, users_done, greedy_outcomes)
        for user in users:
            user.start()
        for user in users:
            user.join(timeout=max(1.0, args.request_timeout_s * args.requests - (time.perf_counter() - started)))
        users_done.set()
        for thread in greedy:  # its comparisons in flight end too (each within its deadline)
            thread.join(timeout=args.request_timeout_s + 10)
        wall_s = time.perf_counter() - started
    finally:
        sampler.stop.set()
        proc.terminate()
        proc.wait(timeout=30)
    requests = args.users * args.requests
    count = {k: sum(o["outcome"] == k for o in outcomes) for k in ("completed", "busy", "failed", "mixed")}
    waits = sorted(o["queue_wait_ms"] for o in outcomes if "queue_wait_ms" in o)
    result = {
        "users": args.users,
        "requests": requests,
        **count,
        "lost": requests - len(outcomes) + sum(o["outcome"] == "lost" for o in outcomes),
        "queue_wait_ms_p50": round(statistics.median(waits), 1) if waits else None,
        "queue_wait_ms_p95": percentile(waits, 0.95),
        "peak_rss_mib": round(sampler.peak_mib, 1),
        "memory_budget_mib": config.memory_budget_mib,
        "overhead_allowance_mib": OVERHEAD_MIB,
        "wall_s": round(wall_s, 1),
        "greedy": {"slots": slots, **greedy_summary(greedy_outcomes, count["completed"], args.users)},
        "conditions": {"variants": VARIANTS, "max_new_tokens": args.max_new_tokens, "decoding": "greedy",
                       "max_pending": config.limits.max_pending,
                       "max_pending_per_client": config.limits.max_pending_per_client},
        "errors": sorted({o["error"] for o in outcomes + greedy_outcomes if "error" in o})[:10],
        "environment": environment(),
    }
    greedy_counts = result["greedy"]
    met = (result["lost"] == 0 and result["mixed"] == 0 and result["failed"] == 0
           and greedy_counts["lost"] == 0 and greedy_counts["mixed"] == 0 and greedy_counts["failed"] == 0
           and result["peak_rss_mib"] <= config.memory_budget_mib + OVERHEAD_MIB)
    result["target_met"] = met
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("environment", "errors")}, indent=2))
    print(f"wrote {out}; target {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
