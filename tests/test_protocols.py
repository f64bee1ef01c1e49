"""The protocols' chunking and BOS placement, on a tiny text with the bundled tokenizer (no model forward)."""

import pytest
from transformers import AutoTokenizer

from demo.artifacts import sources
from demo.errors import InvalidRequest
from demo.measuring import protocols
from demo.settings import prompt_ids
from tests.conftest import REPO

TEXT = (REPO / "assets" / "evaluation.txt").read_text()[:900]


@pytest.fixture(scope="module")
def tokenizer(default_config):
    base = next(iter(default_config.bases.values()))
    return AutoTokenizer.from_pretrained(sources.resolve(base).location)


def test_llamacpp_chunks_start_with_bos_and_score_their_second_half(tokenizer):
    ids = tokenizer(TEXT)["input_ids"]
    bos, n_ctx = tokenizer.bos_token_id, 32
    assert bos is not None and bos not in ids[:1]  # SmolLM2 adds no BOS itself: the protocol puts it there
    pieces = protocols.llamacpp(ids, n_ctx, bos)
    assert len(pieces) == len(ids) // n_ctx >= 2
    for i, piece in enumerate(pieces):
        start = i * n_ctx
        assert piece.ids == [bos, *ids[start + 1:start + n_ctx]]  # the chunk's first token overwritten, not shifted
        assert piece.first_row == n_ctx // 2 and len(piece.targets) == n_ctx - 1 - n_ctx // 2
        # row j predicts token j + 1 of the chunk: the text's own tokens start + 17 .. start + 31
        assert piece.targets == ids[start + n_ctx // 2 + 1:start + n_ctx]
        assert piece.rows == slice(16, 31)


def test_llamacpp_refuses_a_tokenizer_without_bos_and_a_short_text(tokenizer):
    ids = tokenizer(TEXT)["input_ids"]
    with pytest.raises(InvalidRequest, match="no bos_token"):
        protocols.llamacpp(ids, 32, None)
    with pytest.raises(InvalidRequest, match=f"needs at least {2 * 512} tokens"):
        protocols.llamacpp(ids, 512, tokenizer.bos_token_id)


def test_sliding_scores_every_token_after_the_first_once():
    ids = list(range(1300))
    pieces = protocols.sliding(ids)
    assert [t for p in pieces for t in p.targets] == ids[1:]
    for piece in pieces:
        assert len(piece.ids) <= protocols.WINDOW
        # row first_row + i predicts targets[i], the token right after it in the window
        assert [piece.ids[r + 1] for r in range(piece.rows.start, piece.rows.stop)] == piece.targets


def test_answer_scores_the_answer_tokens_only(tokenizer):
    prompt = prompt_ids(tokenizer, "Name the capital of France.")
    answer = tokenizer("Paris is the capital.", add_special_tokens=False)["input_ids"]
    piece = protocols.answer(prompt, answer)
    assert piece.ids == prompt + answer and piece.targets == answer
    assert piece.first_row == len(prompt) - 1  # the last prompt token predicts the answer's first
    assert tokenizer.decode(prompt).startswith("<|im_start|>")  # the chat template applied
