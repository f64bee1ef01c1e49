"""The serving protocol: how many users a variant serves on this machine, and at what latency per user.

For each variant and concurrency level N, N requests are in flight at once (request i gets prompt i of a fixed,
shipped set of mixed lengths, assets/serving_prompts.json), greedy, each answer exactly `new_tokens` long (stop
tokens banned until then, as serving benchmarks' ignore_eos), batched by the runtime that would serve it:

- transformers variants: one generate() call for the N prompts, left-padded with attention masks
  (LoadedVariant.generate_batch; a static batch: every request's first token comes after the whole batch's prompt
  read);
- GGUF variants: llama.cpp's own server (llama-server, built from the vendored source by `make llama-tools`),
  started by the sweep on 127.0.0.1 with N-or-more parallel slots and continuous batching, and stopped after it;
- remote variants: N concurrent streams to their engine;
- with engine "vllm", transformers-format weights (plain dtypes, pre-quantized checkpoints) on vLLM's own server
  (its CPU build, from `make vllm`), started on 127.0.0.1 for the sweep: continuous batching, as people deploy them.

Each level runs once per round, the levels interleaved within a round (so a burst of other work on the machine
hits every level of that round alike), after one untimed warm-up at the smallest and largest level. Per variant
and level: total output tokens/s (each round's tokens over its wall time, the median over rounds), per-request
decode tokens/s (each request's tokens after its first over the time since its first, the median over requests),
time to first token and inter-token latency at p50 and p95 over every request and gap of every round, and total
tokens/s against the smallest level as a paired ratio over rounds (demo.measuring.paired_ratio; its interval
needs six rounds). The sweep takes the device as one request does: nothing else runs on it meanwhile.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from tqdm.auto import tqdm

from demo.backends import llamacpp
from demo.backends.remote_http import EndpointClient
from demo.config import REPO_ROOT, Variant
from demo.errors import ArenaError, InvalidRequest
from demo.evaluate.serving_requests import concurrent_streams
from demo.measuring import metrics
from demo.measuring.paired_ratio import MIN_PAIRS, paired_ratio
from demo.running import engine_server
from demo.running.runner import Arena
from demo.running.variant_run import describe_failure
from demo.settings import prompt_ids

log = logging.getLogger(__name__)
PROMPTS_FILE = REPO_ROOT / "assets" / "serving_prompts.json"
DEFAULT_CONCURRENCY = (1, 2, 4, 8)
MAX_CONCURRENCY = 32
NEW_TOKENS = 32
ROUNDS = MIN_PAIRS  # the fewest that give the ratio against the smallest level a 95 % interval
# "Users per machine": the largest level at which a variant keeps each user's decode at or above this rate (the
# median request's) and the slowest twentieth of first tokens within this time.
MIN_USER_TOKENS_PER_S = 10.0
MAX_TTFT_P95_MS = 2000.0
SLOT_MARGIN_TOKENS = 16
ENGINES = ("runtime", "vllm")
_VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # a checkpoint's own dtype otherwise


@dataclass(frozen=True)
class ServingPlan:
    concurrency: tuple[int, ...] = DEFAULT_CONCURRENCY
    new_tokens: int = NEW_TOKENS
    rounds: int = ROUNDS
    prompts_file: Path = PROMPTS_FILE
    min_user_tokens_per_s: float = MIN_USER_TOKENS_PER_S
    max_ttft_p95_ms: float = MAX_TTFT_P95_MS
    engine: str = "runtime"  # what serves transformers-format weights: "runtime" (one generate() batch) or "vllm"

    def check(self) -> None:
        if self.engine not in ENGINES:
            raise InvalidRequest(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not self.concurrency:
            raise InvalidRequest("give at least one concurrency level, e.g. --concurrency 1,2,4,8")
        if list(self.concurrency) != sorted(set(self.concurrency)):
            raise InvalidRequest("list each concurrency level once, smallest first")
        if not 1 <= self.concurrency[0] or self.concurrency[-1] > MAX_CONCURRENCY:
            raise InvalidRequest(f"concurrency levels must be from 1 to {MAX_CONCURRENCY}")
        if not 2 <= self.new_tokens <= 512:
            raise InvalidRequest(f"new tokens must be from 2 to 512 (a decode rate needs two), got {self.new_tokens}")
        if not 1 <= self.rounds <= 100:
            raise InvalidRequest(f"rounds must be from 1 to 100, got {self.rounds}")
        self.prompts()

    def prompts(self) -> list[str]:
        try:
            raw = json.loads(self.prompts_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InvalidRequest(f"prompt file '{self.prompts_file.name}' not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"prompt file '{self.prompts_file.name}' is not JSON: {exc}") from None
        prompts = raw.get("prompts") if isinstance(raw, dict) else None
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InvalidRequest(f"prompt file '{self.prompts_file.name}' needs a non-empty list 'prompts' of texts")
        return prompts

    def describe(self) -> dict[str, Any]:
        return {"concurrency": list(self.concurrency), "new_tokens": self.new_tokens, "rounds": self.rounds,
                "transformers_weights_served_by": "vLLM" if self.engine == "vllm" else "transformers generate()",
                "prompts": self.prompts_file.name, "decoding": "greedy, every answer new_tokens long (ignore_eos)",
                "min_user_tokens_per_s": self.min_user_tokens_per_s, "max_ttft_p95_ms": self.max_ttft_p95_ms}


@dataclass
class ServingRow:
    """One variant at one concurrency level: what results.json holds per row."""

    variant: str
    concurrency: int
    served_by: str | None = None  # "transformers generate() batch", "llama-server", "vllm at ..."
    rounds: int = 0
    total_tokens_per_s: float | None = None
    per_request_tokens_per_s: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    itl_p50_ms: float | None = None
    itl_p95_ms: float | None = None
    # total tokens/s against the smallest level, paired by round: {ratio, low, high, pairs, confidence}
    total_vs_lowest: dict | None = None
    round_totals_tokens_per_s: list[float] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


Run = dict[str, Any]  # {"started_s", "requests": [{"sent_s"?, "stamps"}]}


def level_figures(runs: list[Run]) -> dict[str, Any]:
    """One level's figures from its timed runs (see the module's docstring)."""
    totals, ttft, per_request, gaps = [], [], [], []
    for run in runs:
        requests = run["requests"]
        ends = [r["stamps"][-1] for r in requests if r["stamps"]]
        tokens = sum(len(r["stamps"]) for r in requests)
        if ends and max(ends) > run["started_s"]:
            totals.append(tokens / (max(ends) - run["started_s"]))
        for request in requests:
            stamps = request["stamps"]
            if not stamps:
                continue
            ttft.append(stamps[0] - request.get("sent_s", run["started_s"]))
            if len(stamps) >= 2 and stamps[-1] > stamps[0]:
                per_request.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
            gaps += [b - a for a, b in zip(stamps, stamps[1:])]
    return {"total_tokens_per_s": _r(statistics.median(totals) if totals else None, 2),
            "per_request_tokens_per_s": _r(statistics.median(per_request) if per_request else None, 2),
            "ttft_p50_ms": _ms(ttft, 50), "ttft_p95_ms": _ms(ttft, 95),
            "itl_p50_ms": _ms(gaps, 50), "itl_p95_ms": _ms(gaps, 95),
            "round_totals_tokens_per_s": [round(t, 3) for t in totals]}


def users_per_machine(rows: list[ServingRow], plan: ServingPlan) -> dict[str, int | None]:
    """Per variant, the largest level at which the median request decodes at min_user_tokens_per_s or faster and
    the p95 first token comes within max_ttft_p95_ms; None where no level does."""
    best: dict[str, int | None] = {}
    for row in rows:
        best.setdefault(row.variant, None)
        if (row.error is None and row.per_request_tokens_per_s is not None and row.ttft_p95_ms is not None
                and row.per_request_tokens_per_s >= plan.min_user_tokens_per_s
                and row.ttft_p95_ms <= plan.max_ttft_p95_ms):
            best[row.variant] = max(best[row.variant] or 0, row.concurrency)
    return best


def serving_steps(arena: Arena, variant_ids: list[str], plan: ServingPlan) -> Iterator[tuple[float, str] | ServingRow]:
    """The sweep's model work, variant after variant: yields (fraction, message) progress and each finished row."""
    texts = plan.prompts()
    per_variant = plan.rounds * len(plan.concurrency)
    bar = tqdm(total=len(variant_ids) * per_variant, desc="Serving sweep", unit="level")
    for v_index, variant_id in enumerate(variant_ids):
        variant = arena.config.variants[variant_id]
        runs: dict[int, list[Run]] = {level: [] for level in plan.concurrency}
        served_by, error = None, None
        try:
            with arena.exclusive(), _server_for(arena, variant, plan) as serve:
                served_by = serve.served_by
                ids = [prompt_ids(serve.tokenizer, text) for text in texts]
                batch = lambda level: [ids[i % len(ids)] for i in range(level)]  # noqa: E731
                for level in sorted({plan.concurrency[0], plan.concurrency[-1]}):  # warm-up, untimed
                    serve.run(batch(level), plan.new_tokens)
                for round_index in range(plan.rounds):
                    for l_index, level in enumerate(plan.concurrency):
                        step = v_index * per_variant + round_index * len(plan.concurrency) + l_index
                        message = f"{variant_id}: round {round_index + 1}/{plan.rounds}, {level} at once"
                        bar.set_postfix_str(message)
                        yield step / (len(variant_ids) * per_variant), message
                        runs[level].append(serve.run(batch(level), plan.new_tokens))
                        bar.update()
        except ArenaError as exc:
            error = str(exc)
        except Exception as exc:  # out of memory, a kernel error: this variant's rows say so, the others stand
            log.exception("the serving sweep of %s failed", variant_id)
            error = describe_failure("the serving sweep", exc)
        yield from _rows(variant_id, plan, runs, served_by, error)
    bar.close()


