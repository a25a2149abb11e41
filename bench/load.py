"""sing-synth's background load without its audio: the renderer prewarming, for a reference synth
to run beside.

    python -m bench.load --checkpoint PATH --seconds 70 [--program-every 4]

The soak holds 128 voices in sing-synth while its renderer prewarms (a program change every 4 s
queues a preset's notes).  FluidSynth has no such load, so a late cycle in its soak and one in
sing-synth's are not measured on the same machine state.  This runs the same renderer load --
`play.Instrument` built from run_synth.py's own options, its start-up warm-up and prewarm, the
program changes on the soak's schedule, finished notes collected by the main loop -- in a
process of its own with no JACK client and no audio, so FluidSynth can be soaked under it.
It prints ``ready:`` once warmed up and exits after ``--seconds`` (or at SIGINT).
"""
from __future__ import annotations

import argparse
import sys
import time

from sing_synth.errors import UserError

PROGRAM_CHANNEL = 5        # the soak's program changes go to this channel (0-based)


def soak_programs() -> list:
    """The shipped presets' GM programs the soak cycles through (not piano, not the organ the
    soak holds)."""
    from sing_synth.presets import load_presets
    from .mixer import ORGAN
    return [p.program for p in load_presets().values() if p.program not in (0, ORGAN)]


def run(checkpoint, seconds: float, program_every=4.0, rate=48000, period=256,
        ready=lambda: None) -> dict:
    """The renderer load for ``seconds``; returns the program changes sent and the notes rendered
    meanwhile.  ``ready()`` is called once the instrument has warmed up and its start preset's
    prewarm is queued."""
    from sing_synth import play
    args = play.build_parser().parse_args(
        ["--checkpoint", str(checkpoint), "--preset", "organ", "--blocksize", str(period),
         "--note-store", "off"])     # as the soaked sing-synth (common.sing_command): it renders
    presets, preset = play._presets(args)
    play._return_freed_notes()
    inst = play.Instrument(args, rate, presets, preset, play._checkpoint_path(args), blocksize=period)
    switch = sys.getswitchinterval()
    programs = soak_programs()
    sent = 0
    try:
        sys.setswitchinterval(play.SWITCH_INTERVAL_S)     # as the live instrument runs
        inst.warm_up()
        inst.controller.prewarm()
        ready()
        rendered0 = inst.renderer.status()["rendered"]
        t0 = time.monotonic()
        next_program = t0
        while time.monotonic() - t0 < seconds:
            if time.monotonic() >= next_program:
                program = programs[sent % len(programs)]
                inst.handle(bytes([0xC0 | PROGRAM_CHANNEL, program]))
                sent, next_program = sent + 1, next_program + program_every
            time.sleep(0.1)
            inst.mixer.collect()
        status = inst.renderer.status()
        return {"programs": sent, "rendered": status["rendered"] - rendered0, "stored": status["stored"]}
    finally:
        inst.close()
        sys.setswitchinterval(switch)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--seconds", type=float, default=70.0)
    p.add_argument("--program-every", type=float, default=4.0)
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.program_every <= 0:
        p.error("--seconds and --program-every > 0")
    try:
        done = run(args.checkpoint, args.seconds, args.program_every,
                   ready=lambda: print("ready: renderer load", flush=True))
    except UserError as exc:
        print(f"bench.load: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    print(f"program changes: {done['programs']}, notes rendered: {done['rendered']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
