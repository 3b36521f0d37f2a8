# Two commands a new user needs (see README): `make demo` and `make test`. Both install first.
PYTHON ?= python3

.PHONY: install demo test
install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test,onnx,serve,postgres]'

demo: install
	speedy demo

test: install
	$(PYTHON) -m pytest -q
