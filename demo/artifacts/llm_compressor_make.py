"""Run by the llm-compressor environment's own Python (`make llm-compressor`), never imported by the arena: it needs
llm-compressor, which pins a transformers older than the arena's, so it lives in a virtual environment of its own.

    python llm_compressor_make.py SOURCE OUT SCHEME GROUP_SIZE

Quantizes the transformers checkpoint at SOURCE with llm-compressor's QuantizationModifier (data-free: weights
rounded to the nearest grid point, W8A8's activations quantized per token at run time) and saves it compressed
(compressed-tensors format) in OUT. Prints one JSON line: the settings and the library versions.
"""

import json
import sys
import time


def modifier(scheme: str, group_size: int):
    from llmcompressor.modifiers.quantization import QuantizationModifier

    if scheme == "W4A16":  # the preset's group of 128 divides no width of a 576-wide model: the group is given
        weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": group_size}
        return QuantizationModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
                                    ignore=["lm_head"])
    return QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"])  # W8A8: int8, per channel / token


def main(source: str, out: str, scheme: str, group_size: str) -> None:
    import importlib.metadata

    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    oneshot(model=model, recipe=modifier(scheme, int(group_size)))
    model.save_pretrained(out, save_compressed=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    versions = {name: importlib.metadata.version(name) for name in ("llmcompressor", "compressed-tensors", "transformers")}
    print(json.dumps({"scheme": scheme, "group_size": int(group_size), "seconds": round(time.perf_counter() - started, 1),
                      "versions": versions}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
