# Two commands a new user needs (see README): `make demo` and `make test`. Both set up first.
#
# They create and use a project virtual environment (.venv), so they work with a system Python that refuses
# `pip install` (PEP 668: Debian 12, Ubuntu 24.04), and they install from constraints.txt, the exact versions
# CI last tested, so a release made since then cannot break a new user's first command. `make lock` refreshes
# constraints.txt on purpose (then run `make test`); pyproject.toml keeps the loose ranges for embedders.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= train,test,onnx,serve,postgres
BIN := $(VENV)/bin

.PHONY: install demo test lock
install: $(VENV)/.installed

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "make: speedy needs Python 3.11 and '$(PYTHON)' is $$($(PYTHON) -V 2>&1): run make PYTHON=/path/to/python3.11"; exit 2; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "make: '$(PYTHON) -m venv' failed: install the venv module (Debian/Ubuntu: apt-get install python3-venv), or run make PYTHON=/path/to/python3.11"; exit 2; }
	@# A system Python's venv may carry an old pip (Debian 12: 23.0) that cannot build sdists like seqeval's.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade 'pip>=24'

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $@

demo: install
	$(BIN)/speedy demo

test: install
	$(BIN)/python -m pytest -q

# Resolve the loose ranges of pyproject.toml afresh in a throw-away environment and record what was installed.
lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install --quiet --disable-pip-version-check --upgrade 'pip>=24'
	$(VENV)-lock/bin/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	{ echo "# Exact versions tested by CI; refresh with 'make lock' (then 'make test'). Local tags like +cpu are dropped."; \
	  $(VENV)-lock/bin/python -m pip freeze --exclude-editable --all | grep -v -E '^(pip|setuptools|wheel)==' | sed -E 's/\+[a-z0-9.]+$$//'; } > constraints.txt
	rm -rf $(VENV)-lock
