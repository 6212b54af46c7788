# The commands of the README's Quickstart:
#   make lab    set everything up, then open the workbook in JupyterLab
#   make test   set everything up, then run the unit tests and every notebook (nbval): CI runs this
#   make check  the fast lane: the unit tests that take seconds (no notebooks, no slow tests)
#
# "Set up" installs the workbook into the active virtual or conda environment, or,
# when none is active, into .venv/ (created with access to packages already installed
# on the system, so an existing PyTorch is reused instead of downloaded again).
ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
PYTHON ?= python
else
PYTHON ?= .venv/bin/python
endif

.PHONY: setup lab test check bench exercises retrain

# pip is asked offline first (a lab machine without internet, or a second run: everything is
# installed already, nothing is fetched), and goes to the package index only if that fails,
# saying so and why. The venv borrows the system's pip and setuptools (--without-pip) rather
# than the older copies ensurepip would bundle, which cannot build the workbook offline.
# constraints.txt pins the versions the suite last passed with (on the Python it names; others resolve
# freely). A CPU-only machine: install PyTorch's CPU build first (README, "A smaller PyTorch").
SETUP_LOG = .venv-setup.log
setup:
	@test -x $(PYTHON) || command -v $(PYTHON) >/dev/null || python3 -m venv --system-site-packages --without-pip .venv
	@$(PYTHON) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m ensurepip --quiet
	@if $(PYTHON) -m pip install --quiet --no-index --no-build-isolation -c constraints.txt -e ".[dev]" >$(SETUP_LOG) 2>&1; then \
	  rm -f $(SETUP_LOG); \
	else \
	  echo "setup: the offline install found packages missing:"; \
	  grep -E "(ERROR|error): " $(SETUP_LOG) | grep -vE "subprocess-exited|metadata-generation" | head -2 | sed 's/^ */  /'; \
	  echo "setup: installing from the package index instead (a first install downloads PyTorch:"; \
	  echo "       about 5 GB with CUDA; a CPU-only machine can first install the CPU build, see README)."; \
	  $(PYTHON) -m pip install --quiet -c constraints.txt -e ".[dev]" && rm -f $(SETUP_LOG); \
	fi

# Jupyter refuses to start as root (Docker images, lab VMs) unless told --allow-root: say so and pass it.
lab: setup
	@if [ "$$(id -u)" = 0 ]; then \
	  echo "lab: running as root, so JupyterLab is started with --allow-root (as an ordinary user it is not needed)."; \
	  $(PYTHON) -m jupyter lab --allow-root notebooks/; \
	else \
	  $(PYTHON) -m jupyter lab notebooks/; \
	fi

test: setup
	$(PYTHON) -m pytest

check: setup
	$(PYTHON) -m pytest tests -m "not slow" -q

bench: setup
	$(PYTHON) -m compresslab bench

exercises: setup
	$(PYTHON) -m compresslab exercises

retrain: setup
	$(PYTHON) -m compresslab checkpoints retrain --force
