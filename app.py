"""Quantization Arena: build the app from a models file and serve it (port from $GRADIO_SERVER_PORT)."""

import argparse
import logging
import sys

import os

if os.environ.get("ARENA_ZEROGPU_EMULATE") == "1":  # the emulation runs on the CPU: CUDA started in the server
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # could not be used in the worker it forks (see docs/zerogpu.md)

try:  # first, before torch: on ZeroGPU the package patches torch's CUDA as it is imported
    import spaces  # noqa: F401
except ImportError:  # outside a Space it is optional: only ZeroGPU mode needs it
    pass

from demo.config import load_config
from demo.errors import ConfigError, ZeroGpuError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.models)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from demo import ui  # torch and gradio are imported only once the config is known to be good
    from demo.running import zerogpu
    from demo.running.runner import Arena

    mode = zerogpu.mode()
    try:  # ZeroGPU: every variant placed now, in the main thread; a profile that does not fit stops here
        arena = zerogpu.ZeroGpuArena.start(config, mode) if mode else Arena(config)
    except ZeroGpuError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not mode:  # the machine's memory bandwidth, measured now, before any run can be timed beside it (under
        arena.environment()  # ZeroGPU the worker measures its own device)
    demo = ui.build_demo(arena)
    demo.queue().launch(**ui.launch_kwargs(demo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
