# Dose x overlap ptychography baseline study. `make` (= `make help`) lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON        ?= python3
VENV          ?= .venv
DESIGN        ?= plans/fly64_dose_overlap/design.json
SMOKE_DESIGN  ?= plans/smoke/design.json
DOSE          ?= 1000
VIEW          ?=
SPLIT         ?=
RECONSTRUCTOR ?=
ALGORITHM     ?=
EPOCHS        ?=
DEVICE        ?= auto
WORKERS       ?= 1
TIMEOUT       ?=
SCHEDULER     ?=
REPORTS       ?= tmp/reports
OUT           ?= tmp/study
PHASE_C_ROOT  ?= $(OUT)/phase_c
PHASE_D_ROOT  ?= $(OUT)/phase_d
ARTIFACT_ROOT ?= $(OUT)/phase_f
SMOKE_OUT     ?= tmp/smoke
GRID_DESIGN   ?= plans/dose_overlap_grid/design.json
GRID_OUT      ?= tmp/grid
GRID_WORKERS  ?= 2
SMOKE_GRID_DESIGN ?= plans/smoke_grid/design.json
SMOKE_GRID_OUT    ?= tmp/smoke_grid
# make realistic-run: REALISTIC_DESIGN at DOSE under REALISTIC_OUT, summarized beside the ideal study
# of `make real-run` (ARTIFACT_ROOT) when that one has a summary.
REALISTIC_DESIGN ?= plans/fly64_realistic/design.json
REALISTIC_OUT    ?= tmp/realistic
# make ladder-run: LADDER_SOURCE_DESIGN's whole scan at LADDER_SOURCE_DOSE, joined from its baseline
# train + test files into LADDER_PARENT (where LADDER_DESIGN's measured/npz points), thinned into
# LADDER_DESIGN's dose ladder under LADDER_OUT.
LADDER_DESIGN        ?= plans/fly64_ladder/design.json
LADDER_SOURCE_DESIGN ?= plans/fly64_dose_overlap/design.json
LADDER_SOURCE_DOSE   ?= 100000
LADDER_OUT           ?= tmp/ladder
LADDER_PARENT        ?= tmp/ladder/parent/fly64_1e5_whole.npz
PYTEST_ARGS   ?=
# Scan sizes (positions) bench_scale generates one dose of.
BENCH_SCALE_PATTERNS ?= 100000 200000
# Extra arguments of the contention and peer benchmarks (e.g. BENCH_PEER_ARGS='--views dense,baseline').
BENCH_CONTENTION_ARGS ?=
BENCH_PEER_ARGS ?=

# Paths may hold spaces: recipes quote them with $(call q,...); file targets escape them with $(call esc,...).
empty :=
space := $(empty) $(empty)
q   = '$(subst ','\'',$(1))'
esc = $(subst $(space),\$(space),$(1))

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
NOW   := $(shell date -u +%Y-%m-%dT%H%M%SZ)

# Optional pass-through flags: empty variables add nothing.
PLAN_FILTERS := $(foreach v,$(VIEW),--view $(call q,$(v))) $(foreach s,$(SPLIT),--split $(call q,$(s))) $(if $(EPOCHS),--num-epochs $(call q,$(EPOCHS))) $(foreach r,$(RECONSTRUCTOR),--reconstructor $(call q,$(r))) $(if $(ALGORITHM),--algorithm $(call q,$(ALGORITHM)))
RUN_FLAGS    := --device $(call q,$(DEVICE)) --workers $(call q,$(WORKERS)) $(if $(TIMEOUT),--timeout $(call q,$(TIMEOUT))) $(if $(SCHEDULER),--scheduler $(call q,$(SCHEDULER)))
# DOSE may list several doses: make real-run DOSE="1000 10000 100000".
DOSE_DATA    := $(foreach d,$(DOSE),$(call esc,$(PHASE_C_ROOT))/dose_$(d)/patched_train.npz)
DOSE_FLAGS   := $(foreach d,$(DOSE),--dose $(call q,$(d)))
DOSE_DIRS    := $(foreach d,$(DOSE),$(call q,$(PHASE_C_ROOT)/dose_$(d)) $(call q,$(PHASE_D_ROOT)/dose_$(d)))
DOSE_TAG     := $(subst $(eval) ,_,$(strip $(DOSE)))

