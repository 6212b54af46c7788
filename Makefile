# The two commands of the README's Quickstart:
#   make lab    set everything up, then open the workbook in JupyterLab
#   make test   set everything up, then run the unit tests and every notebook (nbval)
#
# "Set up" installs the workbook into the active virtual or conda environment, or,
# when none is active, into .venv/ (created with access to packages already installed
# on the system, so an existing PyTorch is reused instead of downloaded again).
ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
PYTHON ?= python
else
PYTHON ?= .venv/bin/python
endif

.PHONY: setup lab test bench exercises retrain

# pip is asked offline first (a lab machine without internet, or a second run: everything is
# installed already, nothing is fetched), and goes to the package index only if that fails.
# The venv borrows the system's pip and setuptools (--without-pip) rather than the older copies
# ensurepip would bundle, which cannot build the workbook offline.
setup:
	@test -x $(PYTHON) || command -v $(PYTHON) >/dev/null || python3 -m venv --system-site-packages --without-pip .venv
	@$(PYTHON) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m ensurepip --quiet
	@$(PYTHON) -m pip install --quiet --no-index --no-build-isolation -e ".[dev]" 2>/dev/null || \
	$(PYTHON) -m pip install --quiet -e ".[dev]"

lab: setup
	$(PYTHON) -m jupyter lab notebooks/

test: setup
	$(PYTHON) -m pytest

bench: setup
	$(PYTHON) -m compresslab bench

exercises: setup
	$(PYTHON) -m compresslab exercises

retrain: setup
	$(PYTHON) -m compresslab checkpoints retrain --force
