"""Result records as text people read: every figure with its unit, the same in the CLI and the page."""

from __future__ import annotations

from typing import Any

from demo.reports.escaping import html_text, markdown_inline

MEMORY_KINDS = {
    "cpu-rss": "weights + process RSS growth during the run (approximate: mmap and allocator caching)",
    "cuda-allocated": "weights + peak CUDA memory allocated during the run (torch.cuda.max_memory_allocated)",
    "nvml-device": "weights + growth of the VRAM used on the whole GPU during the run (NVML, device-wide: "
                   "llama.cpp allocates outside torch)",
    "engine-reported": "as the remote engine reports it (source named with each variant); not this process's memory",
    "not-reported": "not reported by this engine (a remote variant's memory is the engine's, not this process's)",
}

# The fidelity figures sit next to the variant's name: they answer the question people come with (how close to
# the baseline), and at 1440 px they stay on screen however many speed and memory columns follow.
FIDELITY_HEADERS = ["KL vs baseline (nats)", "top-1 agreement (%)", "own answer departs at token"]
SUMMARY_HEADERS = ["variant", "method", "bits", *FIDELITY_HEADERS, "status", "new tokens", "TTFT (ms)",
                   "decode (tok/s)", "total (ms)", "load", "weights (MiB)", "peak (MiB)", "bandwidth (GB/s)",
                   "share of measured bandwidth (%)", "energy (J/token)"]

FIDELITY_HELP = (
    "Two different questions. \"Own answer\" compares the text each variant wrote, one token at a time, "
    "with the baseline's text: the first token where they part. \"Teacher-forced\" feeds the baseline's whole "
    "answer through the variant in one pass and asks, at every position, whether both would pick the same most "
    "likely next token (top-1) and how far apart their predictions are (KL divergence, in nats; 0 is identical). "
    "They can disagree: one pass over the whole answer computes slightly different numbers than token-by-token "
    "decoding (notably with LLM.int8), so a near tie can tip one way in one and the other way in the other; "
    "and when sampling, each own answer follows random draws, while teacher forcing compares most likely tokens."
)

NOT_COMPUTED_CELL = "not computed: random weights"  # a summary cell's words where quality is not computed

# The divergence view shows this much of the variant's text before the departure and of the departed part;
# the rest is collapsed into a count, so a long answer is never shown twice in full.
CONTEXT_CHARS = 200
PREVIEW_CHARS = 80  # of the baseline's text where the variant's departs or stops


