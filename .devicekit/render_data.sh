#!/usr/bin/env bash
# The shipped model's dataset (Makefile target shipped-model, first step) from the kit's trimmed
# FluidR3_GM, then a check against the fingerprint of data/fluidr3-shipped made where it was built:
#
#   source .devicekit/setup.sh && bash .devicekit/render_data.sh data/device-fluidr3
#
# Exit status: 0 rendered and identical; 1 rendering failed; 3 rendered but NOT identical (the
# dataset is still there, usable; the lines above say what differs).  KIT_NO_CHECK=1 skips the check.
set -uo pipefail
out=${1:?usage: render_data.sh OUT}
kit="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$kit/.." || exit 1                     # the repo root: sing_synth importable
py=${PYTHON:-python3}
sf2=${KIT_SF2:-/tmp/kitsf/FluidR3_GM.sf2}
# instrument names are "<soundfont stem>_<program>_<preset>": the stem must be FluidR3_GM
[ "$(basename "$sf2")" = FluidR3_GM.sf2 ] || { echo "[render] $sf2: must be named FluidR3_GM.sf2" >&2; exit 1; }
[ -f "$sf2" ] || { echo "[render] $sf2 missing: source .devicekit/setup.sh first" >&2; exit 1; }
programs=$("$py" -c "from sing_synth.presets import SHIPPED_PROGRAMS as p; print(','.join(map(str, p)))") || exit 1
t0=$(date +%s)
echo "[render] $py -m sing_synth dataset soundfont --sf2 $sf2 --out $out --pitch-range 24 96 --programs $programs"
"$py" -m sing_synth dataset soundfont --sf2 "$sf2" --out "$out" --pitch-range 24 96 --programs "$programs" \
    || { echo "[render] FAILED" >&2; exit 1; }
echo "[render] rendered in $(( $(date +%s) - t0 )) s"
[ -n "${KIT_NO_CHECK:-}" ] && exit 0
"$py" "$kit/make_kit.py" digest "$out" --check "$kit/fluidr3-shipped.digest.json" || exit 3
