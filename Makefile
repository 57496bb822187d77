# The two commands of the README. Both create/refresh .venv first (idempotent; a no-op when up to date).
.PHONY: demo test play stack-start stack-stop stack-status lint

PY := .venv/bin/python
CONFIG ?= configs/tiny.yaml
PYTEST_ARGS ?=
# make play: the demo's registered model on the local stack (PLAY_MODEL=models:/vid2world-tiny/latest plays the
# newest version when none is champion); PLAY_ARGS e.g. --port 8601 --steps 4
PLAY_MODEL ?= models:/vid2world-tiny@champion
PLAY_ARGS ?=

demo:
	@V2W_EXTRAS=dev,sim,convert bash infra/env.sh
	@$(PY) -m infra.stack start
	@$(PY) pipelines/full.py --local-stack --config $(CONFIG)

test:
	@bash infra/env.sh
	@$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

play:
	@V2W_EXTRAS=dev,sim,convert bash infra/env.sh
	@$(PY) -m v2w_core.play --local-stack --model $(PLAY_MODEL) $(PLAY_ARGS)

stack-start:
	@$(PY) -m infra.stack start
stack-stop:
	@$(PY) -m infra.stack stop
stack-status:
	@$(PY) -m infra.stack status

lint:
	@.venv/bin/ruff check v2w_core pipelines infra tests bench