.PHONY: help venv test lint dry-run real-run realistic-run grid-run smoke-grid ladder-run data doc-sync doc-check bench clean

help: ## List the targets (default)
	@echo "Dose x overlap ptychography baseline study"
	@echo
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  %-10s %s\n", $$1, $$2}'
	@echo
	@echo "Variables (override with VAR=value): DOSE=$(DOSE) VIEW=$(VIEW) SPLIT=$(SPLIT) EPOCHS=$(EPOCHS)"
	@echo "  RECONSTRUCTOR=$(RECONSTRUCTOR) ALGORITHM=$(ALGORITHM)"
	@echo "  DEVICE=$(DEVICE) WORKERS=$(WORKERS) TIMEOUT=$(TIMEOUT) SCHEDULER=$(SCHEDULER) DESIGN=$(DESIGN)"
	@echo "  OUT=$(OUT) REPORTS=$(REPORTS)"

$(STAMP): setup.cfg constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	$(BIN)/python -c "import ptychi, torch, ptydose; print('venv ready: torch', torch.__version__, 'ptychi', ptychi.__file__)"
	touch $@

venv: $(STAMP) ## Build .venv from setup.cfg + constraints.txt (only when missing or older)

test: $(STAMP) ## Lint, run the whole test suite, then check that generated docs are current
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory doc-check

lint: $(STAMP) ## ruff (pinned) over the package, tests, benchmarks and examples (settings: ruff.toml)
	$(BIN)/ruff check .

dry-run: $(STAMP) ## Smoke design: generate, validate, plan, run-ptychi --dry-run (seconds)
	@log=$(call q,$(REPORTS)/$(NOW)/cli/dry_run.log); mkdir -p "$$(dirname "$$log")"; \
	set -o pipefail; ( set -e; \
	  $(BIN)/gen-synthetic --design $(call q,$(SMOKE_DESIGN)) --phase-c-root $(call q,$(SMOKE_OUT)/phase_c) \
	    --phase-d-root $(call q,$(SMOKE_OUT)/phase_d); \
	  $(BIN)/validate-npz -q $(call q,$(SMOKE_OUT)/phase_c) $(call q,$(SMOKE_OUT)/phase_d); \
	  $(BIN)/plan-jobs --design $(call q,$(SMOKE_DESIGN)) --phase-c-root $(call q,$(SMOKE_OUT)/phase_c) \
	    --phase-d-root $(call q,$(SMOKE_OUT)/phase_d) --artifact-root $(call q,$(SMOKE_OUT)/phase_f) --allow-missing-phase-d; \
	  $(BIN)/run-ptychi --manifest $(call q,$(SMOKE_OUT)/phase_f/reconstruction_manifest.json) --dry-run; \
	) 2>&1 | tee "$$log"; rc=$$?; \
	echo "log: $$log"; exit $$rc

$(call esc,$(PHASE_C_ROOT))/dose_%/patched_train.npz: $(call esc,$(DESIGN)) | $(STAMP)
	$(BIN)/gen-synthetic --design $(call q,$(DESIGN)) --phase-c-root $(call q,$(PHASE_C_ROOT)) \
	  --phase-d-root $(call q,$(PHASE_D_ROOT)) --dose $(call q,$*)

data: $(DOSE_DATA) ## Generate the study data of DOSE (one or several; only if missing or the design changed)

real-run: $(DOSE_DATA) ## Full design at DOSE: validate, plan, reconstruct (the design's reconstructors), summarize
	@log=$(call q,$(REPORTS)/$(NOW)/real_run/dose_$(DOSE_TAG)/run.log); mkdir -p "$$(dirname "$$log")"; \
	set -o pipefail; ( \
	  $(BIN)/validate-npz -q $(DOSE_DIRS) || exit $$?; \
	  $(BIN)/plan-jobs --design $(call q,$(DESIGN)) --phase-c-root $(call q,$(PHASE_C_ROOT)) \
	    --phase-d-root $(call q,$(PHASE_D_ROOT)) --artifact-root $(call q,$(ARTIFACT_ROOT)) $(DOSE_FLAGS) $(PLAN_FILTERS) \
	    || exit $$?; \
	  $(BIN)/run-ptychi --manifest $(call q,$(ARTIFACT_ROOT)/reconstruction_manifest.json) $(RUN_FLAGS); run_rc=$$?; \
	  $(BIN)/summarize --artifact-root $(call q,$(ARTIFACT_ROOT)) || exit $$?; \
	  exit $$run_rc; \
	) 2>&1 | tee "$$log"; rc=$$?; \
	echo "log: $$log"; exit $$rc

