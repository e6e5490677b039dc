# `make demo` sets everything up and searches the sample corpus; `make test` runs every test.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
PIP    := $(PYTHON) -m pip
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed
INDEX  ?= indexes/default
# uv does not read pip's configuration: it gets pip's find-links (the CPU torch wheel lies there here).
FIND_LINKS ?= $(shell python3 -m pip config get global.find-links 2>/dev/null)
SOURCES    := $(foreach link,$(FIND_LINKS),--find-links $(link))

.PHONY: install lock demo test test-avx2 bench bench-avx2 bench-large clean

install: $(STAMP)

# uv itself, pinned and hashed in the lock, installed by pip.
$(UV): requirements.lock
	python3 -m venv $(VENV)
	sed -n '/^uv==/,/# via/p' requirements.lock > $(VENV)/uv.lock
	$(PIP) install --quiet --no-deps --require-hashes -r $(VENV)/uv.lock
	touch $(UV)

# The environment becomes exactly requirements.lock (every version pinned, every file hash-checked,
# nothing resolved here), then this package is added editable, then `search prepare` makes the int8
# ONNX models once (~2 min: the two embedding models and the cross-lingual re-reader) so that the first
# `search index` (and the first query across languages) does not pay for them. Everything is
# compiled to bytecode now: where PYTHONDONTWRITEBYTECODE is set (or site-packages is read-only), each
# command would otherwise compile its ~430 modules from source again (1.3 s of every cold command).
$(STAMP): $(UV) pyproject.toml Makefile
	$(UV) pip sync --quiet --python $(PYTHON) --require-hashes --compile-bytecode $(SOURCES) requirements.lock
	$(UV) pip install --quiet --python $(PYTHON) --no-deps --no-build-isolation -e .
	$(PYTHON) -m compileall -q search
	$(PYTHON) -m search.cli prepare
	touch $(STAMP)

# Resolve requirements.in with pyproject.toml's dependencies (and its test extra) again, newest versions
# that fit, into requirements.lock; `make install` then syncs the environment to it. See the README.
lock: $(UV)
	$(UV) pip compile --quiet --generate-hashes --python $(PYTHON) --extra test --override requirements.overrides \
		$(SOURCES) --output-file requirements.lock pyproject.toml requirements.in

demo: install
	$(VENV)/bin/search index corpus --index $(INDEX)
	$(VENV)/bin/search query "序列并行" --index $(INDEX) -k 3
	$(VENV)/bin/search query "how do I merge keyword and vector results" --index $(INDEX) -k 3

test: install
	$(VENV)/bin/pytest -q

# The suite as a CPU without AVX-512 and VNNI runs it (the int8 kernels that saturate there): CPUID is
# masked by an LD_PRELOAD shim (benchmarks/cpuid_mask.c; x86-64 Linux with the cpuid_fault flag, and cc).
# It first prints the class CPUID reports and the kernel check (8-bit weights overflow there, 7-bit ones
# do not); pytest's faulthandler would take the SIGSEGV the shim answers CPUID with, so it is off here.
# Where the CPU lacks cpuid_fault (AMD EPYC VMs), each library is switched to AVX2 by its own means
# instead (benchmarks/avx2_libraries.py: onnxruntime patched in a copy, environment switches for the rest).
test-avx2: install
ifeq ($(shell grep -cw cpuid_fault /proc/cpuinfo 2>/dev/null),0)
	$(PYTHON) benchmarks/avx2_libraries.py -- $(PYTHON) benchmarks/cpu_classes.py --no-models
	$(PYTHON) benchmarks/avx2_libraries.py -- $(VENV)/bin/pytest -q
else
	cc -O2 -shared -fPIC -o $(VENV)/cpuid_mask.so benchmarks/cpuid_mask.c
	CPUID_MASK=avx2 LD_PRELOAD=$(abspath $(VENV))/cpuid_mask.so $(PYTHON) benchmarks/cpu_classes.py --no-models
	CPUID_MASK=avx2 LD_PRELOAD=$(abspath $(VENV))/cpuid_mask.so $(VENV)/bin/pytest -q -p no:faulthandler
endif

bench: install
	$(PYTHON) benchmarks/incremental.py
	$(PYTHON) benchmarks/filters.py
	$(PYTHON) benchmarks/speed.py
	$(PYTHON) benchmarks/reindex.py

# Issue 12's speed figures as a CPU without AVX-512 and VNNI gives them (the same means as test-avx2):
# speed.py builds its own 100k index under indexes/bench-avx2 (an embedding budget for this class's
# slower int8 kernels, so the corpus is not cut short), then reindex.py times one-note edits on it.
AVX2_BENCH := indexes/bench-avx2
ifeq ($(shell grep -cw cpuid_fault /proc/cpuinfo 2>/dev/null),0)
AT_AVX2 := $(PYTHON) benchmarks/avx2_libraries.py --
else
AT_AVX2 := CPUID_MASK=avx2 LD_PRELOAD=$(abspath $(VENV))/cpuid_mask.so
endif
bench-avx2: install
ifneq ($(shell grep -cw cpuid_fault /proc/cpuinfo 2>/dev/null),0)
	cc -O2 -shared -fPIC -o $(VENV)/cpuid_mask.so benchmarks/cpuid_mask.c
endif
	$(AT_AVX2) $(PYTHON) benchmarks/speed.py --work $(AVX2_BENCH) --embed-budget 1200
	$(AT_AVX2) $(PYTHON) benchmarks/reindex.py --corpus $(AVX2_BENCH)/corpus --index $(AVX2_BENCH)/index

# Not part of `bench`: generates a 1 GB JSONL and a 1 GB Parquet dataset of chat records and indexes
# each keyword-only (long on a laptop CPU). PARQUET_MB=100 for a shorter Parquet run.
PARQUET_MB ?= 1024
bench-large: install
	$(PYTHON) benchmarks/large_jsonl.py
	$(PYTHON) benchmarks/large_parquet.py --size $(PARQUET_MB)

clean:
	rm -rf $(VENV) indexes
