"""The bench's stand-in runtime goes through the path a real variant takes (the device thread, the streaming
queue, the trackers, the snapshots) and its cost per token comes out finite and consistent."""

import math
import threading

from benchmarks.harness_cost import StandIn, measure, one_run, stand_in_arena


class WordTokenizer:
    """Token i is the word f"w{i}": enough of a tokenizer for prompt_ids and decode_whole."""

    chat_template = None

    def __call__(self, text):
        return {"input_ids": list(range(len(text.split())))}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids)


class WatchedStandIn(StandIn):
    def generate(self, prompt_ids, settings, stop, on_token):
        self.thread = threading.current_thread().name
        self.prompt_ids = prompt_ids
        super().generate(prompt_ids, settings, stop, on_token)


def test_the_stand_in_runs_through_the_arena_on_the_device_thread():
    arena, stand_in = stand_in_arena(WordTokenizer(), [5, 6, 7], 40, runtime_class=WatchedStandIn)
    figures = one_run(arena, stand_in, "three word prompt", 40)
    assert stand_in.thread.startswith("device") and stand_in.thread != threading.current_thread().name
    assert stand_in.prompt_ids == [0, 1, 2]
    [record] = arena.compare_records("three word prompt", ["stand-in"], arena.settings(max_new_tokens=40))
    assert record["new_tokens"] == 40 and record["text"] == " ".join(["w5 w6 w7"] * 13 + ["w5"])
    assert record["status"] == "done" and record["memory_kind"] == "cpu-rss" and record["truncated"]
    assert all(math.isfinite(v) for v in figures.values())
    assert figures["through_us_per_token"] > 0 and figures["recorded_us_per_token"] > 0


def test_the_cost_per_token_free_and_paced():
    result = measure(WordTokenizer(), list(range(50)), "a prompt", 30, runs=2, pace_s=0.0005)
    for name, pace_us in (("free", 0.0), ("paced", 500.0)):
        figures = result[name]
        assert figures["pace_us"] == pace_us
        assert all(math.isfinite(v) for v in figures.values())
        assert figures["through_us_per_token"] > 0
    # paced, a token cannot come faster than the stand-in's own sleep between tokens
    assert result["paced"]["recorded_us_per_token"] >= 500 and result["paced"]["bare_us_per_token"] >= 500
    assert result["harness_us_per_token"] == max(result["free"]["through_us_per_token"],
                                                 result["paced"]["added_us_per_token"])
    assert result["meets_goal"] == (result["harness_us_per_token"] < 100)
