"""Byte-level BPE with HF ``tokenizers``, saved as a folder ``AutoTokenizer`` loads.

Byte-level with no normalizer so that decode(encode(x)) == x for any UTF-8 text: the
later stages (SFT, reward, serving) must never see text the tokenizer altered. The
chat roles are special tokens and the chat template lives in the folder, so every
stage after pretraining formats conversations the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from stages.core.digests import sha256_file

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
ROLES = ("system", "user", "assistant")
END_OF_TURN = "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, *(f"<|{role}|>" for role in ROLES), END_OF_TURN]

# One turn = role token, newline, content, end-of-turn token; generation starts after
# "<|assistant|>\n" and stops at <|end|> (or <|end_of_text|>).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_hf_folder(tokenizer, folder: Path, model_max_length: int) -> Path:
    """Wrap in ``PreTrainedTokenizerFast`` with the special tokens and chat template; save."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=None,
        additional_special_tokens=[f"<|{role}|>" for role in ROLES] + [END_OF_TURN],
        model_max_length=model_max_length, clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(folder))
    return folder


def load_fast(folder: Path):
    """The raw ``tokenizers.Tokenizer`` of a folder (what the Ray actors encode with)."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no tokenizer.json (a Hugging Face fast tokenizer folder is needed)")
    return Tokenizer.from_file(str(path))


def special_ids(folder: Path) -> dict[str, int]:
    """eos/pad ids of a folder, from its own config (an existing tokenizer may name them differently)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {folder} has no eos token; packing needs one between documents")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return {"eos": int(tok.eos_token_id), "pad": int(pad), "vocab_size": len(tok)}


def tokenizer_digest(folder: Path) -> str:
    return sha256_file(Path(folder) / "tokenizer.json")
