"""A LoRA SFT run (`lmforge stage sft`, Ray Train + DeepSpeed) killed with SIGKILL after its first
checkpoint resumes from it on the same loss curve, and saves the same adapter-merged model kind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import DATA_DIR, LMFORGE, REPO, make_tiny_model, run_cli

pytestmark = pytest.mark.integration

SMALL = {"sft.lora.r": 4, "sft.lora.dropout": 0.0, "sft.max_steps": 9, "sft.checkpoint_every": 3,
         "sft.global_batch_size": 4, "sft.micro_batch_size": 4, "sft.max_seq_len": 64, "sft.eval_every": 100,
         "sft.log_every": 1, "sft.optim.warmup_steps": 1, "sft.eval_generation.max_new_tokens": 4,
         "sft.distributed.cpus_per_worker": 1, "sft.distributed.zero_stage": 0}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A small random Llama with lmforge's BPE and chat template, and checkable rows in that template."""
    from transformers import AutoTokenizer

    base = tmp_path_factory.mktemp("sft-resume")
    model = make_tiny_model(base / "model")
    tok = AutoTokenizer.from_pretrained(str(model))
    sentences = ["apt installs packages from the archive", "the shell reads one command per line",
                 "a kernel schedules the tasks it runs", "dpkg unpacks each archive it is given",
                 "cron runs the jobs of every user", "grep prints the lines that match"]
    rows = []
    for k, sentence in enumerate(sentences * 4):
        prompt = f"How many words are in: {sentence}"
        rows.append({"id": f"r{k}", "family": "count_words", "source_id": f"s{k % 6}", "prompt": prompt,
                     "answer": str(len(sentence.split())),
                     "prompt_text": tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                            add_generation_prompt=True),
                     "response_text": f"{len(sentence.split())}<|end|>"})
    (base / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (base / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    return {"model": model, "train": base / "train.jsonl", "heldout": base / "heldout.jsonl"}


def _args(inputs: dict[str, Path], out: Path) -> list[str]:
    args = ["stage", "sft", "--output", str(out)] + [a for name, path in inputs.items()
                                                     for a in ("--input", f"{name}={path}")]
    for key, value in SMALL.items():
        args += ["--set", f"{key}={value}"]
    return args


def _env(home: Path) -> dict[str, str]:
    return {"LMFORGE_HOME": str(home), "LMFORGE_DATA_DIR": str(DATA_DIR)}


def _losses(out: Path) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in _log(out) if "loss" in h}


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_a_killed_lora_run_resumes_from_its_checkpoint_on_the_same_curve(inputs, tmp_path):
    from stages.pretrain.stage import latest_checkpoint

    undisturbed = tmp_path / "a"
    run_cli(_args(inputs, undisturbed), env=_env(tmp_path / "home-a"))
    reference = _losses(undisturbed)
    assert sorted(reference) == list(range(1, 10))

    home_b, out_b = tmp_path / "home-b", tmp_path / "b"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([LMFORGE, *_args(inputs, out_b)], env={**os.environ, **_env(home_b)}, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline, found = time.time() + 300, None
        while time.time() < deadline and proc.poll() is None:
            runs = list((home_b / "train").glob("sft-*"))
            found = latest_checkpoint(runs[0], 1) if runs else None
            if found is not None and not json.loads((Path(found) / "lmforge_checkpoint.json").read_text())["final"]:
                break  # a mid-run state, not the finished model
            found = None
            time.sleep(0.1)
        assert found is not None, (tmp_path / "killed.log").read_text()[-3000:]
        # the whole machine goes: the CLI and the Ray it started (its Train worker, in a session of Ray's own,
        # would otherwise go on to write the final checkpoint before it notices)
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out_b.exists()

    run_cli(_args(inputs, out_b), env=_env(home_b))
    log_b = _log(out_b)
    resumed = [h for h in log_b if h.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] in (3, 6), log_b
    first_after = next(h for h in log_b[log_b.index(resumed[0]):] if "loss" in h)
    assert first_after["step"] == resumed[0]["step"] + 1
    assert abs(first_after["loss"] - reference[first_after["step"]]) < 1e-3, (first_after, reference)
    assert abs(_losses(out_b)[9] - reference[9]) < 1e-3, (_losses(out_b), reference)
    assert (out_b / "adapter" / "adapter_config.json").is_file() and (out_b / "model" / "model.safetensors").is_file()
    assert not list((home_b / "train").glob("sft-*"))  # finished: its checkpoints are gone
