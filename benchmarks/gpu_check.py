"""The checks only a GPU can answer, in one run that fits in 8 minutes on one H100 or H200 with no network
(`make gpu-check`): the bundled model and the synthetic shapes only.

1. Every transformers family of the default profile that needs no calibration run (bf16, fp16, bitsandbytes
   LLM.int8/NF4/FP4, torchao int8/int4/fp8, HQQ) on CUDA, on the bundled SmolLM2-135M and at the Llama-3.2-1B and
   Llama-3.1-8B shapes with random weights, through the headless CLI (`python -m demo compare`), so each variant
   loads and runs as the page runs it. Not here: GPTQ/AWQ/AutoRound/compressed-tensors (their checkpoints are made
   by a calibration run first), the quantized KV caches, and GGUF (the Space's environment has no llama-cpp-python,
   and its default build is a CPU one).
2. While each comparison runs, `nvidia-smi` is sampled every 100 ms: the GPU memory it reports in use and the
   energy it integrates from the board's power draw sit beside the arena's own figures for the same run (the
   records' peak reserved memory and NVML energy).

Written to results/gpu-check/gpu_check.json, with every record and the samples' summary. Exits 2 where no CUDA
device is visible (nothing to check), 1 where a variant that should run failed.

Not here: the emulated ZeroGPU mode runs its worker on the CPU by design (CUDA started in the server cannot be used
in a worker forked from it; docs/zerogpu.md), and ZeroGPU itself is checked by `make zerogpu-check` up to the
worker's CUDA start.

It runs in the Space's environment (.space-venv, the one `make space-check` installs: requirements.txt with the torch
ZeroGPU would get, a CUDA build, torch 2.11.0+cu130, which needs an NVIDIA driver of the R580 series or later), not in
the developer's (whose torch is a CPU build). `make gpu-check` installs that environment first if it is missing,
which needs the package index once; the check itself needs no network.

    python benchmarks/gpu_check.py [--out DIR] [--shapes 1b,8b] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PROMPT = "Explain in two sentences what quantization does to a neural network."
FAMILIES = [  # (suffix, method, dtype, settings): the default profile's families that need no calibration
    ("bf16", "bf16", None, {}),
    ("fp16", "fp16", None, {}),
    ("bnb-int8", "bnb-int8", None, {}),
    ("bnb-nf4", "bnb-4bit", None, {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                                   "bnb_4bit_compute_dtype": "bfloat16"}),
    ("bnb-fp4", "bnb-4bit", None, {"bnb_4bit_quant_type": "fp4", "bnb_4bit_compute_dtype": "bfloat16"}),
    ("torchao-int8", "torchao", "bfloat16", {"scheme": "int8_weight_only"}),
    ("torchao-int4", "torchao", "bfloat16", {"scheme": "int4_weight_only", "group_size": 64}),  # divides 576
    ("torchao-fp8", "torchao", "bfloat16", {"scheme": "float8_weight_only"}),
    ("hqq-4bit", "hqq", "bfloat16", {"nbits": 4, "group_size": 64, "axis": 1}),
]
SHAPES = {"1b": ("llama-1b-random", "llama-3.2-1b"), "8b": ("llama-8b-random", "llama-3.1-8b")}
TIMEOUT_S = {"135m": 150, "1b": 150, "8b": 240}


def cuda_device() -> str | None:
    """The GPU's name, asked in a process of its own so that this one holds no CUDA context (nvidia-smi's memory
    figures would count it)."""
    probe = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    done = subprocess.run([sys.executable, "-c", probe], text=True, capture_output=True)
    return done.stdout.strip() or None


def models_file(folder: Path, shapes: list[str]) -> tuple[Path, dict[str, list[str]]]:
    """A profile with the bundled base and the synthetic shapes asked for, each with every family."""
    default = yaml.safe_load((REPO / "models.yaml").read_text())
    bases = {"smollm2": {**default["bases"]["smollm2"], "baseline": "smollm2/bf16"}}
    for shape in shapes:
        if shape in SHAPES:
            name, synthetic = SHAPES[shape]
            bases[name] = {"label": f"{synthetic} shape, random weights",
                           "source": {"kind": "synthetic", "shape": synthetic, "seed": 0}}
    ids: dict[str, list[str]] = {}
    variants = []
    for base in bases:
        ids[base] = []
        for suffix, method, dtype, settings in FAMILIES:
            variant = {"id": f"{base}/{suffix}", "base": base, "method": method, "label": suffix}
            if dtype:
                variant["dtype"] = dtype
            if settings:
                variant["settings"] = settings
            variants.append(variant)
            ids[base].append(variant["id"])
    path = folder / "models.gpu-check.yaml"
    path.write_text(yaml.safe_dump({"memory_budget_mib": "auto", "limits": {"max_variants": len(FAMILIES),
                                    "max_new_tokens": 256}, "bases": bases, "variants": variants}))
    return path, ids


class Smi:
    """nvidia-smi sampled every 100 ms: the most memory in use and the energy integrated from the power draw."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []  # (time s, memory used MiB, power W)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        command = ["nvidia-smi", "--query-gpu=memory.used,power.draw", "--format=csv,noheader,nounits", "-i", "0",
                   "-lms", "100"]
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as smi:
            for line in smi.stdout:
                if self._stop.is_set():
                    smi.terminate()
                    break
                try:
                    used, power = (float(x) for x in line.split(","))
                except ValueError:
                    continue
                self.samples.append((time.monotonic(), used, power))

    def __enter__(self) -> "Smi":
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict:
        if len(self.samples) < 2:
            return {"samples": len(self.samples)}
        energy = sum((b[0] - a[0]) * (a[2] + b[2]) / 2 for a, b in zip(self.samples, self.samples[1:]))
        return {"samples": len(self.samples), "memory_used_max_mib": max(s[1] for s in self.samples),
                "memory_used_min_mib": min(s[1] for s in self.samples), "energy_joules": round(energy, 1),
                "seconds": round(self.samples[-1][0] - self.samples[0][0], 2)}


