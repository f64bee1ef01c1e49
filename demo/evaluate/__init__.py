"""python -m demo.evaluate: quality, speed and memory of variants on the same text and settings.

Quality, under one of three protocols (demo.measuring.protocols), named on every figure:
- sliding (default): token-level perplexity over a held-out text with a sliding window (WINDOW tokens,
  moved by STRIDE; every scored token after the first window sees at least WINDOW - STRIDE tokens of context);
- llamacpp: llama.cpp's `perplexity --kl-divergence` protocol (chunks of --ctx tokens, BOS first, the second
  half scored): the only figures that may be set beside llama.cpp's published tables;
- trace: the baseline's own greedy answers to a prompt file, each variant teacher-forced on prompt + answer
  and scored on the answer tokens only (an in-domain trace).
Against the baseline of the same base model, at the same positions, the distribution of KL(baseline ||
variant) in nats, of Δp and of top-1 agreement, as llama.cpp reports them (demo.measuring.kl_stats).
Speed and memory: through the app's own path (Arena.compare), one warm-up run then RUNS runs.
Writes results.json, results.csv, results.md and PNG charts to results/<timestamp>/ or --out.

Two sweeps have rows of their own: --protocol depth (quality, speed, memory and retrieval against the context's
length, demo.evaluate.depth) and --protocol serving --concurrency 1,2,4,8 (throughput and latency with N requests
in flight at once, batched by the runtime that would serve them, demo.evaluate.serving).

The package's modules: plan (the protocols' pieces), quality, speed, run (evaluate), outputs (the files),
records (a variant's row), depth and serving (the sweeps, with their *_outputs) and __main__ (the command line).
"""

from demo.evaluate.outputs import conditions, markdown_table, noise_floors, write_outputs
from demo.evaluate.plan import EVALUATION_FILE, PROMPTS_FILE, PROTOCOLS, TRACE_ANSWER_TOKENS, Protocol
from demo.evaluate.records import FIELDS, VariantEvaluation
from demo.evaluate.run import evaluate
from demo.evaluate.speed import SPEED_PROMPT
from demo.measuring.protocols import STRIDE, WINDOW, windows

__all__ = ["EVALUATION_FILE", "FIELDS", "PROMPTS_FILE", "PROTOCOLS", "SPEED_PROMPT", "STRIDE", "TRACE_ANSWER_TOKENS",
           "WINDOW", "Protocol", "VariantEvaluation", "conditions", "evaluate", "markdown_table", "noise_floors",
           "windows", "write_outputs"]
