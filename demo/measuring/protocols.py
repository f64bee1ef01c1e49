"""The evaluation protocols: which token ids each forward pass is fed, and which of its positions are scored.

A protocol turns token ids into Pieces; every model sees the same pieces, so the per-position figures of
a variant and of its baseline line up. Pure index arithmetic, no model.
- sliding: windows of WINDOW tokens moved by STRIDE; each window scores only the tokens not scored before.
- llamacpp: llama.cpp's `perplexity` / `--kl-divergence` (tools/perplexity/perplexity.cpp): the text
  tokenized once, cut into non-overlapping chunks of n_ctx tokens (the tail shorter than n_ctx dropped, at
  least 2 chunks needed), the first token of each chunk overwritten with BOS, and only the positions from
  n_ctx/2 on scored: n_ctx - 1 - n_ctx/2 predictions per chunk.
- trace (answer): a prompt followed by an answer, scored on the answer tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

from demo.errors import InvalidRequest

WINDOW, STRIDE = 512, 256
LLAMACPP_CTX = 512  # llama.cpp's default n_ctx for perplexity
MIN_CTX = 8  # a chunk shorter than this scores next to nothing


@dataclass(frozen=True)
class Piece:
    """One forward pass: logits row first_row + i predicts targets[i]."""

    ids: list[int]
    first_row: int
    targets: list[int]

    @property
    def rows(self) -> slice:
        return slice(self.first_row, self.first_row + len(self.targets))


def windows(n_tokens: int, window: int = WINDOW, stride: int = STRIDE):
    """(begin, end, first_scored) per window; tokens first_scored..end-1 are scored in it."""
    previous_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        yield begin, end, max(previous_end, begin + 1)  # token 0 has no prediction
        previous_end = end
        if end == n_tokens:
            return


def sliding(ids: list[int], window: int = WINDOW, stride: int = STRIDE) -> list[Piece]:
    """Every token after the first scored once, each with at least window - stride tokens of context
    (past the first window)."""
    return [Piece(ids[begin:end], first - 1 - begin, ids[first:end]) for begin, end, first in
            windows(len(ids), window, stride)]


def llamacpp(ids: list[int], n_ctx: int, bos_id: int | None) -> list[Piece]:
    """llama.cpp's chunks: BOS in place of each chunk's first token, the second half scored."""
    if bos_id is None:
        raise InvalidRequest("the llamacpp protocol puts BOS first in each chunk, and this tokenizer has no "
                             "bos_token: use --protocol sliding")
    if n_ctx < MIN_CTX:
        raise InvalidRequest(f"--ctx must be at least {MIN_CTX} tokens, got {n_ctx}")
    if len(ids) < 2 * n_ctx:
        raise InvalidRequest(f"the llamacpp protocol needs at least {2 * n_ctx} tokens for a context of {n_ctx} "
                             f"(as llama.cpp does); the text has {len(ids)}")
    first = n_ctx // 2
    pieces = []
    for start in range(0, len(ids) - n_ctx + 1, n_ctx):
        chunk = [bos_id, *ids[start + 1:start + n_ctx]]
        pieces.append(Piece(chunk, first, chunk[first + 1:]))  # row j predicts token j + 1, j in first..n_ctx-2
    return pieces


def answer(prompt_ids: list[int], answer_ids: list[int]) -> Piece:
    """The prompt and answer in one pass, the answer's tokens scored."""
    if not prompt_ids:
        raise InvalidRequest("a trace prompt has no tokens")
    return Piece([*prompt_ids, *answer_ids], len(prompt_ids) - 1, list(answer_ids))
