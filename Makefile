# The two commands a user needs (see README.md):
#   make qemu   build the Berth image if its inputs changed and boot it under QEMU
#   make test   run every test layer (unit, privileged, vm); .ci/run calls this
PY := .venv/bin/python

.PHONY: deps image qemu test test-rollout test-unit test-privileged test-vm bench lint clean

deps:
	@scripts/install-deps.sh

image: deps
	$(PY) -m hostos build

qemu: image
	$(PY) -m hostos qemu

# The A/B update scenarios (marker `rollout`: tests/vm/test_update*.py, 4-8 min
# of TCG boots each) have not passed twice in a row yet: `make test-rollout`.
test: deps image
	$(PY) -m pytest -m "not rollout" tests

test-rollout: deps image
	$(PY) -m pytest -m rollout tests

test-unit: deps
	$(PY) -m pytest -m unit tests

test-privileged: deps
	$(PY) -m pytest -m privileged tests

test-vm: deps image
	$(PY) -m pytest -m "vm and not rollout" tests

lint: deps
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: deps image
	$(PY) -m bench

clean:
	rm -rf build
