"""Files on disk: where a base model's weights come from, the cache with its manifests, quantizing
(GPTQ, AWQ, bitsandbytes, GGUF) and what a GGUF file really stores.

Imports config, measuring, settings and errors; never backends, running, blind or ui.
"""
