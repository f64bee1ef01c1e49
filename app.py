"""Quantization Arena: build the app from a models file and serve it (port from $GRADIO_SERVER_PORT)."""

import argparse
import logging
import sys

from demo.config import load_config
from demo.errors import ConfigError


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
    from demo.running.runner import Arena

    arena = Arena(config)
    arena.environment()  # measures the machine's memory bandwidth now, before any run can be timed beside it
    demo = ui.build_demo(arena)
    demo.queue().launch(**ui.launch_kwargs())
    return 0


if __name__ == "__main__":
    sys.exit(main())
