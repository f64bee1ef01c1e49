"""The Gradio page: page.py builds the Blocks (tabs, System panel); one module per tab, thin handlers.

The only part that imports gradio. Imports evaluate, blind, running, artifacts, config, measuring, reports, settings
and errors.
"""

from demo.ui.page import build_demo, launch_kwargs

__all__ = ["build_demo", "launch_kwargs"]
