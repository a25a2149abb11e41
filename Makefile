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

bench: $(STAMP)
	$(PY) -m bench.render

clean:
	rm -rf $(VENV) build *.egg-info

# The default model: FluidR3_GM's programs named by the presets (sing_synth.presets.SHIPPED_PROGRAMS),
# MIDI 24-96, `small` size, on this CPU. Every step is resumable: run it again after a kill.
SF2 ?= /usr/share/sounds/sf2/FluidR3_GM.sf2
SHIPPED_DATA ?= data/fluidr3-shipped
SHIPPED_RUN ?= runs/shipped
SHIPPED_EPOCHS ?= 10,6,10
shipped-model: $(STAMP)
	$(PY) -m sing_synth dataset soundfont --sf2 $(SF2) --out $(SHIPPED_DATA) --pitch-range 24 96 \
		--programs $$($(PY) -c "from sing_synth.presets import SHIPPED_PROGRAMS as p; print(','.join(map(str, p)))")
	$(PY) -m sing_synth train --data $(SHIPPED_DATA) --out $(SHIPPED_RUN) --size small --seed 0 \
		--epochs $(SHIPPED_EPOCHS) --batch-size 16 --lr 1e-3 --loss mse --resolutions 1024,4096 --resume
	$(PY) -m sing_synth convert $(SHIPPED_RUN)/model.pt models/sing-small-fluidr3.pt --half
