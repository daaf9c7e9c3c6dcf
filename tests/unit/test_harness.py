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


@pytest.fixture(scope="module")
def humaneval_problems():
    from stages.alignment.humaneval import PACKAGE_FILE, load_problems
    from tests.conftest import DATA_DIR

    return load_problems(DATA_DIR / "raw" / PACKAGE_FILE)


def test_humaneval_runs_each_problems_tests_on_the_completion(humaneval_problems):
    """The canonical solutions pass; a wrong body, code that never ends and code that eats memory fail, with why."""
    from stages.alignment.humaneval import passes

    assert len(humaneval_problems) == 164
    for problem in humaneval_problems[:6]:
        assert passes(problem, problem["canonical_solution"]) == (True, ""), problem["task_id"]
    first = humaneval_problems[0]
    assert passes(first, "    return not True\n") == (False, "AssertionError")
    assert passes(first, "    while True:\n        pass\n", timeout_s=2) == (False, "timed out")
    ok, why = passes(first, "    x = bytearray(4 << 30)\n")
    assert not ok and "MemoryError" in why


def test_the_humaneval_task_is_scored_by_running_the_tests(tiny, tmp_path, humaneval_problems):
    """The task's scorer, as lm-eval imports it from the task folder, passes the canonical solution and fails
    another body; the task runs end to end on a model (a random one solves nothing)."""
    import importlib.util

    problems = humaneval_problems[:2]
    name = harness.write_humaneval_task(tmp_path / "tasks", problems, max_gen_toks=16)
    spec = importlib.util.spec_from_file_location("he_utils", tmp_path / "tasks" / "lmforge_humaneval.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    assert utils.process_results(problems[0], [problems[0]["canonical_solution"]]) == {"pass_at_1": 1.0}
    assert utils.process_results(problems[0], ["    return 0\n"]) == {"pass_at_1": 0.0}
    figures = harness.evaluate(tiny[0], tmp_path / "tasks", [name], batch_size=2)
    assert figures["humaneval.pass_at_1"] == 0.0
