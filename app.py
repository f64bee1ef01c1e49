"""Quantization Arena: build the app from a models file and serve it (port from $GRADIO_SERVER_PORT)."""

import argparse
import logging
import sys

import os

if os.environ.get("ARENA_ZEROGPU_EMULATE") == "1":  # the emulation runs on the CPU: CUDA started in the server
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # could not be used in the worker it forks (see docs/zerogpu.md)

SPACES_FAILED: str | None = None  # why `import spaces` failed other than by being absent, or None
try:  # first, before torch: on ZeroGPU the package patches torch's CUDA as it is imported
    import spaces  # noqa: F401
except ImportError:  # outside a Space it is optional: only ZeroGPU mode needs it
    pass
except Exception as exc:  # it imported and failed: with SPACES_ZERO_GPU set on a CPU build of torch, it reads
    SPACES_FAILED = f"{type(exc).__name__}: {exc}"  # torch.version.cuda, which is None there (AttributeError)

from demo.config import load_config, on_zerogpu
from demo.errors import ConfigError, ZeroGpuError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", help="models file (default: $ARENA_MODELS, else models.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if SPACES_FAILED is not None and not spaces_failure_allowed(SPACES_FAILED):
        return 1
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


def spaces_failure_allowed(reason: str) -> bool:
    """The `spaces` package failed as it was imported. On ZeroGPU (SPACES_ZERO_GPU set) nothing can run without
    it: say why, and False. Elsewhere ZeroGPU mode is off anyway: say so, and True."""
    if not on_zerogpu():
        logging.getLogger("app").warning("the `spaces` package failed to import (%s); ZeroGPU mode is off", reason)
        return True
    try:
        import torch

        cpu_build = torch.version.cuda is None
    except Exception:
        cpu_build = False
    hint = (" This torch is a CPU build (torch.version.cuda is None): ZeroGPU needs a CUDA build of a torch version "
            "it supports (see docs/zerogpu.md)." if cpu_build else "")
    print(f"error: SPACES_ZERO_GPU is set, but the `spaces` package failed to start: {reason}.{hint}", file=sys.stderr)
    return False


if __name__ == "__main__":
    sys.exit(main())
