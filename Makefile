.PHONY: run test lint bootstrap docs bench
run:
	bash scripts/run.sh
test:
	bash scripts/test.sh
lint: bootstrap
	bash scripts/lint.sh
bootstrap:
	bash scripts/bootstrap.sh
docs: bootstrap
	.venv/bin/python -m layerswarm.docgen > docs/configuration.md
bench: bootstrap
	.venv/bin/python -m bench.mirror
