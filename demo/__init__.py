"""Quantization Arena: one prompt, several quantized variants of one LLM, side by side.

The parts, one folder each, and the direction imports flow between them (a part imports only the parts
to its right; tests/test_layout.py checks it):

    ui -> evaluate, flips, blind -> running -> backends -> artifacts -> config
    ui        the Gradio page: one module per tab, the System panel
    evaluate  the evaluation of variants on a text (python -m demo.evaluate; the Evaluate tab runs it)
    flips     answers that change against the baseline over a prompt set, with intervals (python -m demo.flips)
    blind     the blind test: battles, the votes store and its journal, ratings, rate limits, its CLI and chart
    running   how work is executed: the device thread, streaming, turns and admission, the model
              manager, the runner that streams a comparison, fidelity scoring of its answers
    backends  how a variant runs, one module per runtime behind one interface
    artifacts files on disk: where weights come from, the cache, quantizing, GGUF files
    config    models.yaml as validated dataclasses

measuring (trackers, metrics, fidelity, the environment record), reports (text, card, charts, escaping),
settings (generation settings and prompt ids) and errors are used from any part above and import
nothing above them. The command lines (__main__, quantize) sit on top of everything.
"""

__version__ = "0.1.0"
