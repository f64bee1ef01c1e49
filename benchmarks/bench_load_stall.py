"""make bench, sixth part: how long other visitors' System panel reads take while one visitor's variant loads cold,
with that variant's runtime in the serving process (`process: shared`) and in a process of its own (`own`, the
default). Goal: every read under 1 s with the runtime out of the serving process.

For each placement, the app runs as its own process (python app.py) over the default profile with the variant's
`process:` set and an empty cache folder; one gradio_client client asks /compare for the variant (a cold load from
nothing: the bundled base's weights are dequantized and written once, then torchao int8 quantizes them at load,
holding Python's interpreter lock for seconds), and meanwhile READS plain GETs of the System
panel's route (/gradio_api/arena/system, what every open page fetches every 2 s) are timed, one every
READ_INTERVAL_S. Writes results/bench_load_stall.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from benchmarks.bench import app_server, write_json  # noqa: E402

READS = 40
READ_INTERVAL_S = 0.25
SYSTEM_PATH = "gradio_api/arena/system"
GOAL_S = 1.0


def profile(folder: Path, variant_id: str, process: str) -> str:
    data = yaml.safe_load((REPO / "models.yaml").read_text())
    for variant in data["variants"]:
        if variant["id"] == variant_id:
            variant["process"] = process
    path = folder / f"models-{process}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def timed_read(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url + SYSTEM_PATH, timeout=60) as response:
        response.read()
    return time.perf_counter() - start


def reads_during_cold_load(models: str, variant_id: str) -> dict:
    from gradio_client import Client

    with app_server(models) as (url, _):
        timed_read(url)  # the route's first rendering, before anything loads
        client = Client(url, verbose=False)
        outcome: dict = {}

        def load() -> None:
            start = time.perf_counter()
            records = client.predict(prompt="Hello", variants=[variant_id], max_new_tokens=4, api_name="/compare")
            outcome.update(load_ms=records[0]["load_ms"], status=records[0]["status"], error=records[0]["error"],
                           request_s=time.perf_counter() - start)

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(0.5)  # the request reaches the server and its load starts
        reads, during = [], []
        for _ in range(READS):
            reads.append(timed_read(url))
            during.append(loader.is_alive())
            time.sleep(READ_INTERVAL_S)
        loader.join()
    while_loading = [r for r, busy in zip(reads, during) if busy] or reads
    return {**outcome, "reads": len(reads), "reads_while_loading": sum(during),
            "max_s": max(while_loading), "p50_s": statistics.median(while_loading),
            "p95_s": sorted(while_loading)[int(0.95 * (len(while_loading) - 1))],
            "reads_s": [round(r, 4) for r in reads]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="smollm2/torchao-int8")
    parser.add_argument("--out", default=str(REPO / "results" / "bench_load_stall.json"))
    args = parser.parse_args()
    from demo.measuring.system import environment

    result = {"variant": args.variant, "reads": READS, "read_interval_s": READ_INTERVAL_S, "goal_max_s": GOAL_S,
              "environment": environment()}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_STALL_DIR")) as folder:
        for process in os.environ.get("BENCH_STALL_PROCESSES", "shared,own").split(","):
            os.environ["ARENA_CACHE_DIR"] = str(Path(folder) / f"cache-{process}")  # the app's; nothing cached
            result[process] = reads_during_cold_load(profile(Path(folder), args.variant, process), args.variant)
            print(f"{args.variant} process: {process}: {result[process]}")
    result["met"] = "own" in result and result["own"]["max_s"] < GOAL_S
    write_json(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
