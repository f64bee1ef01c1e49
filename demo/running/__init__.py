"""How work is executed: the one device thread, streaming off it, turns and admission, the model manager,
and the runner that streams a comparison (with fidelity scoring of its answers).

Imports backends, config, measuring, settings, errors; never blind or ui, and never gradio.
"""
