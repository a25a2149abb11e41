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
# The install compiles the mixer's block (setup.py, sing_synth/engine/_mixc.c) with the C compiler.
$(STAMP): $(PY) pyproject.toml setup.py sing_synth/engine/_mixc.c
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
# Every stage has the phase inputs and the comb term (PHASE_OPTS: the bass off the decoder's 62.5 Hz
# frame rate).  Stage 1: the three phases on whole notes; stage 2: end to end on 64-frame crops
# (~3x faster steps) from stage 1's fp16 weights; stage 3: a new run from stage 2's fp16 weights at
# lr 3e-4; stage 4: a new run from stage 3's weights with the loss that places the bass (BASS_OPTS:
# a 16384-point STFT term on 80-frame crops, the comb term 10x) and that keeps quiet notes and the
# bins between the harmonics in it (every note weighed at -30 dB RMS, the bins between each note's
# harmonics 4x, from 40 Hz under high notes), 3 epochs, then on with MIDI 33-39 (the pitches next to
# the 62.5 Hz tooth) drawn 3x to epoch 10, then at lr 1e-4 on train+valid (a final model: the test
# split stays held out for `sing-synth eval`).  Last, `calibrate` stores each instrument's level
# correction (sing_synth/levels.py), measured on the notes it trained on.  Every step is resumable:
# run it again after a kill.
# To train the shipped model further: `sing-synth train ... --init-from models/sing-small-fluidr3.pt
# --epochs 0,0,N --lr 5e-5 --train-split train+valid $(BASS_OPTS)`, then `calibrate` again.
SF2 ?= /usr/share/sounds/sf2/FluidR3_GM.sf2
SHIPPED_DATA ?= data/fluidr3-shipped
SHIPPED_RUN ?= runs/shipped
SHIPPED_OPTS = --data $(SHIPPED_DATA) --size small --seed 0 --batch-size 16 --lr 1e-3 --loss mse \
	--resolutions 1024,4096 --phase-harmonics 8 --comb-weight 0.1 --resume
BASS_OPTS = --resolutions 1024,4096,16384 --crop 80 --comb-weight 1 --loss-norm-db -30 --between-weight 4 \
	--between-low-hz 40
shipped-model: $(STAMP)
	$(PY) -m sing_synth dataset soundfont --sf2 $(SF2) --out $(SHIPPED_DATA) --pitch-range 24 96 \
		--programs $$($(PY) -c "from sing_synth.presets import SHIPPED_PROGRAMS as p; print(','.join(map(str, p)))")
	$(PY) -m sing_synth train $(SHIPPED_OPTS) --out $(SHIPPED_RUN) --epochs 2,2,2
	$(PY) -m sing_synth convert $(SHIPPED_RUN)/model.pt $(SHIPPED_RUN)/stage1-half.pt --half
	$(PY) -m sing_synth train $(SHIPPED_OPTS) --out $(SHIPPED_RUN)-crop --init-from $(SHIPPED_RUN)/stage1-half.pt \
		--epochs 0,0,16 --crop 64
	$(PY) -m sing_synth convert $(SHIPPED_RUN)-crop/model.pt $(SHIPPED_RUN)-crop/stage2-half.pt --half
	$(PY) -m sing_synth train $(SHIPPED_OPTS) --out $(SHIPPED_RUN)-anneal --init-from $(SHIPPED_RUN)-crop/stage2-half.pt \
		--epochs 0,0,6 --crop 64 --lr 3e-4
	$(PY) -m sing_synth train $(SHIPPED_OPTS) $(BASS_OPTS) --out $(SHIPPED_RUN)-bass \
		--init-from $(SHIPPED_RUN)-anneal/model.pt --epochs 0,0,3 --lr 3e-4
	$(PY) -m sing_synth train $(SHIPPED_OPTS) $(BASS_OPTS) --out $(SHIPPED_RUN)-bass --epochs 0,0,10 --lr 3e-4 \
		--oversample-pitches 33-39=3
	$(PY) -m sing_synth train $(SHIPPED_OPTS) $(BASS_OPTS) --out $(SHIPPED_RUN)-bass --epochs 0,0,11 --lr 1e-4 \
		--oversample-pitches 33-39=3 --train-split train+valid
	$(PY) -m sing_synth convert $(SHIPPED_RUN)-bass/model.pt models/sing-small-fluidr3.pt --half
	$(PY) -m sing_synth calibrate --checkpoint models/sing-small-fluidr3.pt --data $(SHIPPED_DATA)