def _rows(variant_id: str, plan: ServingPlan, runs: dict[int, list[Run]], served_by: str | None,
          error: str | None) -> Iterator[ServingRow]:
    lowest: list[float] | None = None
    for level in plan.concurrency:
        row = ServingRow(variant_id, level, served_by, len(runs[level]), error=error)
        if runs[level] and error is None:
            for name, value in level_figures(runs[level]).items():
                setattr(row, name, value)
            totals = row.round_totals_tokens_per_s
            if lowest is None:
                lowest = totals
            elif len(totals) == len(lowest) >= MIN_PAIRS:
                row.total_vs_lowest = {k: (round(v, 4) if isinstance(v, float) else v)
                                       for k, v in paired_ratio(totals, lowest).as_dict().items()}
            elif len(totals) == len(lowest) and lowest:
                row.total_vs_lowest = {"ratio": round(statistics.median(totals) / statistics.median(lowest), 4),
                                       "pairs": len(totals), "low": None, "high": None}
        yield row


def sweep(arena: Arena, variant_ids: list[str], plan: ServingPlan, progress=None, stop=None) -> list[ServingRow]:
    """The serving sweep over the chosen variants; once `stop` is set, the variants not yet started are left out."""
    from demo.evaluate.run import check_variants, sweep_rows

    check_variants(arena, variant_ids)
    plan.check()
    steps = arena.run_job(serving_steps, variant_ids, plan, gpu_seconds=None)
    return sweep_rows(steps, ServingRow, progress, lambda row: stop is not None and stop.is_set()
                      and row.concurrency == plan.concurrency[-1])


