# The front door: `make run` runs the default offline job, `make test` the test suite. Each
# makes (or reuses) a virtual environment in .venv, installs torch's CPU build first and then
# the project with its extras, and installs nothing again until pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
# Where torch's CPU build comes from when pip has no local copy of it (PyTorch's CPU index,
# so that no CUDA build is downloaded).
TORCH ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
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
	$(BIN)/python -m pip install -e ".[all,test,cluster]"
	touch $(STAMP)

run: $(STAMP)
	$(ENV) $(BIN)/neuroplastic run --out $(OUT)
	@echo "open $(OUT)/report.html in a browser (rerun to resume; make test runs the tests)"

test: $(STAMP)
	$(ENV) $(BIN)/python -m pytest -q

quick: $(STAMP)
	$(ENV) $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV)
