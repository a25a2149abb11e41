#!/bin/bash
# One device call: GPU benchmark rows (issue 5), then the GPU training runs (issue 3), time-boxed,
# one after the other. Needs the kit's built parts (make_kit.py all) and carry: [".devicekit"].
# Usage (repo root, on the device): bash .devicekit/run_all.sh TOTAL_SECONDS
T0=$(date +%s)
TOTAL=${1:-560}
export PYTHONUNBUFFERED=1
L=/tmp/L; rm -rf $L; mkdir -p $L
el() { echo $(( $(date +%s) - T0 )); }
log() { echo "[$(el)s] $*" | tee -a $L/steps.log; }
pack() { tar czf $OUT/logs.tgz -C /tmp L; }
log "start"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc; free -g | head -2;
  python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), 'cudnn', torch.backends.cudnn.version())"; } > $L/env.txt 2>&1
source .devicekit/setup.sh > $L/kit.log 2>&1; KIT=$?
log "kit rc $KIT"
imports() { for m in fluidsynth soundfile soxr mido rtmidi jack sounddevice; do
  JACK_NO_START_SERVER=1 timeout 20 python3 -c "import $m" > $L/imp-$m.log 2>&1; echo -n "$m=$? "; done; echo; }
IMP=$(imports); log "imports: $IMP"
if ! echo "$IMP" | grep -q "fluidsynth=0"; then
  export KIT_NO_PRUNE=1; source .devicekit/setup.sh > $L/kit2.log 2>&1; KIT=$?
  IMP=$(imports); log "no-prune kit rc $KIT imports: $IMP"
fi
echo "$IMP" | grep -q "fluidsynth=0" && KIT=0 || KIT=1
# sing-synth's JACK rows (--audio-api jack) need JACK-Client and rtmidi, not sounddevice
JACKOK=0; echo "$IMP" | grep -q "jack=0" && echo "$IMP" | grep -q "rtmidi=0" && JACKOK=1
DATA_OK=0
if [ $KIT = 0 ]; then
  timeout 120 bash .devicekit/render_data.sh data/device-fluidr3 > $L/data.log 2>&1; rc=$?
  { [ $rc = 0 ] || [ $rc = 3 ]; } && DATA_OK=1
  log "data rc $rc notes=$(python3 -c "import json;print(len(json.load(open('data/device-fluidr3/examples.json'))))" 2>/dev/null)"
fi
pack
if [ "${SKIP_RENDER:-}" = "" ]; then
timeout 150 python3 -m bench.render --device cuda --sizes full base small --batches 1 8 64 256 1024 \
  --paths reference fast graphed --dtypes bf16 fp16 --min-time 0.3 --markdown $L/render-cuda.md > $L/render.log 2>&1
log "render bench rc $?"
pack
fi
if echo "$IMP" | grep -q "soxr=0"; then
  [ -z "${SKIP_LIVE:-}" ] && timeout 60 python3 -m bench.render --device cuda --sizes small --batches 1 --paths fast --min-time 0 \
    --urgent 100 --prewarm piano --markdown $L/live-cuda.md > $L/live.log 2>&1
  log "live rc $?"
  if [ $JACKOK = 1 ]; then
  timeout 80 python3 -m bench.latency --synths sing busy --periods 256 64 --notes 30 > $L/latency.md 2> $L/latency.log
  log "latency rc $?"
  fi
  pack
fi
if [ $DATA_OK = 1 ]; then
  LEFT=$(( TOTAL - $(el) - 30 ))
  log "training for ${LEFT}s"
  M() { python3 -c "print(round($1/60, 3))"; }
  # `small` from scratch with phase inputs and the comb term (issue 3: the bass); the weights come
  # back in parts and training goes on from them on a CPU (--init-from). One job at a time: two
  # launch-bound trainings on one GPU ran 5x slower each (2026-11-26).
  # The shipped model's stage 1 and 2 losses: with --loss-norm-db -30 and an 8192-point term from
  # scratch the H100's autoencoder stayed silent (2026-11-27); without them it learns (CPU, same day).
  O="python3 -m sing_synth train --data data/device-fluidr3 --size small --seed 0 --loss mse --resolutions 1024,4096 --phase-harmonics 8 --comb-weight 0.1 --resume --no-progress"
  $O --out runs/phase-gpu --epochs 2,2,2 --batch-size 16 --lr 1e-3 --time-limit $(M $((LEFT*45/100))) > $L/phase.log 2>&1
  log "phases done rc $?"
  $O --out runs/phase-gpu-crop --init-from runs/phase-gpu/model.pt --epochs 0,0,999 --crop 64 --batch-size 32 \
    --lr 1e-3 --time-limit $(M $(( TOTAL - $(el) - 40 ))) > $L/crop.log 2>&1
  log "crop done rc $?"
  cp runs/phase-gpu/metrics.csv $L/phase-metrics.csv; cp runs/phase-gpu-crop/metrics.csv $L/crop-metrics.csv
  split -b 12M -d runs/phase-gpu-crop/model.pt $OUT/phase-crop.pt.part
  log "split"
fi
ls -la $OUT >> $L/steps.log
log "end"
pack