class _Serving:
    """How one variant is served for the sweep: its tokenizer, what serves it, and one timed run of a batch."""

    def __init__(self, tokenizer: Any, served_by: str, run: Callable[[list[list[int]], int], Run],
                 close: Callable[[], None] = lambda: None):
        self.tokenizer, self.served_by, self.run, self._close = tokenizer, served_by, run, close

    def __enter__(self) -> "_Serving":
        return self

    def __exit__(self, *exc) -> None:
        self._close()


def _server_for(arena: Arena, variant: Variant, plan: ServingPlan) -> _Serving:
    if variant.runtime == "llama.cpp":
        return _llama_server(arena, variant, plan)
    if variant.runtime == "transformers" and plan.engine == "vllm":
        return _vllm(arena, variant, plan)
    loaded = arena.manager.get(variant.id).loaded
    if variant.runtime == "remote":
        client = EndpointClient(variant.endpoint)
        return _Serving(loaded.tokenizer, f"{variant.endpoint.engine} (remote engine)",
                        lambda batch, n: concurrent_streams(client, [loaded.request_prompt(p) for p in batch], n),
                        client.close)
    return _Serving(loaded.tokenizer, "transformers generate(), one batch",
                    lambda batch, n: arena.device.call(loaded.generate_batch, batch, n))


