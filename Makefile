# The two commands of the quick start are `make up` and `make test`; both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: up test proto bench compare venv clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[server,test]'
	touch $@

venv: $(VENV)/.installed

up: venv
	$(VENV)/bin/notifymesh up $(ARGS)

# Tests are independent per xdist worker: each worker runs its own mesh.
test: venv
	$(PY) -m pytest -n 2 --durations=15 $(ARGS)

proto: venv
	$(PY) -m notifymesh.protogen

bench: venv
	$(PY) bench/mesh_bench.py $(ARGS)

# notifymesh beside NATS JetStream and RabbitMQ (../shared/bench/peers); as root it installs them.
compare: venv
	$(PY) bench/compare $(ARGS)

clean:
	rm -rf $(VENV) .notifymesh
