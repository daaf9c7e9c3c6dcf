"""The chat format of whichever tokenizer a model came with: which special token closes an
assistant turn (lmforge's own BPE ends one with ``<|end|>``, SmolLM2's with ``<|im_end|>``),
and so which token ids end a generated answer. Read from the tokenizer's chat template, so
align_data's training text and every generation stop agree with what the template renders.
"""

from __future__ import annotations

MARK = "lmforge-answer-mark"


def end_of_turn(tokenizer) -> str:
    """The special token the chat template writes right after an assistant's answer."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": MARK}],
                                         tokenize=False)
    after = text.split(MARK, 1)[1] if MARK in text else ""
    specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    found = sorted((t for t in specials if t and after.startswith(t)), key=len, reverse=True)
    if not found:
        raise ValueError(f"the chat template closes an assistant turn with {after[:20]!r}, not with a special token: "
                         f"answers need one to stop at")
    return found[0]


def stop_ids(tokenizer) -> list[int]:
    """Token ids that end an answer: the end of turn, then the end of text (once each)."""
    ids = [tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer)), tokenizer.eos_token_id]
    return list(dict.fromkeys(i for i in ids if i is not None))