def _llama_server(arena: Arena, variant: Variant, plan: ServingPlan) -> _Serving:
    """llama-server on the variant's GGUF file, with a slot per request of the largest level, each slot as long as
    the longest prompt and its answer."""
    import torch

    path, _ = llamacpp.gguf_file(variant, arena.config.bases[variant.base])
    tokenizer = _base_tokenizer(arena, variant)
    server = engine_server.llama_server(path, plan.concurrency[-1], _slot_tokens(tokenizer, plan),
                                        torch.get_num_threads(), _engine_log("llama-server", variant))
    return _on_engine(tokenizer, f"llama-server ({plan.concurrency[-1]} slots, continuous batching)", server)


def _vllm(arena: Arena, variant: Variant, plan: ServingPlan) -> _Serving:
    """vLLM's own server on the variant's weights (the base checkpoint in the variant's dtype, or its quantized
    checkpoint), up to the largest level's sequences at once. A variant vLLM cannot load fails its rows with vLLM's
    own last words."""
    import torch

    from demo.backends import transformers as backend
    from demo.config import CHECKPOINT_METHODS

    if variant.method not in (*_VLLM_DTYPES, *CHECKPOINT_METHODS) or variant.settings.get("cache_config"):
        raise InvalidRequest(f"vLLM serves plain-dtype and pre-quantized checkpoints here ({', '.join(_VLLM_DTYPES)}, "
                             f"{', '.join(CHECKPOINT_METHODS)}) without the arena's KV-cache settings; "
                             f"{variant.id} quantizes at load, as only transformers does")
    weights = backend.weights_for(variant, arena.config.bases[variant.base])
    tokenizer = _base_tokenizer(arena, variant)
    server = engine_server.vllm_server(Path(weights.location), _VLLM_DTYPES.get(variant.method, "bfloat16"),
                                       plan.concurrency[-1], _slot_tokens(tokenizer, plan), torch.get_num_threads(),
                                       _engine_log("vllm", variant))
    return _on_engine(tokenizer, f"vLLM {engine_server.vllm_version()} (up to {plan.concurrency[-1]} at once)", server)


def _base_tokenizer(arena: Arena, variant: Variant) -> Any:
    """The base model's own tokenizer (every runtime gets the same prompt ids), without loading the variant."""
    from transformers import AutoTokenizer

    from demo.artifacts import sources

    base = arena.config.bases[variant.base]
    weights = sources.resolve(base)
    return AutoTokenizer.from_pretrained(weights.location, revision=weights.revision,
                                         trust_remote_code=base.trust_remote_code)


def _slot_tokens(tokenizer: Any, plan: ServingPlan) -> int:
    """The context one request needs: the longest prompt and its answer."""
    return max(len(prompt_ids(tokenizer, text)) for text in plan.prompts()) + plan.new_tokens + SLOT_MARGIN_TOKENS


def _engine_log(engine: str, variant: Variant) -> Path:
    from demo.artifacts import cache

    return cache.local_dir() / "engines" / f"{engine}-{variant.id.replace('/', '-')}.log"


def _on_engine(tokenizer: Any, served_by: str, server: engine_server.EngineServer) -> _Serving:
    """A sweep against an engine the sweep started: concurrent streams to it; closing stops it."""
    client = EndpointClient(server.endpoint())

    def close() -> None:
        client.close()
        server.stop()

    return _Serving(tokenizer, served_by, lambda batch, n: concurrent_streams(client, batch, n), close)


def _ms(values: list[float], q: float) -> float | None:
    return round(metrics.percentile(values, q) * 1e3, 2) if values else None


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
