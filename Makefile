# Two commands set everything up: `make run` (the instrument) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test bench install run clean shipped-model

# The instrument on a virtual MIDI port (sing_synth/play.py; README "Playing it live"). With no
# audio output device it says so in one line and renders the bundled demo to demo.wav instead.
run: $(STAMP)
	$(PY) run_synth.py --virtual --fallback-render demo.wav

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: it is the local CPU build here, where an unpinned torch pulls CUDA wheels.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# Every benchmark side by side with FluidSynth (bench/__main__.py): one run, tables on stdout and in
# bench/RESULTS.md.  Needs jackd and fluidsynth; BENCH_ARGS=--quick for a short indicative run.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m bench --markdown bench/RESULTS.md $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

# The default model: FluidR3_GM's programs named by the presets (sing_synth.presets.SHIPPED_PROGRAMS),
# MIDI 24-96, `small` size, on this CPU; models/MODEL_CARD.md says what it cost and how it scores.
# Stage 1: the three phases on whole notes; stage 2: end to end on 64-frame crops (~3x faster steps)
# from stage 1's fp16 weights; stage 3: the same run annealed (lr 3e-4, then 1e-4; a resumed run
# takes --lr as given); stage 4: on with every note weighed at -30 dB RMS (--loss-norm-db: quiet
# decaying notes were mostly under the loss's floor), lr 3e-4 then 1e-4; stage 5: a new run from
# stage 4's weights with the bins between each note's harmonics weighed 4x (--between-weight:
# subharmonics and frame-rate buzz, read as octave errors), lr 2e-4, 1e-4, 5e-5; stage 6: a new run
# from stage 5's weights with an 8192-point STFT term and that band reaching down to 40 Hz under
# high notes (the 125 Hz buzz tooth), 8 epochs on train, then on train+valid (a final model: the
# test split stays held out for `sing-synth eval`), lr 1e-4, then 5e-5 with the drawbar organ drawn
# 3x (its 16' partial at MIDI 48 sat on the 62.5 Hz frame rate).  Every step is
# resumable: run it again after a kill.  To train the shipped model further: `sing-synth train ...
# --init-from models/sing-small-fluidr3.pt --epochs 0,0,N --lr 5e-5 --train-split train+valid $(STAGE6_OPTS)`.
SF2 ?= /usr/share/sounds/sf2/FluidR3_GM.sf2
SHIPPED_DATA ?= data/fluidr3-shipped
SHIPPED_RUN ?= runs/shipped
SHIPPED_OPTS = --data $(SHIPPED_DATA) --size small --seed 0 --batch-size 16 --lr 1e-3 --loss mse \
	--resolutions 1024,4096 --resume
STAGE6_OPTS = --resolutions 1024,4096,8192 --crop 64 --loss-norm-db -30 --between-weight 4 --between-low-hz 40
shipped-model: $(STAMP)
	$(PY) -m sing_synth dataset soundfont --sf2 $(SF2) --out $(SHIPPED_DATA) --pitch-range 24 96 \
		--programs $$($(PY) -c "from sing_synth.presets import SHIPPED_PROGRAMS as p; print(','.join(map(str, p)))")
	$(PY) -m sing_synth train $(SHIPPED_OPTS) --out $(SHIPPED_RUN) --epochs 2,2,2
	$(PY) -m sing_synth convert $(SHIPPED_RUN)/model.pt $(SHIPPED_RUN)/stage1-half.pt --half
	$(PY) -m sing_synth train $(SHIPPED_OPTS) --out $(SHIPPED_RUN)-crop --init-from $(SHIPPED_RUN)/stage1-half.pt \
		--epochs 0,0,16 --crop 64
	$(PY) -m sing_synth train $(SHIPPED_OPTS) --out $(SHIPPED_RUN)-crop --epochs 0,0,19 --crop 64 --lr 3e-4
	$(PY) -m sing_synth train $(SHIPPED_OPTS) --out $(SHIPPED_RUN)-crop --epochs 0,0,28 --crop 64 --lr 1e-4
	$(PY) -m sing_synth train $(SHIPPED_OPTS) --out $(SHIPPED_RUN)-crop --epochs 0,0,36 --crop 64 --lr 3e-4 \
		--loss-norm-db -30
	$(PY) -m sing_synth train $(SHIPPED_OPTS) --out $(SHIPPED_RUN)-crop --epochs 0,0,44 --crop 64 --lr 1e-4 \
		--loss-norm-db -30
	$(PY) -m sing_synth train $(SHIPPED_OPTS) --out $(SHIPPED_RUN)-between --init-from $(SHIPPED_RUN)-crop/model.pt \
		--epochs 0,0,7 --crop 64 --lr 2e-4 --loss-norm-db -30 --between-weight 4
	$(PY) -m sing_synth train $(SHIPPED_OPTS) --out $(SHIPPED_RUN)-between --epochs 0,0,15 --crop 64 --lr 1e-4 \
		--loss-norm-db -30 --between-weight 4
	$(PY) -m sing_synth train $(SHIPPED_OPTS) --out $(SHIPPED_RUN)-between --epochs 0,0,18 --crop 64 --lr 5e-5 \
		--loss-norm-db -30 --between-weight 4
	$(PY) -m sing_synth train $(SHIPPED_OPTS) $(STAGE6_OPTS) --out $(SHIPPED_RUN)-low \
		--init-from $(SHIPPED_RUN)-between/model.pt --epochs 0,0,8 --lr 1e-4
	$(PY) -m sing_synth train $(SHIPPED_OPTS) $(STAGE6_OPTS) --out $(SHIPPED_RUN)-low --epochs 0,0,14 --lr 1e-4 \
		--train-split train+valid
	$(PY) -m sing_synth train $(SHIPPED_OPTS) $(STAGE6_OPTS) --out $(SHIPPED_RUN)-low --epochs 0,0,22 --lr 5e-5 \
		--train-split train+valid --oversample drawbarorgan=3
	$(PY) -m sing_synth convert $(SHIPPED_RUN)-low/model.pt models/sing-small-fluidr3.pt --half
