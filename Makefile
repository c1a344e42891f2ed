# The two commands of the README, and the environment they run in.
#   make demo   run configs/default.yaml into results/default/
#   make test   the whole test suite: the pure tests with DOLFINx blocked, the finite-element and
#               scenario tests, then the MPI-marked tests on 2 ranks (DOLFINX=latest: on the
#               newest DOLFINx)
.PHONY: demo test test-pure test-serial test-mpi env verify bench clean

ENV := scripts/env-exec
# DOLFINX=latest runs every target in the Debian sid root (the newest DOLFINx packaged, 0.11 when
# written) instead of the default environment (Debian trixie: DOLFINx 0.9, or a python3 that
# already imports dolfinx), e.g. `make test DOLFINX=latest`
DOLFINX ?=
ifeq ($(DOLFINX),latest)
export TME_ENV := sid
else ifneq ($(DOLFINX),)
$(error DOLFINX=$(DOLFINX) is not a lane: leave it unset (DOLFINx 0.9) or say DOLFINX=latest)
endif
NP ?= 2
# the demo's 1525 dofs per field took 9 s on 1 rank and 17 s on 2 (docs/performance.md): far
# below the size where a second rank pays, so it runs on one
DEMO_NP ?= 1

env:
	@scripts/env.sh ensure

demo: env
	$(ENV) mpirun -n $(DEMO_NP) tme run configs/default.yaml --out results/default --overwrite

test: test-pure test-serial test-mpi

# tests/pure must pass without DOLFINx: run them with it blocked
test-pure: env
	$(ENV) python3 -m pytest --without-dolfinx tests/pure

test-serial: env
	$(ENV) python3 -m pytest tests/fe tests/scenario

test-mpi: env
	$(ENV) mpirun -n $(NP) scripts/pytest-mpi

verify: env
	$(ENV) tme verify

bench: env
	$(ENV) python3 bench/reactions.py
	$(ENV) python3 bench/transport.py
	$(ENV) mpirun -n 2 python3 bench/transport.py
	$(ENV) python3 bench/coupled.py
	$(ENV) mpirun -n 2 python3 bench/coupled.py --skip-kernel
	$(ENV) python3 bench/vasculature.py
	$(ENV) mpirun -n 2 python3 bench/vasculature.py
	$(ENV) python3 bench/cohort.py
	$(ENV) mpirun -n 2 python3 bench/cohort.py

clean:
	rm -rf results/default .pytest_cache