realistic-run: $(STAMP) ## Realistic design at DOSE (unknown probe, position errors, detector): generate, validate, plan, run, summarize beside the ideal real-run
	@log=$(call q,$(REPORTS)/$(NOW)/realistic_run/dose_$(DOSE_TAG)/run.log); mkdir -p "$$(dirname "$$log")"; \
	ideal=$(call q,$(ARTIFACT_ROOT)); beside=(); \
	set -o pipefail; ( \
	  $(BIN)/gen-synthetic --design $(call q,$(REALISTIC_DESIGN)) --phase-c-root $(call q,$(REALISTIC_OUT)/phase_c) \
	    --phase-d-root $(call q,$(REALISTIC_OUT)/phase_d) $(DOSE_FLAGS) || exit $$?; \
	  $(BIN)/validate-npz -q $(foreach d,$(DOSE),$(call q,$(REALISTIC_OUT)/phase_c/dose_$(d)) $(call q,$(REALISTIC_OUT)/phase_d/dose_$(d))) \
	    || exit $$?; \
	  $(BIN)/plan-jobs --design $(call q,$(REALISTIC_DESIGN)) --phase-c-root $(call q,$(REALISTIC_OUT)/phase_c) \
	    --phase-d-root $(call q,$(REALISTIC_OUT)/phase_d) --artifact-root $(call q,$(REALISTIC_OUT)/phase_f) $(DOSE_FLAGS) \
	    $(PLAN_FILTERS) || exit $$?; \
	  $(BIN)/run-ptychi --manifest $(call q,$(REALISTIC_OUT)/phase_f/reconstruction_manifest.json) $(RUN_FLAGS); run_rc=$$?; \
	  if [ -f "$$ideal/summary/summary.json" ]; then beside=(--beside "$$ideal:ideal"); \
	  else echo "no ideal summary in $$ideal/summary/: run make real-run with the same DOSE first to see the ideal study beside"; fi; \
	  $(BIN)/summarize --artifact-root $(call q,$(REALISTIC_OUT)/phase_f) "$${beside[@]}" || exit $$?; \
	  exit $$run_rc; \
	) 2>&1 | tee "$$log"; rc=$$?; \
	echo "log: $$log"; exit $$rc

grid-run: $(STAMP) ## Dose x overlap grid (GRID_DESIGN): generate, validate, plan, reconstruct (GRID_WORKERS), summarize + map
	@log=$(call q,$(REPORTS)/$(NOW)/grid_run/run.log); mkdir -p "$$(dirname "$$log")"; \
	set -o pipefail; ( \
	  $(BIN)/gen-synthetic --design $(call q,$(GRID_DESIGN)) --phase-c-root $(call q,$(GRID_OUT)/phase_c) \
	    --phase-d-root $(call q,$(GRID_OUT)/phase_d) || exit $$?; \
	  $(BIN)/validate-npz -q $(call q,$(GRID_OUT)/phase_c) $(call q,$(GRID_OUT)/phase_d) || exit $$?; \
	  $(BIN)/plan-jobs --design $(call q,$(GRID_DESIGN)) --phase-c-root $(call q,$(GRID_OUT)/phase_c) \
	    --phase-d-root $(call q,$(GRID_OUT)/phase_d) --artifact-root $(call q,$(GRID_OUT)/phase_f) $(PLAN_FILTERS) \
	    || exit $$?; \
	  $(BIN)/run-ptychi --manifest $(call q,$(GRID_OUT)/phase_f/reconstruction_manifest.json) --device $(call q,$(DEVICE)) \
	    --workers $(call q,$(GRID_WORKERS)) $(if $(TIMEOUT),--timeout $(call q,$(TIMEOUT))) \
	    $(if $(SCHEDULER),--scheduler $(call q,$(SCHEDULER))); run_rc=$$?; \
	  $(BIN)/summarize --artifact-root $(call q,$(GRID_OUT)/phase_f) || exit $$?; \
	  exit $$run_rc; \
	) 2>&1 | tee "$$log"; rc=$$?; \
	echo "log: $$log"; exit $$rc

