"""python -m demo.quantize: quantize a base model from models.yaml and save a checkpoint transformers loads.

GPTQ goes through transformers' GPTQConfig (optimum + gptqmodel), calibrated on assets/calibration.txt;
AWQ through gptqmodel itself, on the same text; bitsandbytes methods are saved with bitsandbytes
serialization; GGUF files with llama.cpp's own quantizer. Each checkpoint is written to a staging folder
and renamed into place only once complete (demo.artifacts.quantize does the work).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from demo.artifacts.quantize import (CALIBRATION_FILE, CLI_METHODS, GPTQ_BITS, QuantizeError, quantize,
                                     quantize_gguf_file, quantize_variant, settings_for)
from demo.config import BaseModel, load_config
from demo.errors import ArenaError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m demo.quantize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    parser.add_argument("--variant", action="append",
                        help="make the cached checkpoint of this models.yaml GPTQ, AWQ or GGUF variant (repeatable)")
    parser.add_argument("--base", help="base model id from the models file, e.g. smollm2")
    parser.add_argument("--method", choices=sorted([*CLI_METHODS, "gguf"]), help="quantization method")
    parser.add_argument("--type", dest="gguf_type", help="GGUF type for --method gguf, e.g. Q8_0, Q4_K_M, Q2_K")
    parser.add_argument("--bits", type=int, help=f"GPTQ bits: {', '.join(map(str, GPTQ_BITS))} (default 4)")
    parser.add_argument("--group-size", type=int, default=128, help="GPTQ / AWQ group size (default 128)")
    parser.add_argument("--calibration", type=Path, default=CALIBRATION_FILE, help="GPTQ / AWQ calibration text file")
    parser.add_argument("--out", type=Path, help="output folder (must not exist, or be empty)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.models)
        if args.variant:
            for variant_id in args.variant:
                out = quantize_variant(config, variant_id)
                print(f"{variant_id}: checkpoint ready in {out}")
            return 0
        if not (args.base and args.method and args.out):
            raise QuantizeError("give --variant ID, or --base, --method and --out")
        if args.base not in config.bases:
            raise QuantizeError(f"unknown base '{args.base}'; bases: {', '.join(config.bases)}")
        if args.method == "gguf":
            return _gguf_main(config.bases[args.base], args.gguf_type, args.out)
        if not args.calibration.is_file():
            raise QuantizeError(f"calibration file '{args.calibration}' not found")
        method, settings = settings_for(args.method, args.bits, args.group_size)
        metadata = quantize(config.bases[args.base], method, settings, args.out, args.calibration)
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"saved {args.out}: {metadata['size_on_disk_mib']} MiB in {metadata['wall_time_s']} s")
    return 0


def _gguf_main(base: BaseModel, gguf_type: str | None, out: Path) -> int:
    from demo.config import GGUF_TYPES

    if gguf_type not in GGUF_TYPES:
        raise QuantizeError(f"--method gguf needs --type, one of {', '.join(GGUF_TYPES)}")
    made = quantize_gguf_file(base, gguf_type, out)
    stored = made["stored"]
    print(f"saved {out}: {made['size_on_disk_mib']} MiB in {made['wall_time_s']} s; {made['made_from']}")
    print(f"stored: {stored['weights_bits_per_weight']} bits per weight; tensor types "
          + ", ".join(f"{t} x{n}" for t, n in stored["tensor_types"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
