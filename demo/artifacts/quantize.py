"""Quantize a base model from models.yaml and save a checkpoint transformers loads (python -m demo.quantize).

GPTQ goes through transformers' GPTQConfig (optimum + gptqmodel), calibrated on assets/calibration.txt;
AWQ through gptqmodel itself (demo.artifacts.awq), on the same text; bitsandbytes methods are saved with
bitsandbytes serialization. The checkpoint is written to a staging folder and renamed into place only
once complete, with quantize.json (settings, calibration, wall time, size on disk, library versions)
written next, and the cache manifest (sizes and hashes) last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from demo.artifacts import cache, sources
from demo.config import CHECKPOINT_METHODS, REPO_ROOT, ArenaConfig, BaseModel
from demo.errors import ArenaError

CALIBRATION_FILE = REPO_ROOT / "assets" / "calibration.txt"
LINES_PER_SAMPLE = 4  # calibration samples of a few sentences each: ~40 samples from the shipped file
GPTQ_BITS = (2, 3, 4, 8)
CLI_METHODS = {  # CLI name -> (models.yaml method, fixed settings)
    "gptq": ("gptq", {}),
    "awq": ("awq", {}),
    "bnb-nf4": ("bnb-4bit", {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                             "bnb_4bit_compute_dtype": "bfloat16"}),
    "bnb-fp4": ("bnb-4bit", {"bnb_4bit_quant_type": "fp4", "bnb_4bit_compute_dtype": "bfloat16"}),
    "bnb-int8": ("bnb-int8", {}),
}
_variant_lock = threading.Lock()
log = logging.getLogger(__name__)


class QuantizeError(ArenaError):
    """Bad arguments or a failed quantization; the CLI prints it on one line and exits 1."""


def calibration_samples(path: Path = CALIBRATION_FILE) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [" ".join(lines[i:i + LINES_PER_SAMPLE]) for i in range(0, len(lines), LINES_PER_SAMPLE)]


def check_output_folder(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise QuantizeError(f"output folder '{out}' is not empty: choose a new folder")
    parent = out.parent if not out.exists() else out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise QuantizeError(f"output folder '{out}' is not writable")


def quantize(base: BaseModel, method: str, settings: dict, out: Path, calibration: Path = CALIBRATION_FILE, *,
             rebuild_command: str | None = None) -> dict:
    """Quantize `base` with `method` and `settings` into `out`, sealed; returns the metadata written there."""
    check_calibration_size(base, method)
    check_output_folder(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise QuantizeError(f"output folder '{out}' is not writable ({exc.strerror})") from None
    try:
        with cache.disk_full_as_error(out.parent, f"the {method} checkpoint of {base.label}"):
            started = time.perf_counter()
            samples = _write_checkpoint(base, method, settings, staging, calibration)
            metadata = {
                "base": base.id, "base_label": base.label, "method": method, "settings": settings,
                "calibration": {"file": calibration.name, "samples": len(samples),
                                "characters": sum(map(len, samples))} if samples else None,
                "wall_time_s": round(time.perf_counter() - started, 1),
                "size_on_disk_mib": round(folder_mib(staging), 1),
                "environment": _environment(),
            }
            (staging / sources.METADATA_FILE).write_text(json.dumps(metadata, indent=2))  # marks it complete
            cache.seal(staging, rebuild_command=rebuild_command, extra={"kind": "quantized checkpoint"})
        if out.exists():
            out.rmdir()  # checked empty above
        staging.rename(out)
        return metadata
    except ArenaError:
        raise
    except Exception as exc:
        raise QuantizeError(f"quantization failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def quantize_variant(config: ArenaConfig, variant_id: str) -> Path:
    """Make the cached checkpoint a models.yaml GPTQ, AWQ, AutoRound or GGUF variant loads; never twice for the same settings."""
    variant = config.variants.get(variant_id)
    if variant is None:
        raise QuantizeError(f"unknown variant '{variant_id}'; known: {', '.join(config.variants)}")
    if variant.method == "gguf" and variant.checkpoint is None:
        return quantize_gguf_variant(variant_id, config.bases[variant.base], variant.file_settings)
    if variant.method not in CHECKPOINT_METHODS or variant.checkpoint is not None:
        raise QuantizeError(f"variant '{variant_id}' needs no quantizing here (method {variant.method}"
                            f"{', pre-quantized checkpoint' if variant.checkpoint else ''})")
    base = config.bases[variant.base]
    out = sources.quantized_dir(base, variant.method, variant.settings)
    command = sources.quantize_command(variant_id)
    with _variant_lock:
        found = cache.check(out, rebuild_command=command) if sources.is_complete_checkpoint(out) else None
        if found is not None and found.ok:
            return out
        if found is not None:
            log.warning("rebuilding the checkpoint of %s: it was %s (%s)", variant_id, found.state, found.problem)
        if out.exists():  # an older, unfinished attempt, or a checkpoint damaged since: made again
            shutil.rmtree(out)
        quantize(base, variant.method, variant.settings, out, rebuild_command=command)
    return out


def quantize_gguf_variant(variant_id: str, base: BaseModel, file_settings: dict) -> Path:
    """The cached, sealed folder (model.gguf and quantize.json) of a GGUF variant: made once, made again
    only when found damaged."""
    from demo.artifacts import gguf

    out = sources.quantized_dir(base, "gguf", file_settings)
    command = sources.quantize_command(variant_id)
    with _variant_lock:
        found = cache.check(out, rebuild_command=command)
        if found.ok and (out / sources.METADATA_FILE).is_file():
            return out
        if found.state != "missing":
            log.warning("remaking the GGUF file of %s: it was %s (%s)", variant_id, found.state, found.problem)
            cache.remove(out)
        started = time.perf_counter()
        try:
            with cache.staged_folder(out, f"the GGUF file of {variant_id}", rebuild_command=command,
                                     extra={"kind": "gguf"}) as staging:
                made = gguf.make(base, file_settings["type"], staging / "model.gguf",
                                 imatrix=bool(file_settings.get("imatrix")))
                metadata = {"base": base.id, "base_label": base.label, "method": "gguf", "settings": file_settings,
                            **made, "wall_time_s": round(time.perf_counter() - started, 1),
                            "size_on_disk_mib": round(folder_mib(staging), 1), "environment": _environment()}
                (staging / sources.METADATA_FILE).write_text(json.dumps(metadata, indent=2))
        except ArenaError:
            raise
        except Exception as exc:
            raise QuantizeError(f"GGUF quantization failed: {exc.__class__.__name__}: "
                                f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from exc
    return out


def quantize_gguf_file(base: BaseModel, gguf_type: str, out: Path) -> dict:
    """python -m demo.quantize --method gguf --type T --out FILE: one GGUF file, written atomically."""
    from demo.artifacts import gguf

    if out.exists():
        raise QuantizeError(f"output file '{out}' already exists: choose a new name")
    if not os.access(out.parent if out.parent.exists() else Path.cwd(), os.W_OK):
        raise QuantizeError(f"output folder '{out.parent}' is not writable")
    started = time.perf_counter()
    with cache.staged_file(out, f"the GGUF file {out.name}") as partial:
        made = gguf.make(base, gguf_type, partial)
    return {**made, "wall_time_s": round(time.perf_counter() - started, 1),
            "size_on_disk_mib": round(out.stat().st_size / 2**20, 1)}


# GPTQ and AWQ calibrate layer by layer: about 3 minutes for SmolLM2-135M on 2 CPU cores, growing with the
# parameters, so hours at 1B. On a CPU they are refused above this for a base with random weights, which gives
# calibration nothing to preserve anyway.
CPU_CALIBRATION_MAX_PARAMETERS = 500_000_000
CALIBRATED_METHODS = ("gptq", "awq", "autoround")  # compressed-tensors here is data-free: seconds at any size


def check_calibration_size(base: BaseModel, method: str) -> None:
    """Refuse GPTQ / AWQ for a random-weights shape too large to calibrate on a CPU, with the reason."""
    if method not in CALIBRATED_METHODS or not base.random_weights:
        return
    import torch

    from demo.measuring.shapes import parameter_count, shape_named

    shape = shape_named(base.source.shape)
    count = parameter_count(shape).total
    if count > CPU_CALIBRATION_MAX_PARAMETERS and not torch.cuda.is_available():
        raise QuantizeError(f"{method.upper()} is not made for the {shape.label} shape on a CPU: calibrating "
                            f"{count / 1e9:.2f} billion parameters takes hours there (minutes for 135 million), and "
                            "random weights give calibration nothing to preserve; make it on a GPU")


def check_group_size(model_config, group_size: int, method: str = "GPTQ") -> None:
    """GPTQ and AWQ kernels (the CPU int4 ones included) need each layer's input size divisible by the group size."""
    if group_size == -1:
        return
    sizes = {getattr(model_config, name, None) for name in ("hidden_size", "intermediate_size")} - {None}
    bad = sorted(size for size in sizes if size % group_size)
    if bad:
        fits = [g for g in (32, 64, 128, 256) if all(size % g == 0 for size in sizes)]
        raise QuantizeError(f"group size {group_size} does not divide this model's layer sizes ({', '.join(map(str, bad))}),"
                            f" which the {method} kernels need; use {' or '.join(map(str, fits)) or '-1'}")


