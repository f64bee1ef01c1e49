"""What every runtime needs to generate alike: the settings, the prompt's token ids, and the answer's text.

A leaf: it imports nothing of the package, so every part may use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GenerationSettings:
    """The same settings go to every variant; greedy unless do_sample with an explicit seed."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None

    def describe(self) -> dict[str, Any]:
        """The settings as recorded with results: sampling parameters only where they apply."""
        if not self.do_sample:
            return {"decoding": "greedy", "max_new_tokens": self.max_new_tokens}
        return {"decoding": "sample", "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed}


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids for a prompt, through the chat template when the model has one.

    Always the base model's own tokenizer, whatever runtime runs the variant, so every variant gets
    exactly the same ids and the baseline's answer can be teacher-forced through any of them.
    """
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    return [int(i) for i in ids]


def decode_whole(tokenizer, token_ids: list[int]) -> str:
    """The text of token_ids without a trailing partial character.

    A character split across tokens (an emoji, say) decodes to U+FFFD until its last token arrives;
    an answer cut there must not end in a broken character, so the incomplete tail is left out.
    """
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    for drop in range(1, min(4, len(token_ids)) + 1):  # a UTF-8 character spans at most 4 byte tokens
        if not text.endswith("\ufffd"):
            break
        text = tokenizer.decode(token_ids[:-drop], skip_special_tokens=True)
    return text
