"""Note-on -> first sound through one JACK server: sing-synth (cached, not cached) and FluidSynth.

    python -m bench.latency [--notes 200] [--periods 256 64] [--checkpoint PATH | --test-tone]
                            [--synths sing stored portaudio busy program fluidsynth]
                            [--gpu-emulation RENDER_MS URGENT_MS]

One `jackd -d dummy` server per period (48 kHz); the same JACK MIDI client (`jack_rig.MidiSender`)
sends the notes to each synth in turn and a JACK capture client (`jack_rig.Capture`) finds each
note's first sample above -80 dBFS.  Both are on JACK's frame clock: the latency is the frame of
that sample minus the frame of the period the note-on entered the graph in (the MIDI transport
inside one JACK graph is 0 frames: the sender runs before the synth in the same cycle).  After
each note, all-sound-off and a wait for silence, so every onset starts from silence.

Rows (sing-synth with ``--audio-api jack`` unless marked PortAudio):
- not cached, idle renderer: ``--no-prewarm``, distinct piano keys, each rendered when played;
- cached: the same keys again (now in the cache); FluidSynth plays the same keys;
- not cached, in the note store: a new sing-synth on the note store the first one wrote (its
  own folder): the same keys, not in memory, each read from disk and resampled when played;
- not cached, prewarm running: the start preset prewarms, and every 8 notes a program change
  selects another preset (whose prewarm is queued too); the notes are that preset's
  velocity-25 layer, which its prewarm renders last.  Then the same notes again, now cached:
  each one's onset there is the note's own attack (a pad at velocity 25 takes up to ~115 ms to
  rise above -80 dBFS, on any synth that plays it faithfully), which is taken off its first
  onset.  Notes found cached the first time (less than a period late once the attack is off:
  one rendered on demand starts a period later at the earliest) are left out and counted.
  The row's note gives the onsets with the attack left in.
- not cached, right after a program change: each preset's middle key played just after its
  program change, when the preset's prewarm has that very key in its first batch (the key is
  taken out of the batch and rendered at once); its attack, from the cache, taken off.

``--gpu-emulation``: sing-synth's rows run on `bench.gpu_emulation` (the model's steps replaced by
waits of a GPU's length, the GPU's prewarm batch), labelled "sing-synth (GPU emulated)".
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from . import common
from . import jack_rig as R

FLOOR = 1e-4              # |sample| above this is sound (-80 dBFS)
RATE = 48000
LAYERS = (100, 127, 75, 50, 25)
PIANO_RANGE = (24, 96)


@dataclass(frozen=True)
class Sing:
    """How sing-synth starts for a row: its label and command (None: run_synth.py)."""
    label: str = "sing-synth"
    command: tuple = None

    @classmethod
    def gpu_emulated(cls, render_ms: float, urgent_ms: float) -> "Sing":
        return cls("sing-synth (GPU emulated)",
                   (sys.executable, "-u", "-m", "bench.gpu_emulation", "--render-ms", str(render_ms),
                    "--urgent-render-ms", str(urgent_ms), "--"))

    def synth(self, args, sender, cap) -> R.Synth:
        return R.Synth(args, sender, cap, command=list(self.command) if self.command else None)


@dataclass
class Latencies:
    synth: str
    case: str
    period: int
    frames: list = field(default_factory=list)   # None: no sound within the timeout
    left_out: int = 0                              # not-cached notes found cached
    note: str = ""

    @property
    def measured(self) -> list:
        return [f for f in self.frames if f is not None]

    def ms(self, q) -> float:
        return common.percentile([f / RATE * 1e3 for f in self.measured], q)

    @property
    def missing(self) -> int:
        return sum(f is None for f in self.frames)


# ------------------------------------------------------------------------------------ notes
def piano_keys(n: int) -> list:
    """``n`` distinct (channel, pitch, velocity) piano keys, pitches spread over the range."""
    lo, hi = PIANO_RANGE
    width = hi - lo + 1
    keys = []
    for i in range(n):
        layer = LAYERS[(i // width) % len(LAYERS)]
        keys.append((0, lo + (i * 29) % width, layer))     # 29 is prime to 73: a permutation
    return keys


def busy_notes(n: int, per_preset=8) -> list:
    """(program change or None, channel, pitch, velocity): blocks of ``per_preset`` notes of one
    non-piano preset at velocity 25, a program change starting each block."""
    from sing_synth.presets import load_presets
    presets = [p for p in load_presets().values() if p.program != 0]
    notes = []
    for i in range(n):
        preset = presets[(i // per_preset) % len(presets)]
        lo, hi = preset.pitch_range
        k = i % per_preset
        rounds = i // (per_preset * len(presets))       # > 0 only past every preset
        pitch = lo + (k * (hi - lo + 1) // per_preset + rounds) % (hi - lo + 1)
        notes.append((preset.program if k == 0 else None, 1, pitch, 25))
    return notes


def program_notes(n: int) -> list:
    """(program, channel, pitch, velocity): each preset's middle key at velocity 100, the first
    note its prewarm renders, each right after its program change, the presets in turn."""
    from sing_synth.engine.renderer import prewarm_order
    from sing_synth.presets import load_presets
    presets = list(load_presets().values())
    return [(p.program, 3, prewarm_order(p.pitch_range)[0], 100)
            for p in (presets[i % len(presets)] for i in range(n))]


# ------------------------------------------------------------------------------------ playing
def wait_silence(cap, timeout=2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        start = cap.wait_seconds(0.01)
        if abs(cap.since(start)).max(initial=0) < FLOOR:
            return True
    return False


def play_one(sender, cap, channel, pitch, velocity, timeout_s=3.0):
    """Note-on; frames from its period to the first sound (None: none within ``timeout_s``);
    then note-off, all-sound-off and silence."""
    f = sender.send(sender.note_on(pitch, velocity, channel))
    step = int(0.02 * RATE)
    end, last = f + step, f + int(timeout_s * RATE)
    onset = None
    while onset is None and end <= last:
        cap.wait_until(end)
        onset = R.onset(cap.since(f, end), FLOOR)
        end += step
    sender.send(sender.note_off(pitch, channel), sender.cc(120, 0, channel))
    wait_silence(cap)
    return onset


def play_keys(sender, cap, keys, timeout_s=3.0) -> list:
    return [play_one(sender, cap, ch, pitch, vel, timeout_s) for ch, pitch, vel in keys]


def play_busy(sender, cap, notes, timeout_s=3.0) -> list:
    out = []
    for program, ch, pitch, vel in notes:
        if program is not None:
            sender.send(sender.program(program, ch))
        out.append(play_one(sender, cap, ch, pitch, vel, timeout_s))
    return out


def warm_up(sender, cap) -> None:
    """Three notes outside the measured keys (first renders set up oneDNN's kernels)."""
    for pitch in (40, 52, 64):
        play_one(sender, cap, 2, pitch, 100, timeout_s=5.0)


# ------------------------------------------------------------------------------------ synths
def missed(cap) -> str:
    """The capture client's missed cycles: read as silence, they can only make a note later."""
    return f"capture missed {cap.gaps} cycles"


def run_sing(period, checkpoint, keys, audio_api="jack", store="off", log=common.log,
             sing=Sing()) -> list:
    """Not cached (idle renderer) then cached, on one sing-synth with ``--no-prewarm``;
    ``store``: its note store (written, never read: every key is new to it)."""
    label = sing.label if audio_api == "jack" else f"{sing.label} (PortAudio + rtmidi)"
    cold, warm, xruns, gaps = _sing_pass(period, checkpoint, keys, audio_api, store, label,
                                         ("not cached, idle renderer", "cached"), log, sing)
    for r in (cold, warm):
        r.note = f"xruns {xruns}; {gaps}"
    return [cold, warm]


def run_sing_stored(period, checkpoint, keys, store, log=common.log, sing=Sing()) -> Latencies:
    """The same keys on a new sing-synth whose note store (``store``) has them: not in memory,
    each read from disk and resampled when its key is pressed."""
    stored, _, xruns, gaps = _sing_pass(period, checkpoint, keys, "jack", store, sing.label,
                                        ("not cached, in the note store", "cached"), log, sing)
    stored.note = f"xruns {xruns}; {gaps}"
    return stored


def _sing_pass(period, checkpoint, keys, audio_api, store, label, cases, log, sing) -> tuple:
    """``keys`` twice on one sing-synth with ``--no-prewarm``: the first and second passes'
    `Latencies`, its last xrun count and the capture's missed cycles."""
    sender, cap = R.MidiSender(), R.Capture()
    try:
        args = common.sing_command(checkpoint, period, f"bench-sing-{audio_api}", "--no-prewarm",
                                   audio_api=audio_api, store=store)
        with sing.synth(args, sender, cap) as synth:
            time.sleep(0.3)
            warm_up(sender, cap)
            first = Latencies(label, cases[0], period, play_keys(sender, cap, keys))
            log(f"  {label} p{period}: {cases[0]} p50 {first.ms(50):.1f} ms")
            second = Latencies(label, cases[1], period, play_keys(sender, cap, keys))
            log(f"  {label} p{period}: {cases[1]} p50 {second.ms(50):.2f} ms")
            xruns = synth.status_values("xruns")
        return first, second, xruns[-1] if xruns else "?", missed(cap)
    finally:
        sender.close()
        cap.close()


def attack_removed(frames, attacks, period) -> tuple:
    """(each note's onset less its attack, its onset) for the notes that were not cached.

    ``frames``: first onsets; ``attacks``: the same notes' onsets from the cache (None: no
    sound).  With --audio-api jack a cached note sounds in its note-on's period; one rendered on
    demand starts one period later at the earliest (its note-on's period is mixed by then), so a
    note less than a period late came from the cache (its preset's prewarm got there)."""
    late = [None if f is None or a is None else f - a for f, a in zip(frames, attacks)]
    kept = [i for i, f in enumerate(late) if f is None or f >= period]
    return [late[i] for i in kept], [frames[i] for i in kept]


def run_sing_busy(period, checkpoint, notes, log=common.log, sing=Sing()) -> Latencies:
    """Not cached while the renderer prewarms (start preset, then every preset played), less
    each note's own attack (its onset when played again from the cache)."""
    def passes(sender, cap, synth):
        frames = play_busy(sender, cap, notes)
        prewarm = [line for line in synth.status_lines() if "prewarm=" in line]
        attacks = play_busy(sender, cap, notes)
        last = prewarm[-1].split("prewarm=")[1].split()[0] if prewarm else "?"
        return frames, attacks, f"prewarm at the end {last}"
    # a cache that holds every note, so that the second pass finds each one there
    return _row_less_attack(period, checkpoint, "bench-sing-busy", ("--cache-mb", "2048"),
                            "not cached, prewarm running", passes, log, sing)


def run_sing_program(period, checkpoint, notes, log=common.log, sing=Sing()) -> Latencies:
    """Each note right after its program change: its preset's prewarm begins with that very key
    (the middle key), so the note is in the first prewarm batch when its note-on comes.  Played
    again at once (now cached) for its own attack, which is taken off.  A 16 MiB cache (~20
    notes) lets each preset's prewarm evict the notes of the presets before it, so every round
    renders."""
    def passes(sender, cap, synth):
        frames, attacks = [], []
        for program, ch, pitch, vel in notes:
            sender.send(sender.program(program, ch))
            frames.append(play_one(sender, cap, ch, pitch, vel))
            attacks.append(play_one(sender, cap, ch, pitch, vel))
        xruns = synth.status_values("xruns")
        return frames, attacks, f"xruns {xruns[-1] if xruns else '?'}"
    return _row_less_attack(period, checkpoint, "bench-sing-program",
                            ("--no-prewarm", "--cache-mb", "16"),
                            "not cached, right after a program change", passes, log, sing)


def _row_less_attack(period, checkpoint, name, extra, case, passes, log, sing) -> Latencies:
    """One sing-synth with the options ``extra``; ``passes(sender, cap, synth)`` plays the notes
    and returns their first onsets, the same notes' onsets from the cache (their own attack)
    and a word on the run.  The row: the first onsets less the attacks (`attack_removed`)."""
    sender, cap = R.MidiSender(), R.Capture()
    try:
        args = common.sing_command(checkpoint, period, name, *extra)
        with sing.synth(args, sender, cap) as synth:
            time.sleep(0.3)
            warm_up(sender, cap)
            frames, attacks, about = passes(sender, cap, synth)
        late, first = attack_removed(frames, attacks, period)
        result = Latencies(sing.label, case, period, late, left_out=len(frames) - len(late))
        raw = Latencies("", "", period, first)
        result.note = (f"the notes' own attack taken off (with it: p50 {common.fmt(raw.ms(50))}, "
                       f"p99 {common.fmt(raw.ms(99))}, max {common.fmt(raw.ms(100))} ms); {about}; "
                       f"{missed(cap)}")
        log(f"  {sing.label} p{period}: {case} p50 {result.ms(50):.1f} ms")
        return result
    finally:
        sender.close()
        cap.close()


def run_fluidsynth(period, keys, log=common.log) -> Latencies:
    sender, cap = R.MidiSender(), R.Capture()
    try:
        with R.Synth([], sender, cap, command=common.fluidsynth_command("bench-fluid"),
                     ready_line=False, stdin=subprocess.PIPE) as synth:
            time.sleep(0.5)
            for pitch in (40, 52, 64):               # the same warm-up as sing-synth's
                play_one(sender, cap, 2, pitch, 100)
            result = Latencies("FluidSynth", "(sample playback)", period,
                               play_keys(sender, cap, keys))
            assert synth.alive()
        result.note = missed(cap)
        log(f"  FluidSynth p{period}: p50 {result.ms(50):.2f} ms")
        return result
    finally:
        sender.close()
        cap.close()


SYNTHS = ("sing", "stored", "portaudio", "busy", "program", "fluidsynth")
PROGRAM_NOTES = 48     # rounds of the program-change row (two notes each)


def run(periods=(256, 64), notes=200, checkpoint=None, busy_periods=(256,), synths=SYNTHS,
        sing=Sing()) -> list:
    """Every row, for every period; returns a list of `Latencies`.  ``checkpoint`` None:
    sing-synth plays its test tone (the rig's check, no model); ``sing``: how it starts."""
    results = []
    for period in periods:      # one server, and one process (`common.isolated`), per period
        results += common.isolated(period_rows, period, notes, checkpoint,
                                   period in busy_periods, tuple(synths), sing)
    return results


def period_rows(period, notes, checkpoint, busy, synths, sing=Sing()) -> list:
    keys = piano_keys(notes)
    results = []
    with common.jack_server(period), tempfile.TemporaryDirectory(prefix="singbench-store-") as store:
        if "sing" in synths or "stored" in synths:
            rows = run_sing(period, checkpoint, keys, "jack", store=store, sing=sing)
            results += rows if "sing" in synths else []
        if "stored" in synths and checkpoint is not None:
            results.append(run_sing_stored(period, checkpoint, keys, store, sing=sing))
        if "portaudio" in synths:
            results += run_sing(period, checkpoint, keys, "portaudio", sing=sing)[1:]
        if "busy" in synths and busy:
            results.append(run_sing_busy(period, checkpoint, busy_notes(notes), sing=sing))
        if "program" in synths and busy and checkpoint is not None:
            results.append(run_sing_program(period, checkpoint, program_notes(min(notes, PROGRAM_NOTES)),
                                            sing=sing))
        if "fluidsynth" in synths:
            results.append(run_fluidsynth(period, keys))
    return results


HEADER = ("synth", "note", "period", "notes", "p50 ms", "p99 ms", "max ms", "p50 periods",
          "no sound", "note")


def markdown(results) -> str:
    rows = []
    for r in results:
        rows.append((r.synth, r.case, r.period, len(r.measured), common.fmt(r.ms(50)),
                     common.fmt(r.ms(99)), common.fmt(r.ms(100)),
                     common.fmt(r.ms(50) / (r.period / RATE * 1e3)),
                     r.missing, r.note + (f"; {r.left_out} found cached, left out" if r.left_out else "")))
    return common.table(HEADER, rows, ["l", "l"] + ["r"] * 7 + ["l"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.splitlines()[0])
    p.add_argument("--notes", type=int, default=200)
    p.add_argument("--periods", type=int, nargs="+", default=[256, 64])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--test-tone", action="store_true",
                   help="sing-synth plays its built-in tone (checks the rig; no model)")
    p.add_argument("--synths", nargs="+", choices=SYNTHS, default=list(SYNTHS),
                   help="rows to run: sing (JACK backend), stored (not cached, in the note store), "
                        "portaudio, busy (prewarm running), program (right after a program "
                        "change), fluidsynth")
    p.add_argument("--gpu-emulation", type=float, nargs=2, default=None,
                   metavar=("RENDER_MS", "URGENT_MS"),
                   help="sing-synth in a GPU's regime (bench.gpu_emulation): its model's steps "
                        "replaced by waits of RENDER_MS per 32-note prewarm batch and URGENT_MS per "
                        "urgent batch (an H100's graphed small model: 3 2)")
    args = p.parse_args(argv)
    if args.notes < 1 or any(x < 16 for x in args.periods):
        p.error("--notes must be >= 1 and --periods >= 16")
    if args.gpu_emulation and (args.test_tone or min(args.gpu_emulation) < 0):
        p.error("--gpu-emulation takes two waits >= 0 ms, and a model (not --test-tone)")
    sing = Sing.gpu_emulated(*args.gpu_emulation) if args.gpu_emulation else Sing()

    def text():
        if args.test_tone:
            ckpt, label = None, "none: sing-synth's test tone"
        else:
            ckpt, label = common.bench_checkpoint(args.checkpoint)
        results = run(args.periods, args.notes, ckpt, synths=args.synths, sing=sing)
        return f"checkpoint: {label}\n\n{markdown(results)}"
    return common.print_or_error(text)

if __name__ == "__main__":
    sys.exit(main())
