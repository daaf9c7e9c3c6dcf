"""tokenize's core on small real inputs: BPE round trip, chat template, packing,
the shard format and its reader, splits and mixture, the document mask."""

from __future__ import annotations

import numpy as np
import pytest

from stages.tokenize import bpe
from stages.tokenize.mixture import copies, split_of
from stages.tokenize.packed import PackedDataset, PackedShard, ShardHeader, document_mask, segment_ids, write_shard
from stages.tokenize.packing import Packer
from tests.conftest import real_documents


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    docs = real_documents(["debian-handbook", "fortunes-ru", "fortunes-zh", "python-doc-rst"], max_files=6)
    return [d["text"] for d in docs]


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    tok = bpe.train_bpe(corpus, vocab_size=1000, min_frequency=2)
    bpe.save_hf_folder(tok, folder, model_max_length=128)
    return folder


def test_bpe_round_trip_on_real_multilingual_text(corpus, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    scripts = {"cyrillic": False, "han": False}
    for text in corpus[:200]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        scripts["cyrillic"] |= any("\u0400" <= c <= "\u04ff" for c in text)
        scripts["han"] |= any("\u4e00" <= c <= "\u9fff" for c in text)
    assert all(scripts.values()), scripts  # the sample really was multilingual
    odd = "tabs\tand  double  spaces\n\n  indented ünïcödé 🚀 \x00 end "
    assert tok.decode(tok.encode(odd, add_special_tokens=False)) == odd


def test_tokenizer_folder_has_special_tokens_and_chat_template(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert len(tok) == 1000
    assert tok.eos_token == bpe.EOS and tok.pad_token == bpe.PAD and tok.bos_token == bpe.BOS
    ids = bpe.special_ids(tokenizer_dir)
    assert ids["eos"] == tok.convert_tokens_to_ids(bpe.EOS) != ids["pad"]
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                                   tokenize=False, add_generation_prompt=False)
    assert text == "<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n"
    prompt_ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "keys"):
        prompt_ids = prompt_ids["input_ids"]
    # each role marker is one token, never split into pieces
    assert tok.convert_tokens_to_ids("<|user|>") in prompt_ids
    assert prompt_ids[-2] == tok.convert_tokens_to_ids("<|assistant|>")
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_packing_accounts_for_every_token_and_boundary():
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(10, 100, size=n), 2) for n in rng.integers(1, 40, size=50)]
    packer = Packer(seq_len=16)
    for d in docs:
        packer.add(d)
    packed = packer.finish()
    stream = np.concatenate(docs)
    assert packed.tokens.size % 16 == 0 and packed.tail.size < 16
    assert np.array_equal(np.concatenate([packed.tokens, packed.tail]), stream)
    ends = np.cumsum([d.size for d in docs])
    assert np.array_equal(np.concatenate([packed.doc_ends, packed.tail_doc_ends + packed.tokens.size]), ends)
    assert np.all(stream[ends - 1] == 2)  # every document ends in EOS

    # tails of several shards packed last, padded into one final row only
    last = Packer(seq_len=16)
    last.add_run(packed.tail, packed.tail_doc_ends)
    last.add_run(np.array([5, 6, 2]), np.array([3]))
    final = last.finish(pad_to_full_row=0)
    assert final.tokens.size == 16 and final.tail.size == 0
    real = packed.tail.size + 3
    assert np.all(final.tokens[real:] == 0) and np.array_equal(final.tokens[:real][-3:], [5, 6, 2])


def test_segment_ids_reset_positions_at_document_starts():
    doc_ends = np.array([3, 8, 9, 20])
    doc_ids, positions = segment_ids(doc_ends, start=2, length=8)  # tokens 2..9
    assert doc_ids.tolist() == [0, 1, 1, 1, 1, 1, 2, 3]
    assert positions.tolist() == [0, 0, 1, 2, 3, 4, 0, 0]


def test_document_mask_is_causal_and_block_diagonal():
    mask = document_mask(np.array([0, 0, 1, 1, 1]))
    expected = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], bool)
    assert np.array_equal(mask, expected)


def _header(rows, docs, real, split="train"):
    return ShardHeader(dtype="<u2", vocab_size=1000, seq_len=8, tokenizer_sha256="abc", num_sequences=rows,
                       num_documents=docs, real_tokens=real, pad_id=0, eos_id=2, split=split)


def test_shard_reader_round_trip_and_labels(tmp_path):
    tokens = np.arange(1, 17, dtype=np.int64)
    tokens[[4, 10]] = 2
    write_shard(tmp_path / "train-00000", tokens, np.array([5, 11, 16]), _header(2, 3, 16))
    tail = np.array([7, 8, 2, 0, 0, 0, 0, 0])
    write_shard(tmp_path / "train-tail", tail, np.array([3]), _header(1, 1, 3))
    shard = PackedShard(tmp_path / "train-00000")
    assert len(shard) == 2 and shard.tokens.dtype == np.uint16
    seq = shard.sequence(1)
    assert seq["input_ids"].tolist() == [9, 10, 2, 12, 13, 14, 15, 16]
    assert seq["position_ids"].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    data = PackedDataset(tmp_path, "train")
    assert len(data) == 3 and data.seq_len == 8
    batch = data.batch([0, 2])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["labels"][1].tolist() == [7, 8, 2, -100, -100, -100, -100, -100]
    assert batch["labels"][0].tolist() == tokens[:8].tolist()
    (tmp_path / "train-00000.idx").write_bytes(b"garbage!" + b"\0" * 8)
    with pytest.raises(ValueError, match="bad magic"):
        PackedShard(tmp_path / "train-00000")


def test_split_and_mixture_are_deterministic_and_disjoint():
    ids = [f"doc-{i}" for i in range(5000)]
    splits = [split_of(7, i, 0.1) for i in ids]
    assert splits == [split_of(7, i, 0.1) for i in ids]
    share = splits.count("val") / len(ids)
    assert 0.08 < share < 0.12
    assert splits != [split_of(8, i, 0.1) for i in ids]  # the seed matters
    assert sum(copies(7, i, 2.0) for i in ids) == 2 * len(ids)
    half = sum(copies(7, i, 0.5) for i in ids) / len(ids)
    assert 0.45 < half < 0.55
    assert sum(copies(7, i, 0.0) for i in ids) == 0