def compare(models: Path, variants: list[str], max_new_tokens: int, timeout_s: float) -> tuple[list[dict], dict]:
    command = [sys.executable, "-m", "demo", "compare", "--models", str(models), "--variants", ",".join(variants),
               "--prompt", PROMPT, "--max-new-tokens", str(max_new_tokens), "--json"]
    with Smi() as smi:
        try:
            done = subprocess.run(command, cwd=REPO, text=True, capture_output=True, timeout=timeout_s,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
        except subprocess.TimeoutExpired:
            return [{"variant": v, "status": "timeout", "error": f"no answer within {timeout_s} s"}
                    for v in variants], smi.summary()
    if done.returncode != 0:
        return [{"variant": v, "status": "error", "error": done.stderr[-1000:]} for v in variants], smi.summary()
    return json.loads(done.stdout[done.stdout.index("["):]), smi.summary()  # the records, after any banner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "gpu-check")
    parser.add_argument("--shapes", default="1b,8b", help="synthetic shapes beside the bundled model")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    device = cuda_device()
    if device is None:
        import torch

        print(f"gpu-check: no CUDA device is visible here (torch {torch.__version__}, CUDA {torch.version.cuda}): "
              "nothing to check; run it on a machine with an NVIDIA GPU and a driver that supports that CUDA")
        return 2
    shapes = [s for s in args.shapes.split(",") if s]
    started, report, failed = time.monotonic(), {"device": device, "runs": []}, []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        models, ids = models_file(Path(folder), shapes)
        for shape, (base, variants) in zip(["135m", *[s for s in shapes if s in SHAPES]], ids.items()):
            print(f"gpu-check: {base} ({len(variants)} variants)", flush=True)
            records, smi = compare(models, variants, args.max_new_tokens, TIMEOUT_S[shape])
            for r in records:
                figures = {k: r.get(k) for k in ("status", "device", "kernel", "decode_tokens_per_s", "weights_mib",
                                                 "peak_memory_mib", "peak_reserved_mib", "energy_joules")}
                print(f"  {r['variant']}: {figures}" + (f" {r.get('error')}" if r.get("error") else ""), flush=True)
                if r.get("status") != "done" and "llama-cpp-python" not in (r.get("error") or ""):
                    failed.append(r["variant"])
            arena_energy = sum(r.get("energy_joules") or 0 for r in records)
            print(f"  nvidia-smi: {smi}; the records' energy adds up to {arena_energy:.1f} J", flush=True)
            report["runs"].append({"base": base, "records": records, "nvidia_smi": smi,
                                   "records_energy_joules": arena_energy})
    report["seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"gpu-check: {report['seconds']} s on {device}; {len(failed)} failed: {failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
