"""The comparison card: JSON, CSV and Markdown from real records."""

import csv
import json

from demo import card


def test_card_files(arena, tmp_path):
    records = arena.compare_records("What is the capital of France?\nAnswer briefly.",
                                    ["smollm2/fp32", "smollm2/bnb-nf4"], arena.settings(max_new_tokens=12))
    paths = card.write(records, tmp_path)
    doc = json.loads(paths["json"].read_text())
    assert doc["prompt"].startswith("What is the capital") and doc["settings"]["decoding"] == "greedy"
    assert doc["environment"]["torch"] and [v["variant"] for v in doc["variants"]] == ["smollm2/fp32", "smollm2/bnb-nf4"]
    assert doc["variants"][1]["fidelity"]["baseline"] == "smollm2/fp32"
    assert doc["variants"][1]["quantization"]["bnb_4bit_quant_type"] == "nf4"
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["smollm2/fp32", "smollm2/bnb-nf4"]
    assert rows[1]["kl_divergence"] and json.loads(rows[1]["quantization"])["bnb_4bit_use_double_quant"] is True
    md = paths["markdown"].read_text()
    for expected in ("## Quantization Arena comparison", "> What is the capital of France?", "> Answer briefly.",
                     "| `smollm2/bnb-nf4` | 4 |", "bnb_4bit_quant_type=nf4", "**Conditions.**", "torch 2.",
                     "Peak memory = weights + process RSS growth", "KL "):
        assert expected in md, expected
    assert "None" not in md
