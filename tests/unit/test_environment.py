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
