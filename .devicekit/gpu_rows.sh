#!/bin/bash
# One device call for issue 5's GPU rows only (no training): the live renderer on CUDA, keys
# pressed in flight, note-on -> sound through JACK (idle, prewarm running, after a program
# change, from the note store), and the full-size notes/s.  Needs the kit's built parts
# (`.venv/bin/python .devicekit/make_kit.py all`, ~70 s) and carry: [".devicekit"].
# Usage (repo root, on the device): bash .devicekit/gpu_rows.sh [NOTES]   (~6 min with 50 notes)
# Results: $OUT/gpu-rows.tgz (markdown tables and logs), the tables also on stdout.
T0=$(date +%s)
NOTES=${1:-50}
export PYTHONUNBUFFERED=1
L=/tmp/L; rm -rf $L; mkdir -p $L
log() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a $L/steps.log; }
pack() { tar czf $OUT/gpu-rows.tgz -C /tmp L; }
log "start"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc;
  python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } > $L/env.txt 2>&1
source .devicekit/setup.sh > $L/kit.log 2>&1; log "kit rc $?"
git rev-parse --short HEAD > $L/commit.txt 2>/dev/null
timeout 120 python3 -m bench.render --device cuda --sizes small --batches 1 --paths graphed --min-time 0 \
  --urgent 100 --prewarm piano --in-flight 60 --markdown $L/live-cuda.md > $L/live.log 2>&1
log "live renderer rc $?"; pack
timeout 300 python3 -m bench.latency --synths sing busy program stored --periods 256 64 --notes $NOTES \
  > $L/latency.md 2> $L/latency.log
log "latency rc $?"; pack
timeout 90 python3 -m bench.render --device cuda --sizes full --batches 256 1024 --paths graphed \
  --dtypes bf16 --min-time 0.3 --markdown $L/render-cuda.md > $L/render.log 2>&1
log "render rc $?"; pack
cat $L/live-cuda.md $L/latency.md $L/render-cuda.md 2>/dev/null
log "end"; pack
