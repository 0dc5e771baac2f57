# edgevoice: `make demo` and `make test` work on a fresh Debian 12 as root (or with sudo).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# What the build (PyAudio, systemd-python) and the tests (ALSA file PCM, espeak-ng, sox,
# systemd-analyze, systemd-journald, promtool from prometheus, pipewire to load the
# echo-cancel drop-in) need from Debian.
APT_PACKAGES := portaudio19-dev libsystemd-dev pkg-config gcc python3-dev python3-venv \
	alsa-utils espeak-ng sox systemd prometheus pipewire-bin libpipewire-0.3-modules \
	libspa-0.2-modules
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck pytest bench deps venv clean deb

demo: venv
	$(PY) -m edgevoice.demo

test: venv lint typecheck pytest

lint: venv
	$(VENV)/bin/ruff check edgevoice tests benchmarks

typecheck: venv
	$(VENV)/bin/mypy

# pytest exits 5 when it ran no test: that is a failure here, not a green run.
pytest: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider

# soxr (the extra `bench`) is what the resampler is compared with; without it (offline) that
# bench still runs and says so. The resampler table is printed again with Debian's own
# python3-numpy when it is installed: that is what the .deb runs on.
bench: venv
	@$(PY) -c "import soxr" 2>/dev/null || $(VENV)/bin/pip install -q -e '.[bench]' || \
		echo "soxr could not be installed: the resampler bench runs without it"
	$(PY) benchmarks/bench_resample.py
	@if dpkg-query -W -f='$${Status}' python3-numpy 2>/dev/null | grep -q "ok installed"; then \
		echo "== resampler with Debian's python3-numpy (/usr/bin/python3) =="; \
		PYTHONPATH=$(CURDIR) /usr/bin/python3 benchmarks/bench_resample.py \
			--json benchmarks/results/resample-debian-numpy.json \
			--soxr-reference benchmarks/results/resample.json \
			--soxr-path "$$($(PY) -c 'import os, soxr; print(os.path.dirname(os.path.dirname(soxr.__file__)))' 2>/dev/null)"; \
	else echo "python3-numpy not installed: no resampler table with Debian's numpy"; fi
	$(PY) benchmarks/bench_pipeline.py
	$(PY) benchmarks/bench_downlink.py --json benchmarks/results/downlink.json
	$(PY) benchmarks/bench_bargein.py --json benchmarks/results/bargein.json
	$(PY) benchmarks/bench_daemon.py --json benchmarks/results/daemon.json
	$(PY) benchmarks/bench_floor.py
	$(PY) benchmarks/bench_wakeword.py --json benchmarks/results/wakeword.json

deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

deb:
	dpkg-buildpackage -us -uc -b

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