smoke-grid: $(STAMP) ## The tiny grid (plans/smoke_grid) end to end in seconds: the grid path as CI runs it
	$(MAKE) --no-print-directory grid-run GRID_DESIGN=$(call q,$(SMOKE_GRID_DESIGN)) GRID_OUT=$(call q,$(SMOKE_GRID_OUT))

ladder-run: $(STAMP) ## Dose ladder (LADDER_DESIGN) thinned from a simulated whole scan: generate, join, thin, validate, plan, run, summarize
	@log=$(call q,$(REPORTS)/$(NOW)/ladder_run/run.log); mkdir -p "$$(dirname "$$log")"; \
	parts=$(call q,$(LADDER_OUT)/source/phase_c/dose_$(LADDER_SOURCE_DOSE)); \
	set -o pipefail; ( \
	  $(BIN)/gen-synthetic --design $(call q,$(LADDER_SOURCE_DESIGN)) --phase-c-root $(call q,$(LADDER_OUT)/source/phase_c) \
	    --phase-d-root $(call q,$(LADDER_OUT)/source/phase_d) --dose $(call q,$(LADDER_SOURCE_DOSE)) || exit $$?; \
	  $(BIN)/gen-synthetic --join-scan $(call q,$(LADDER_PARENT)) "$$parts/patched_train.npz" \
	    "$$parts/patched_test.npz" || exit $$?; \
	  $(BIN)/gen-synthetic --design $(call q,$(LADDER_DESIGN)) --phase-c-root $(call q,$(LADDER_OUT)/phase_c) \
	    --phase-d-root $(call q,$(LADDER_OUT)/phase_d) || exit $$?; \
	  $(BIN)/validate-npz -q $(call q,$(LADDER_OUT)/phase_c) $(call q,$(LADDER_OUT)/phase_d) || exit $$?; \
	  $(BIN)/plan-jobs --design $(call q,$(LADDER_DESIGN)) --phase-c-root $(call q,$(LADDER_OUT)/phase_c) \
	    --phase-d-root $(call q,$(LADDER_OUT)/phase_d) --artifact-root $(call q,$(LADDER_OUT)/phase_f) $(PLAN_FILTERS) \
	    || exit $$?; \
	  $(BIN)/run-ptychi --manifest $(call q,$(LADDER_OUT)/phase_f/reconstruction_manifest.json) $(RUN_FLAGS); run_rc=$$?; \
	  $(BIN)/summarize --artifact-root $(call q,$(LADDER_OUT)/phase_f) || exit $$?; \
	  exit $$run_rc; \
	) 2>&1 | tee "$$log"; rc=$$?; \
	echo "log: $$log"; exit $$rc

doc-sync: $(STAMP) ## Regenerate the generated parts of docs/ (test index, CLI reference, results)
	$(BIN)/python -m ptydose.doc_sync write --artifact-root $(call q,$(ARTIFACT_ROOT))

doc-check: $(STAMP) ## Fail when the tracked generated docs are stale
	$(BIN)/python -m ptydose.doc_sync check

bench: $(STAMP) ## Benchmarks: ratios measured side by side in one run (not part of test)
	$(BIN)/python benchmarks/bench_validate.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_scale.py --patterns $(BENCH_SCALE_PATTERNS)
	$(BIN)/python benchmarks/bench_contention.py $(BENCH_CONTENTION_ARGS)
	$(BIN)/python benchmarks/bench_peer.py $(BENCH_PEER_ARGS)

clean: ## Remove generated data and reports under tmp/ (keeps .venv)
	find tmp -mindepth 1 -not -name .gitkeep -delete
