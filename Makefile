# The two commands a user needs (see README.md):
#   make qemu   build the Berth image if its inputs changed and boot it under QEMU
#   make test   run every test layer (unit, privileged, vm); .ci/run calls this
PY := .venv/bin/python

.PHONY: deps image qemu test test-unit test-privileged test-vm bench lint clean

deps:
	@scripts/install-deps.sh

image: deps
	$(PY) -m hostos build

qemu: image
	$(PY) -m hostos qemu

test: deps image
	$(PY) -m pytest tests

test-unit: deps
	$(PY) -m pytest -m unit tests

test-privileged: deps
	$(PY) -m pytest -m privileged tests

test-vm: deps image
	$(PY) -m pytest -m vm tests

lint: deps
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: deps image
	$(PY) -m bench

clean:
	rm -rf build
