# The two commands (see README.md). Each creates or reuses .venv first.
.PHONY: demo test test-unit lint bench venv

venv:
	@./scripts/bootstrap.sh

demo: venv
	.venv/bin/raylens demo

lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: venv lint
	.venv/bin/python -m pytest tests

test-unit: venv
	.venv/bin/python -m pytest tests/unit

bench: venv
	.venv/bin/raylens bench all --json benchmarks/results/all.json
