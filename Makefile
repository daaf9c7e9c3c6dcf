# The two set-up commands of the README. Both install into .venv first (a no-op when
# nothing changed), then fetch the demo corpus (also a no-op the second time).
.PHONY: demo test setup lock

setup:
	bash infra/setup.sh

## the main job: the whole pipeline on pipelines/configs/demo.yaml
demo: setup
	.venv/bin/lmforge run --config pipelines/configs/demo.yaml

## the whole test suite (what CI runs): the linter, the browser and database the tests need, then pytest
test: setup
	.venv/bin/ruff check .
	bash infra/test_deps.sh
	.venv/bin/python -m pytest -ra --durations=25

## refresh requirements.lock from pyproject.toml in a scratch venv (maintainers only)
lock:
	bash infra/lock.sh
