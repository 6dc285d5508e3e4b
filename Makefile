# Two commands do all the set-up on a fresh machine:
#   make demo   -- the main job: a small population self-play experiment and its report (agora train + agora report)
#   make test   -- the test suite (two pytest-xdist workers, one test file each at a time)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench mutants clean

demo: $(VENV)/.installed
	$(VENV)/bin/agora train configs/demo.yaml
	$(VENV)/bin/agora report runs/demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(VENV)/.installed
	$(PY) -m benchmarks.suite

# Mutation testing of the newer modules (cosmic-ray; hours on 2 cores, resumable; not in CI):
#   make mutants MODULES="selfplay/population.py"   -> results/mutation/<module>.json
mutants: $(VENV)/.installed
	$(PY) tools/mutants.py $(MODULES) --jobs $(or $(JOBS),1)

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,pettingzoo]"
	touch $@

clean:
	rm -rf $(VENV)
