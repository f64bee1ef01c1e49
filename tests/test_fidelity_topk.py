"""Top-k fidelity when an engine keys its log-probabilities by token text and two tokens read the same."""

import torch

from demo.backends.remote import _EngineTexts
from demo.measuring.fidelity_topk import known_by_id, position_kl

# ids 0 and 2 read "a"; 3 and 4 are special tokens, which engines write as ""; the rest are unique.
TEXTS = ["a", "b", "a", "", "", "c", "d", "e", "f", "g"]
K = 6


class _HandBuiltTokenizer:
    """Just what _EngineTexts reads of a tokenizer: its size and each id's text."""

    def __len__(self):
        return len(TEXTS)

    def batch_decode(self, ids, skip_special_tokens=True):
        return [TEXTS[i] for [i] in ids]


def _engine_table(q_log: torch.Tensor) -> dict[str, float]:
    """llama-cpp-python's top_logprobs: the top k by text, best first, so a later colliding text wins."""
    order = q_log.argsort(descending=True)[:K].tolist()
    return {TEXTS[i]: float(q_log[i]) for i in order}


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> float:
    return float((p_log.exp() * (p_log - q_log)).sum())


def _draws(count: int = 300):
    generator = torch.Generator().manual_seed(0)
    for _ in range(count):
        scale = float(torch.rand((), generator=generator)) * 4
        p = torch.log_softmax(torch.randn(len(TEXTS), generator=generator, dtype=torch.float64) * scale, -1)
        q = torch.log_softmax(p + torch.randn(len(TEXTS), generator=generator, dtype=torch.float64) * scale, -1)
        yield p, q


def test_colliding_texts_map_to_no_id_and_unique_ones_to_theirs():
    texts = _EngineTexts(_HandBuiltTokenizer())
    assert texts.ids["a"] is None and texts.ids[""] is None and texts.ids["b"] == 1 and texts.ids["g"] == 9
    q = torch.log_softmax(torch.tensor([5.0, 4.0, 4.5, 3.0, 3.5, 2.0, 1.0, 0.0, -1.0, -2.0]), -1)
    table = _engine_table(q)
    assert set(table) == {"a", "b", "", "c"}  # six tokens, four texts
    assert table["a"] == float(q[2]) and table[""] == float(q[3])  # one colliding token's value, not the text's mass
    assert known_by_id(table, texts.ids) == {1: float(q[1]), 5: float(q[5])}


def test_the_kl_stays_a_lower_bound_when_texts_collide():
    ids_by_text = _EngineTexts(_HandBuiltTokenizer()).ids
    for p, q in _draws():
        bound = position_kl(p, known_by_id(_engine_table(q), ids_by_text))
        assert 0.0 <= bound <= _kl(p, q) + 1e-9


def test_crediting_a_colliding_text_to_its_ids_would_break_the_bound():
    """Why colliding texts go to the rest bucket: giving their value to one id, or to each, overshoots."""
    to_first = {"a": 0, "b": 1, "": 3, "c": 5, "d": 6, "e": 7, "f": 8, "g": 9}
    overshoots_first = overshoots_each = 0
    for p, q in _draws():
        table, true_kl = _engine_table(q), _kl(p, q)
        overshoots_first += position_kl(p, known_by_id(table, to_first)) > true_kl + 1e-9
        each = known_by_id(table, to_first) | ({2: table["a"]} if "a" in table else {})
        overshoots_each += position_kl(p, each) > true_kl + 1e-9
    assert overshoots_first > 0 and overshoots_each > 0
