# kdlab — build, demo and tests on a fresh machine, with nothing installed by hand first.
#
#   make demo    set up LibTorch, build the release binary, run the demo
#   make test    set up LibTorch, then formatting, clippy and the test suite
#   make build   the release binary ($(CARGO_TARGET_DIR)/release/kdlab)
#   make soak    a 501-run study with 2 workers under a polling `kdlab status` (~6 min; not in test)
#   make docs    the user guide (guide/, mdBook), its links and commands checked; installs mdbook if missing
#   make test-slurm  the demo study on a one-node Slurm cluster started on this machine (~20 min on 2 busy cores;
#                installs Debian's slurm-wlm and munge if missing; scripts/test-slurm.sh)
#
# LibTorch comes from PyPI's torch==2.11.0 wheel (the version tch 0.24 expects), installed once
# into a virtual environment under ~/.cache (about 7 GB with its CUDA libraries, ~2 minutes), with
# torchvision 0.26.0 (the release built against torch 2.11.0) for the import tests' reference models.
# Set LIBTORCH=/path/to/libtorch to build against a LibTorch you already have instead.

SHELL := /bin/bash
TORCH_VERSION := 2.11.0
TORCHVISION_VERSION := 0.26.0
# TensorBoard's own reader checks kdlab's event files (tests/tensorboard.rs).
TENSORBOARD_VERSION := 2.20.0
KDLAB_TORCH_VENV ?= $(HOME)/.cache/kdlab-torch-venv
export CARGO_TARGET_DIR ?= $(HOME)/.cache/kdlab-target
PYTHON ?= python3
BIN := $(CARGO_TARGET_DIR)/release/kdlab

ifeq ($(strip $(LIBTORCH)),)
TORCH_STAMP := $(KDLAB_TORCH_VENV)/.kdlab-torch-$(TORCH_VERSION)-torchvision-$(TORCHVISION_VERSION)-tensorboard-$(TENSORBOARD_VERSION)
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(KDLAB_TORCH_VENV)
export PATH := $(KDLAB_TORCH_VENV)/bin:$(PATH)
else
TORCH_STAMP :=
endif

.PHONY: all build demo test soak torch fmt lint clean-runs bench-ref gpu-check-dry docs test-slurm slurm-packages

all: build

# The virtual environment with PyTorch (and numpy, torchvision and tensorboard, used by the
# reference checks). The stamp names every version, so an environment made before a package was
# added gets it (pip keeps what is already there).
torch: $(TORCH_STAMP)
$(KDLAB_TORCH_VENV)/.kdlab-torch-$(TORCH_VERSION)-torchvision-$(TORCHVISION_VERSION)-tensorboard-$(TENSORBOARD_VERSION):
	@echo "Installing PyTorch $(TORCH_VERSION) (LibTorch for tch), torchvision $(TORCHVISION_VERSION) and tensorboard $(TENSORBOARD_VERSION) into $(KDLAB_TORCH_VENV) ..."
	$(PYTHON) -m venv $(KDLAB_TORCH_VENV)
	$(KDLAB_TORCH_VENV)/bin/pip install -q --disable-pip-version-check "torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)" "tensorboard==$(TENSORBOARD_VERSION)" numpy
	$(KDLAB_TORCH_VENV)/bin/python -c "import torch, torchvision, tensorboard; assert torch.__version__.startswith('$(TORCH_VERSION)'), torch.__version__"
	touch $@

build: torch
	cargo build --release

demo: build
	$(BIN) demo

test: torch
	cargo fmt --check
	cargo clippy --release --all-targets -- -D warnings
	cargo test --release

# Slow: runs, lost or duplicated, "database is locked", and the sweep's descriptors and memory
# over 501 runs (docs/reliability.md). Not part of `make test`.
soak: build
	KDLAB=$(BIN) scripts/soak.sh

# The user guide: mdBook from crates.io (pinned; compiled once into ~/.cargo/bin, a few minutes),
# then every relative link and anchor of the guide and the README checked (scripts/check-links.py),
# and every kdlab command the guide shows checked against the binary's subcommands and flags
# (scripts/check-guide-commands.py; running them for real would mean training for hours).
MDBOOK_VERSION := 0.5.4
MDBOOK ?= $(shell command -v mdbook 2>/dev/null || echo $(HOME)/.cargo/bin/mdbook)
docs: build
	@$(MDBOOK) --version 2>/dev/null | grep -q "v$(MDBOOK_VERSION)" || \
		CARGO_TARGET_DIR=$(HOME)/.cache/mdbook-target cargo install mdbook --locked --version $(MDBOOK_VERSION)
	$(MDBOOK) build guide
	$(PYTHON) scripts/check-links.py guide README.md
	$(PYTHON) scripts/check-guide-commands.py $(BIN) guide

# Debian's Slurm and munge, for test-slurm (as root, or through sudo).
slurm-packages:
	@command -v slurmctld >/dev/null || [ -x /usr/sbin/slurmctld ] || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq slurm-wlm munge; }

# Starts munged, slurmctld and slurmd in a temporary directory, runs the demo study through
# Slurm (one task cancelled and resubmitted), compares with a local sweep, stops every daemon.
test-slurm: build slurm-packages
	KDLAB=$(BIN) scripts/test-slurm.sh

fmt:
	cargo fmt

clean-runs:
	rm -rf runs demo-runs

# scripts/gpu_check.sh on the CPU: every step of the GPU check but the CUDA calls (tests/gpu.rs
# runs the same). On a GPU machine: scripts/gpu_check.sh --carried DIR (see the script).
gpu-check-dry: build
	scripts/gpu_check.sh --dry-run --kdlab $(BIN) --out gpu-check-results.md