def _num(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{' ' + unit if unit else ''}"


def percent_value(share: float, digits: int = 1) -> float:
    """A share in [0, 1] as a percentage, rounded without ever reaching 100 (or 0) when it is not exactly that."""
    step = 10 ** -digits
    value = round(100 * share, digits)
    if 0 < share < 1:
        value = min(max(value, step), 100 - step)
    return value


def percent(share: float, digits: int = 1) -> str:
    if share in (0, 1):
        return f"{100 * share:.0f}%"
    return f"{percent_value(share, digits):.{digits}f}%"


def _percent_pair(p: float, q: float) -> tuple[str, str]:
    """Two probabilities as percentages with the fewest decimals (up to 3) that tell them apart."""
    for digits in range(4):
        a, b = f"{100 * p:.{digits}f}", f"{100 * q:.{digits}f}"
        if a != b or p == q:
            break
    return f"{a}%", f"{b}%"


def load_text(record: dict[str, Any]) -> str:
    if record.get("load_ms") is None:
        return "–"
    placed = ((record.get("environment") or {}).get("zerogpu") or {}).get("placed_at_startup_ms") or {}
    if record.get("variant") in placed:  # ZeroGPU: the weights were placed when the app started
        return f"placed at start-up ({placed[record['variant']] / 1e3:,.1f} s)"
    if record.get("cache_hit"):
        return f"cached ({record['load_ms']:.2f} ms)"
    return f"cold {record['load_ms'] / 1e3:,.1f} s"


def figures(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value with unit) pairs for one variant's record."""
    return [
        ("load", load_text(record)),
        ("time to first token", _num(record.get("ttft_ms"), 0, "ms")),
        ("decode", _num(record.get("decode_tokens_per_s"), 1, "tokens/s")),
        ("total", _num(record.get("total_ms"), 0, "ms")),
        ("tokens", f"{_num(record.get('prompt_tokens'))} prompt → {record.get('new_tokens', 0)} new"),
        ("weights", _num(record.get("weights_mib"), 0, "MiB")),
        *([("kernel", f"{record['kernel']['kind']}: {record['kernel']['reason']}")] if record.get("kernel") else []),
        *([("stored", stored_text(record["stored"]))] if (record.get("stored") or {}).get("tensor_types") else []),
        *([("KV cache", kv_cache_text(record["stored"]["kv_cache"]))] if (record.get("stored") or {}).get("kv_cache")
          else []),
        ("peak memory", "not reported by this engine" if record.get("memory_kind") == "not-reported" else
         _num(record.get("peak_memory_mib"), 0, "MiB") + (" (approx.)" if record.get("memory_kind") == "cpu-rss" else "")),
        ("memory bandwidth", bandwidth_text(record)),
        ("energy", energy_text(record)),
        *remote_figures(record),
        *quality_figures(record),
    ]


def bandwidth_text(record: dict[str, Any]) -> str:
    """"12.3 GB/s achieved (a step reads 258.1 MB of weights + 1.2 MB of KV cache), 27% of the 45.0 GB/s
    measured": the bytes a decode step reads x decode rate, against the machine."""
    achieved, measured = record.get("achieved_bandwidth_gb_s"), record.get("measured_bandwidth_gb_s")
    if achieved is None:
        return "–"
    step = record.get("bytes_read_per_step") or {}
    parts = (f"a step reads {step['weights'] / 1e6:,.1f} MB of weights + {step['kv'] / 1e6:,.1f} MB of KV cache"
             if step else "bytes a step reads × decode rate")
    text = f"{achieved:,.{_digits(achieved)}f} GB/s achieved ({parts})"
    if record.get("bandwidth_share") is None or not measured:
        return text + "; the machine's bandwidth was not measured"
    return text + f", {100 * record['bandwidth_share']:.0f}% of the {measured:,.1f} GB/s measured"


def energy_text(record: dict[str, Any]) -> str:
    """"0.42 J/token (RAPL package-0 ...)", or why there is no figure."""
    if record.get("energy_joules_per_token") is None:
        return record.get("energy_source") or "–"
    return f"{record['energy_joules_per_token']:.3g} J/token ({record['energy_source']})"


def machine_bandwidth_lines(env: dict[str, Any]) -> list[str]:
    """The memory bandwidth this process measured, per device, with its method (none where not measured)."""
    names = {"cpu": "CPU", "cuda": "GPU"}
    lines = []
    for device, entry in (env.get("memory_bandwidth") or {}).items():
        name = names.get(device, device)
        lines.append(f"Memory bandwidth measured, {name}: {entry['gb_s']:,.1f} GB/s ({entry['method']})"
                     if entry.get("gb_s") is not None else f"Memory bandwidth, {name}: {entry['method']}")
    return lines


def energy_lines(records: list[dict[str, Any]]) -> list[str]:
    """Where the energy figures came from, or why there are none, once per distinct source."""
    read = {r["energy_source"]: any(r.get(k) is not None for k in ("energy_joules", "energy_joules_per_token_p50"))
            for r in records if r.get("energy_source")}  # a comparison's records, or an evaluation's rows
    return [f"Energy per token from {source}: the whole generation (prompt included) over the new tokens" if has
            else f"Energy per token: {source}" for source, has in read.items()]


def machine_notes(env: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """The measured bandwidth and the energy's source, one sentence each (no full stop), for every report."""
    return machine_bandwidth_lines(env) + energy_lines(records)


def _digits(value: float) -> int:
    return 1 if value >= 1 else 3


def quality_figures(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The fidelity lines; for a base with random weights, what its weights are and why there is no fidelity."""
    random = record.get("random_weights")
    if random:
        return [("weights are", random_weights_text(random)), ("fidelity", random["quality"])]
    return [("own answer", own_answer_text(record)), ("teacher-forced", teacher_forced_text(record))]


def random_weights_lines(records: list[dict[str, Any]]) -> list[str]:
    """One line per base with random weights, for the summary's conditions: which variants, and why no quality."""
    by_base: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("random_weights"):
            by_base.setdefault(r.get("base") or r["variant"], []).append(r)
    return [f"**{_sentence(random_weights_text(group[0]['random_weights']))}:** "
            f"{', '.join(markdown_inline(r['variant']) for r in group)}; tokenizer: "
            f"{markdown_inline(group[0]['random_weights']['tokenizer'])}; every answer runs to exactly the requested "
            f"number of tokens; fidelity and perplexity {group[0]['random_weights']['quality']}."
            for group in by_base.values()]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def random_weights_text(random: dict[str, Any]) -> str:
    """"random weights: speed and memory only (the Llama-3.2-1B shape, seed 0)"."""
    return f"{random['note']} (the {random['shape_label']} shape, seed {random['seed']})"


def remote_figures(record: dict[str, Any]) -> list[tuple[str, str]]:
    """A remote variant's extra lines: where its timings and counts come from, the round trip, its memory."""
    stored = record.get("stored") or {}
    if stored.get("runtime") != "remote":
        return []
    memory = {"not-reported": "not reported by this engine"}.get(record.get("memory_kind") or "",
                                                                  stored.get("memory_source") or "–")
    where = (f"{stored.get('engine')} at {stored['endpoint']}" if stored.get("endpoint")  # declared public
             else f"{stored.get('engine')} serving {stored.get('served_model')}")
    return [("timings", f"{stored.get('timings', 'measured at the client')}, {where}"),
            ("network round trip", _num(stored.get("network_round_trip_ms"), 1, "ms") + " (measured separately)"),
            ("tokens counted by", str(stored.get("tokens_counted_by", "–"))),
            ("engine memory", memory)]


def kv_cache_text(kv: dict[str, Any]) -> str:
    """E.g. "K q8_0 · V q8_0, 12,240 bytes/token (24 MiB for its whole context), flash attention"."""
    whole = f" ({kv['bytes'] / 2**20:,.0f} MiB for its whole context)" if kv.get("bytes") else ""
    flash = ", flash attention" if kv.get("flash_attention") else ""
    return f"{kv['label']}, {kv['bytes_per_token']:,.0f} bytes/token{whole}{flash}"


def stored_text(stored: dict[str, Any]) -> str:
    """What a GGUF file really stores: effective bits per weight and tensor types (llama.cpp falls back
    to other types where rows are not a multiple of 256 wide, so the type asked for is not the whole story)."""
    types = ", ".join(f"{name} ×{count}" for name, count in stored["tensor_types"].items())
    mapped = "; memory-mapped" if stored.get("memory_mapped") else ""
    return f"{stored['weights_bits_per_weight']:.2f} bits/weight ({types}){mapped}"


def _is_baseline(record: dict[str, Any]) -> bool:
    return bool(record.get("fidelity")) and record["fidelity"]["baseline"] == record["variant"]


def own_answer_text(record: dict[str, Any]) -> str:
    """Whether and where the variant's own generated answer departs from the baseline's."""
    fid = record.get("fidelity")
    if not fid:
        return "–"
    if _is_baseline(record):
        return "this is the baseline"
    token = record.get("answer_departs_at_token")
    if token is None:
        return "same as the baseline's, token for token"
    if token == record.get("new_tokens") and token < fid["scored_tokens"]:
        return f"departs at token {token}: stops where the baseline's goes on"
    if token == fid["scored_tokens"]:
        return f"departs at token {token}: goes on where the baseline's stops"
    return f"departs at token {token}"


def teacher_forced_text(record: dict[str, Any]) -> str:
    """The baseline's answer fed through the variant: KL, top-1 agreement and the first top-1 disagreement."""
    fid = record.get("fidelity")
    if not fid:
        return "–"
    if _is_baseline(record):
        return f"baseline (the reference for KL and top-1){noise_floor_text(fid)}"
    if fid.get("unavailable"):
        return fid["unavailable"]
    head = f"KL {kl_text(fid)} nats{_under_noise_floor(fid)} · top-1 {percent(fid['top1_agreement'])}"
    margin = fid.get("margin_at_disagreement")
    if fid["first_top1_disagreement"] is None:
        return f"{head} · no top-1 disagreement"
    if not margin:  # top-k only: a token outside the top k has no probability to show
        return f"{head} · first top-1 disagreement at token {fid['first_top1_disagreement']}"
    return f"{head} · first top-1 disagreement at token {fid['first_top1_disagreement']}: {margin_text(margin)}"


def noise_floor_text(fid: dict[str, Any]) -> str:
    """" · noise floor KL 0.00039 nats (…)": the floor of a bf16-rounding-scale perturbation of the baseline
    (demo.measuring.noise_floor)."""
    floor = fid.get("noise_floor")
    if not floor:
        return ""
    if "unavailable" in floor:
        return f" · {floor['unavailable']}"
    return (f" · noise floor KL {floor['kl_mean']:.3g} nats "
            "(the floor of a bf16-rounding-scale perturbation, ε = 2⁻⁹)")


def _under_noise_floor(fid: dict[str, Any]) -> str:
    floor, kl = fid.get("noise_floor") or {}, fid.get("kl_divergence")
    if "kl_mean" not in floor or kl is None or fid.get("kl_lower_bound_top_k"):
        return ""
    return f" (under the noise floor, {floor['kl_mean']:.3g})" if kl <= floor["kl_mean"] else ""


def kl_text(fid: dict[str, Any]) -> str:
    """The KL figure; from a remote engine's top k only, the lower bound it is: "≥ 0.012 (top-20)"."""
    if fid.get("kl_lower_bound_top_k"):
        return f"≥ {fid['kl_divergence']:.3g} (top-{fid['kl_lower_bound_top_k']})"
    return f"{fid['kl_divergence']:.3g}"


def margin_text(margin: dict[str, Any]) -> str:
    """Each model's top-1 token against the other's, with its probabilities: a near tie reads as one."""
    base, var = repr(margin["baseline_token"]), repr(margin["variant_token"])
    b_own, b_other = _percent_pair(margin["baseline_token_p_baseline"], margin["variant_token_p_baseline"])
    v_own, v_other = _percent_pair(margin["variant_token_p_variant"], margin["baseline_token_p_variant"])
    tie = " (near tie)" if margin.get("near_tie") else ""
    return f"baseline {base} {b_own} vs {var} {b_other}; variant {var} {v_own} vs {base} {v_other}{tie}"


def fidelity_text(record: dict[str, Any]) -> str:
    """Both fidelity figures on one line, each labelled (for a table cell or one line of text)."""
    if record.get("random_weights"):
        return f"{random_weights_text(record['random_weights'])}; fidelity {record['random_weights']['quality']}"
    if not record.get("fidelity"):
        return "–"
    if _is_baseline(record):
        return "baseline"
    return f"own answer: {own_answer_text(record)}; teacher-forced: {teacher_forced_text(record)}"


def divergence_html(record: dict[str, Any], baseline_text: str) -> str:
    """Where the variant's own answer departs from the baseline's, as literal text ("" when it never does).

    Everything is HTML-escaped inside a <pre> (no Markdown, blank lines kept); only a window around the
    departure is shown: CONTEXT_CHARS before it, CONTEXT_CHARS of the departed part in <mark>, and counts
    for the rest. A note says when one answer is a prefix of the other and shows where the baseline's goes.
    """
    cut, text = record.get("answer_departs_at_char"), record.get("text") or ""
    if cut is None:
        return ""
    cut = min(cut, len(text))
    start, end = max(0, cut - CONTEXT_CHARS), min(len(text), cut + CONTEXT_CHARS)
    parts = []
    if start:
        parts.append(_skipped(f"… ({start:,} characters before) "))
    parts.append(html_text(text[start:cut]))
    if cut < len(text):
        parts.append(f"<mark>{html_text(text[cut:end])}</mark>")
    if end < len(text):
        parts.append(_skipped(f" … ({len(text) - end:,} more characters)"))
    # An HTML parser drops one newline right after <pre>: this one, so a leading blank line of the text survives.
    view = f'<pre class="divergence" style="white-space:pre-wrap">\n{"".join(parts)}</pre>'
    return f'<div class="divergence-view">{view}{_departure_note(text, baseline_text, cut)}</div>'


def _departure_note(text: str, baseline_text: str, cut: int) -> str:
    rest = baseline_text[cut:]
    if cut >= len(text) and rest:
        what = f"Stops early: the baseline's answer goes on for {len(rest):,} more characters"
    elif cut >= len(text):
        what = "The same text as the baseline's (tokenized differently)"
    elif not rest:
        what = "Continues past the end of the baseline's answer (marked)"
    else:
        what = "Departs from the baseline's answer here (marked)"
    preview = ""
    if rest:
        more = " …" if len(rest) > PREVIEW_CHARS else ""
        preview = f"; the baseline's goes on: <code>{html_text(rest[:PREVIEW_CHARS])}</code>{more}"
    return f'<p class="divergence-note">{html_text(what)}{preview}</p>'


def _skipped(note: str) -> str:
    return f'<span class="divergence-skipped">{html_text(note)}</span>'


def figures_markdown(record: dict[str, Any]) -> str:
    rows = "\n".join(f"| {label} | {markdown_inline(value)} |" for label, value in figures(record))
    return f"| figure | value |\n|---|---|\n{rows}"


def method_text(record: dict[str, Any]) -> str:
    """The method, marked where its matmuls were emulated: such a row's speed and memory say nothing of its format."""
    kernel = record.get("kernel") or {}
    return f"{record['method']} (emulated)" if kernel.get("kind") == "emulated" else record["method"]


def summary_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows for the summary table, in SUMMARY_HEADERS order; numbers rounded, missing ones None."""
    def r(value, digits):
        return None if value is None else round(value, digits)

    return [[rec["variant"], method_text(rec), rec["bits"], *_fidelity_cells(rec), rec["status"], rec["new_tokens"],
             r(rec["ttft_ms"], 0), r(rec["decode_tokens_per_s"], 1), r(rec["total_ms"], 0),
             None if rec["load_ms"] is None else load_text(rec),
             r(rec["weights_mib"], 0), r(rec["peak_memory_mib"], 0), *_bandwidth_cells(rec)]
            for rec in records]


def _bandwidth_cells(record: dict[str, Any]) -> list[float | None]:
    """Achieved GB/s, its share of the measured bandwidth (%), J/token: None where unknown, never 0."""
    achieved, share = record.get("achieved_bandwidth_gb_s"), record.get("bandwidth_share")
    energy = record.get("energy_joules_per_token")
    return [None if achieved is None else float(f"{achieved:.3g}"), None if share is None else round(100 * share, 1),
            None if energy is None else float(f"{energy:.3g}")]


def _fidelity_cells(record: dict[str, Any]) -> list[Any]:
    """KL (nats), top-1 agreement (%), own answer's departure: None without a baseline."""
    if record.get("random_weights"):
        return [NOT_COMPUTED_CELL, NOT_COMPUTED_CELL, NOT_COMPUTED_CELL]
    fid = record.get("fidelity")
    if not fid:
        return [None, None, None]
    if _is_baseline(record):
        departs = "baseline"
    elif record.get("answer_departs_at_token") is None:
        departs = "never (same answer)"
    else:
        departs = str(record["answer_departs_at_token"])
    if fid.get("unavailable"):
        return ["not available", None, departs]
    if fid.get("kl_lower_bound_top_k"):
        return [kl_text(fid), percent_value(fid["top1_agreement"]), departs]
    kl = float(f"{fid['kl_divergence']:.3g}")  # significant figures: a small KL must not read as 0
    return [kl, percent_value(fid["top1_agreement"]), departs]


def text_report(records: list[dict[str, Any]]) -> str:
    """The CLI's plain-text output: each variant's answer and figures, then the conditions."""
    blocks = []
    for rec in records:
        head = f"== {rec['variant']} ({rec['method']}, {rec['bits']}-bit, {rec.get('device') or '?'}) [{rec['status']}]"
        if rec.get("random_weights"):
            head += f" [{random_weights_text(rec['random_weights'])}]"
        if rec.get("error"):
            partial = f"\n[partial answer] {rec['text'].strip()}" if (rec.get("text") or "").strip() else ""
            blocks.append(f"{head}\n{rec['error']}{partial}")
            continue
        lines = "\n".join(f"  {label:<20} {value}" for label, value in figures(rec))
        blocks.append(f"{head}\n{rec['text'].strip()}\n{lines}")
    if records:
        env, settings = records[0]["environment"], records[0]["settings"]
        kinds = {rec["memory_kind"] for rec in records if rec.get("memory_kind")}
        notes = [f"device: {env.get('device_name')}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
                 f"bitsandbytes {env.get('bitsandbytes')}",
                 f"settings: {settings}"]
        notes += [f"peak memory = {MEMORY_KINDS[k]}" for k in sorted(kinds)]
        notes += machine_notes(env, records)
        blocks.append("\n".join(notes))
    return "\n\n".join(blocks)
