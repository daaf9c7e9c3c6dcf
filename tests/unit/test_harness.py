"""lm-evaluation-harness on lmforge's own held-out data: the generation tasks score the model's greedy answers
with align_data's checkers (the same answers lmforge's own generation gives), and the perplexity task reads
held-out documents."""

from __future__ import annotations

import math

import pytest

from stages.alignment import harness
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from stages.alignment.generate import load_policy

    folder = make_tiny_model(tmp_path_factory.mktemp("harness") / "model")
    model, tokenizer = load_policy(folder)
    return folder, model, tokenizer


def test_the_checker_tasks_score_the_models_own_greedy_answers(tiny, tmp_path):
    from stages.alignment.generate import generate
    from stages.tokenize.chat import end_of_turn

    folder, model, tokenizer = tiny
    sentences = ["apt installs packages", "the shell reads commands", "a kernel schedules tasks",
                 "dpkg unpacks archives", "cron runs jobs", "grep finds lines"]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Reverse the order of the words: {s}"}],
                                             tokenize=False, add_generation_prompt=True) for s in sentences]
    ours = generate(model, tokenizer, prompts, max_new_tokens=6, batch_size=6)
    # the first three rows' reference is exactly what the model says (a pass), the last three's is not
    rows = [{"id": f"r{k}", "family": "reverse_words", "source_id": f"s{k}", "prompt": s, "prompt_text": p,
             "answer": g.text if k < 3 else "no model says this", "response_text": ""}
            for k, (s, p, g) in enumerate(zip(sentences, prompts, ours))]
    documents = ["Debian is a free operating system. " * 6, "The kernel schedules every process it runs. " * 4]
    tasks = harness.write_tasks(tmp_path / "tasks", rows, documents, end_of_turn(tokenizer), max_gen_toks=6)
    assert tasks == ["lmforge_reverse_words", harness.PPL_TASK]
    figures = harness.evaluate(folder, tmp_path / "tasks", tasks, batch_size=4)
    assert figures["reverse_words.pass"] == pytest.approx(0.5)
    assert figures["heldout_ppl.bits_per_byte"] > 0 and math.isfinite(figures["heldout_ppl.word_perplexity"])
    assert figures["heldout_ppl.byte_perplexity"] == pytest.approx(2 ** figures["heldout_ppl.bits_per_byte"], rel=1e-6)
