# The two commands (see README.md). Each creates or reuses .venv first.
.PHONY: demo test test-unit lint bench venv

venv:
	@./scripts/bootstrap.sh

demo: venv
	.venv/bin/raylens demo

lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# pytest's testpaths (pyproject.toml): tests/ and the docstring examples of the three source roots
test: venv lint
	.venv/bin/python -m pytest

# everything but the Ray tests (unit tests + docstring examples)
test-unit: venv
	.venv/bin/python -m pytest -m "not ray"

bench: venv
	.venv/bin/raylens bench all --json benchmarks/results/all.json