def folder_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


@contextlib.contextmanager
def gptqmodel_logs_aside() -> Iterator[None]:
    """gptqmodel writes a log file per quantization under ./logs, in whatever folder the process runs from (a
    user's checkout, say): point it at a temporary folder, removed afterwards."""
    try:
        from gptqmodel.looper import loop_processor
    except ImportError:  # no gptqmodel: the quantizer says so itself
        yield
        return

    saved = loop_processor._PROJECT_LOG_DIR
    with tempfile.TemporaryDirectory(prefix="gptqmodel-logs-") as folder:
        loop_processor._PROJECT_LOG_DIR = Path(folder)
        try:
            yield
        finally:
            loop_processor._PROJECT_LOG_DIR = saved


def _write_checkpoint(base: BaseModel, method: str, settings: dict, out: Path, calibration: Path) -> list[str]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GPTQConfig

    weights = sources.resolve(base)
    common = {"revision": weights.revision, "trust_remote_code": base.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(weights.location, **common)
    samples: list[str] = []
    if method == "awq":
        return _write_awq_checkpoint(weights, common, settings, out, calibration, tokenizer)
    if method == "autoround":
        return _write_autoround_checkpoint(weights, common, settings, out, calibration, tokenizer)
    if method == "compressed-tensors":
        return _write_compressed_tensors_checkpoint(weights, common, settings, out)
    if method == "gptq":
        samples = calibration_samples(calibration)
        quantization = GPTQConfig(dataset=samples, tokenizer=tokenizer, **settings)
    elif method == "bnb-4bit":
        quantization = BitsAndBytesConfig(load_in_4bit=True, **settings)
    elif method == "bnb-int8":
        quantization = BitsAndBytesConfig(load_in_8bit=True, **settings)
    else:
        raise QuantizeError(f"method '{method}' cannot be saved as a quantized checkpoint")
    if method == "gptq":
        check_group_size(AutoConfig.from_pretrained(weights.location, **common), settings.get("group_size", 128))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    logs_aside = gptqmodel_logs_aside() if method == "gptq" else contextlib.nullcontext()
    with contextlib.redirect_stdout(sys.stderr), logs_aside:  # gptqmodel logs to stdout; keep stdout for results
        model = AutoModelForCausalLM.from_pretrained(weights.location, quantization_config=quantization,
                                                     device_map=device, **common)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return samples


def _write_awq_checkpoint(weights, common: dict, settings: dict, out: Path, calibration: Path, tokenizer) -> list[str]:
    import torch
    from transformers import AutoConfig

    from demo.artifacts import awq

    check_group_size(AutoConfig.from_pretrained(weights.location, **common), settings["group_size"], "AWQ")
    samples = calibration_samples(calibration)
    with gptqmodel_logs_aside():
        awq.make(weights.location, settings, samples, out, "cuda" if torch.cuda.is_available() else "cpu")
    tokenizer.save_pretrained(out)
    return samples


def _write_autoround_checkpoint(weights, common: dict, settings: dict, out: Path, calibration: Path,
                                tokenizer) -> list[str]:
    import torch
    from transformers import AutoConfig

    from demo.artifacts import autoround

    check_group_size(AutoConfig.from_pretrained(weights.location, **common), settings["group_size"], "AutoRound")
    samples = autoround.make(weights.location, settings, calibration, tokenizer, out,
                             "cuda" if torch.cuda.is_available() else "cpu")
    tokenizer.save_pretrained(out)
    return samples


def _write_compressed_tensors_checkpoint(weights, common: dict, settings: dict, out: Path) -> list[str]:
    """Data-free: no calibration samples. What llm-compressor's environment reports (its versions, the time) is kept
    beside the weights."""
    from transformers import AutoConfig

    from demo.artifacts import llm_compressor

    if settings["scheme"] == "W4A16":
        check_group_size(AutoConfig.from_pretrained(weights.location, **common), settings["group_size"],
                         "compressed-tensors")
    report = llm_compressor.make(weights.location, settings, out)
    (out / "llm_compressor.json").write_text(json.dumps(report, indent=2))
    return []


def _environment() -> dict:
    from demo.measuring.system import environment

    env = environment()
    for name in ("optimum", "gptqmodel", "auto-round", "auto-round-lib", "compressed-tensors"):
        env[name] = _version(name)
    return env


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def settings_for(method: str, bits: int | None, group_size: int) -> tuple[str, dict]:
    """The models.yaml method and settings a CLI choice stands for; rejects unsupported bits."""
    config_method, fixed = CLI_METHODS[method]
    if method == "gptq":
        bits = 4 if bits is None else bits
        if bits not in GPTQ_BITS:
            raise QuantizeError(f"GPTQ supports {', '.join(map(str, GPTQ_BITS))} bits, not {bits}")
        if group_size != -1 and group_size < 1:
            raise QuantizeError(f"group size must be positive (or -1 for one group per row), not {group_size}")
        return config_method, {"bits": bits, "group_size": group_size, "desc_act": False, "sym": True}
    if method == "awq":
        if bits not in (None, 4):
            raise QuantizeError(f"AWQ here is 4-bit (gptqmodel's GEMM format); --bits {bits} does not apply")
        if group_size < 1:
            raise QuantizeError(f"AWQ group size must be positive, not {group_size}")
        return config_method, {"bits": 4, "group_size": group_size, "zero_point": True}
    expected = 8 if method == "bnb-int8" else 4
    if bits is not None and bits != expected:
        raise QuantizeError(f"{method} is {expected}-bit; --bits {bits} does not apply")
    return config_method, dict(fixed)
