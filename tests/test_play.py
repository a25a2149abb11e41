"""sing_synth.play: offline rendering (test tone and a tiny SING), the one-line errors, and the
live path with a fake audio module and a fake MIDI backend."""
import re
import threading
import time

import mido
import numpy as np
import pytest
import soundfile
import torch

from sing_synth import midi, play
from sing_synth.checkpoint import save_checkpoint
from sing_synth.config import SingConfig
from sing_synth.demo import DEMO_PATH, make_demo
from sing_synth.engine.tone import ToneRenderer, tone
from sing_synth.model import SING
from sing_synth.presets import SHIPPED_PROGRAMS, load_presets

from test_midi import FakeBackend

torch.set_num_threads(1)


def midi_notes(path):
    """(channel, pitch, start s, end s) of every note of a MIDI file."""
    notes, held, now = [], {}, 0.0
    for msg in mido.MidiFile(str(path)):
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            held[(msg.channel, msg.note)] = now
        elif msg.type in ("note_off", "note_on"):
            start = held.pop((msg.channel, msg.note), None)
            if start is not None:
                notes.append((msg.channel, msg.note, start, now))
    return notes


def spectrum(segment, rate):
    seg = segment * np.hanning(len(segment))
    n = 8 * len(seg)
    return np.abs(np.fft.rfft(seg, n=n)), rate / n


def hz(pitch):
    return 440.0 * 2 ** ((pitch - 69) / 12)


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sing-synth: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_demo_file_is_what_make_demo_writes(tmp_path):
    again = make_demo(tmp_path / "demo.mid")
    assert midi_notes(again) == midi_notes(DEMO_PATH)
    assert len(midi_notes(DEMO_PATH)) > 20


def test_render_demo_with_test_tone_has_the_files_pitches(tmp_path, capsys):
    out = tmp_path / "demo.wav"
    assert play.main(["--test-tone", "--render-midi", str(DEMO_PATH), "-o", str(out)]) == 0
    assert "real time" in capsys.readouterr().out
    audio, rate = soundfile.read(out)
    assert rate == 48000 and audio.ndim == 2 and audio.shape[1] == 2
    mono = audio.mean(axis=1)
    notes = midi_notes(DEMO_PATH)
    assert len(mono) / rate > max(n[3] for n in notes)
    for channel, pitch, start, end in notes:
        seg = mono[int((start + 0.1) * rate): int(end * rate)]
        mag, df = spectrum(seg, rate)
        alone = not any(o != (channel, pitch, start, end) and o[2] < end and o[3] + 0.1 > start
                        for o in notes)
        if alone:     # the scale: the strongest partial is this note's fundamental
            f0 = np.argmax(mag) * df
            assert abs(1200 * np.log2(f0 / hz(pitch))) < 20, (pitch, f0)
        else:         # chords: a peak at this note's fundamental
            lo, hi = int(hz(pitch) * 2 ** (-0.3 / 12) / df), int(hz(pitch) * 2 ** (0.3 / 12) / df) + 1
            assert mag[lo:hi].max() > 0.05 * mag.max(), (channel, pitch, start)


def test_mixer_option_both_kernels_render_the_same(tmp_path, capsys):
    """``--mixer compiled`` and ``--mixer numpy`` render the demo alike (float32 rounding apart);
    without the compiled build, asking for it is one error line and exit 2."""
    outs = {}
    for kernel in ("compiled", "numpy"):
        outs[kernel] = tmp_path / f"{kernel}.wav"
        assert play.main(["--test-tone", "--mixer", kernel, "--render-midi", str(DEMO_PATH),
                          "-o", str(outs[kernel])]) == 0
    a, _ = soundfile.read(outs["compiled"], dtype="float32")
    b, _ = soundfile.read(outs["numpy"], dtype="float32")
    assert a.shape == b.shape and np.abs(a).max() > 0.1
    np.testing.assert_allclose(a, b, atol=2 / 32768)        # 16-bit WAVs: one LSB apart at most
    capsys.readouterr()
    import sing_synth.engine.mixer as mixer_module
    saved = mixer_module.KERNELS
    mixer_module.KERNELS = ("numpy",)
    try:
        assert play.main(["--test-tone", "--mixer", "compiled", "--render-midi", str(DEMO_PATH),
                          "-o", str(tmp_path / "x.wav")]) == 2
        assert "compiled mixer was not built" in one_error_line(capsys)
    finally:
        mixer_module.KERNELS = saved


def test_program_changes_the_test_tone_timbre():
    def centroid(x):
        mag = np.abs(np.fft.rfft(x[4800:24000]))
        return (mag * np.arange(len(mag))).sum() / mag.sum()
    piano, strings, lead = (tone(60, 100, p, 48000) for p in (0, 48, 81))
    assert len({round(centroid(x)) for x in (piano, strings, lead)}) == 3
    r = ToneRenderer(load_presets(), stream_rate=16000, cache_mb=8)
    try:
        keys = [r.make_key(name, 60, 100) for name in ("fluidr3_gm_000_yamaha_grand_piano",
                                                      "fluidr3_gm_081_saw_wave")]
        assert all(r.request(k) is None for k in keys)
        assert r.wait_idle(5)
        a, b = (r.get(k) for k in keys)
        assert a.shape == b.shape == (64000,) and not np.allclose(a, b)
        assert r.status()["cached_notes"] == 2 and r.status()["misses"] == 2
    finally:
        r.close()


def write_preset(folder, name, program, instrument, **extra):
    lines = [f"name: {name}", f"program: {program}", f"instrument: {instrument}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n")


def tiny_sing(folder):
    """A random-weights SING checkpoint of two instruments and its presets 'keys' (program 0)
    and 'pad' (program 88): (checkpoint path, presets folder)."""
    torch.manual_seed(0)
    config = SingConfig(n_instruments=2, lstm_hidden=16, lstm_layers=1, channels=32)
    ckpt = folder / "tiny.pt"
    save_checkpoint(ckpt, SING(config), {0: "tiny_keys", 1: "tiny_pad"})
    presets = folder / "presets"
    presets.mkdir()
    write_preset(presets, "keys", 0, "tiny_keys", gain=4)
    write_preset(presets, "pad", 88, "tiny_pad", gain=4)
    return ckpt, presets


def test_render_midi_with_a_tiny_sing_checkpoint(tmp_path, capsys):
    ckpt, presets = tiny_sing(tmp_path)
    song = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    track += [mido.Message("note_on", note=60, velocity=100, time=0),
              mido.Message("program_change", channel=1, program=88, time=0),
              mido.Message("note_on", channel=1, note=67, velocity=80, time=0),
              mido.Message("note_off", note=60, time=480),
              mido.Message("note_off", channel=1, note=67, time=0)]
    song.tracks.append(track)
    song.save(str(tmp_path / "song.mid"))
    out = tmp_path / "song.wav"
    argv = ["--checkpoint", str(ckpt), "--presets-dir", str(presets), "--preset", "keys",
            "--render-device", "cpu", "--samplerate", "16000", "--gain", "1",
            "--render-midi", str(tmp_path / "song.mid"), "-o", str(out)]
    code = play.main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # the file's notes, no preset prewarm
    assert " 2 notes rendered, 0 read from the note store" in captured.out, captured.out
    audio, rate = soundfile.read(out)
    assert rate == 16000 and len(audio) >= 0.5 * rate
    assert np.isfinite(audio).all() and np.abs(audio[: rate // 2]).max() > 1e-3
    # again: both notes come back from the note store (~/.cache, here the test's own), and the
    # file is the same; at 48 kHz too (the store keeps the model's rate)
    store = tmp_path / "xdg-cache" / "sing-synth" / "notes"
    assert len(list(store.glob("*/*/*.npy"))) == 2
    again = tmp_path / "again.wav"
    assert play.main(argv[:-1] + [str(again)]) == 0
    assert " 0 notes rendered, 2 read from the note store" in capsys.readouterr().out
    np.testing.assert_array_equal(soundfile.read(again)[0], audio)
    assert play.main(argv[:-4] + ["--samplerate", "48000", "--render-midi", str(tmp_path / "song.mid"),
                                  "-o", str(again)]) == 0
    assert " 0 notes rendered, 2 read from the note store" in capsys.readouterr().out
    # off: rendered again, nothing read
    assert play.main(argv[:-1] + [str(again), "--note-store", "off"]) == 0
    assert " 2 notes rendered, 0 read from the note store" in capsys.readouterr().out
    # a store that cannot be made: one note line, and the notes rendered
    (tmp_path / "blocked").write_bytes(b"")
    assert play.main(argv[:-1] + [str(again), "--note-store", str(tmp_path / "blocked")]) == 0
    captured = capsys.readouterr()
    assert "note: no note store" in captured.err and " 2 notes rendered" in captured.out


def test_list_presets_lists_the_shipped_ones(capsys):
    assert play.main(["--list-presets"]) == 0
    out = capsys.readouterr().out
    shipped = load_presets()
    assert len(out.splitlines()) == len(shipped) >= len(SHIPPED_PROGRAMS)
    for name in shipped:
        assert f" {name} " in out
    assert any(line.startswith("* piano") for line in out.splitlines())


def test_cli_play_subcommand_is_the_same_entry(capsys):
    from sing_synth.cli import main
    assert main(["play", "--list-presets"]) == 0
    assert "piano" in capsys.readouterr().out
    assert main(["play", "--channel", "0"]) == 2
    one_error_line(capsys)


@pytest.mark.parametrize("argv, words", [
    (["--preset", "kazoo"], "unknown preset 'kazoo'"),
    (["--channel", "17"], "1..16"),
    (["--channel", "x"], "1..16"),
    (["--blocksize", "0"], "--blocksize"),
    (["--checkpoint", "/nonexistent/model.pt"], "checkpoint not found"),
    (["--render-midi", "x.mid"], "-o OUT.wav"),
    (["--test-tone", "--render-midi", "/nonexistent.mid", "-o", "x.wav"], "no such MIDI file"),
    (["--port", "a", "--virtual"], "not both"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, capsys):
    assert play.main(argv) == 2
    assert words in one_error_line(capsys)


def test_missing_shipped_model_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(play, "REPO_ROOT", tmp_path)
    assert play.main(["--render-midi", str(DEMO_PATH), "-o", str(tmp_path / "x.wav")]) == 2
    line = one_error_line(capsys)
    assert "make shipped-model" in line and "--checkpoint" in line


def test_bad_preset_file_and_bad_midi_file(tmp_path, capsys):
    (tmp_path / "piano.yaml").write_text("name: piano\nprogram: zero\ninstrument: x\n")
    assert play.main(["--presets-dir", str(tmp_path), "--list-presets"]) == 2
    assert "piano.yaml" in one_error_line(capsys)
    (tmp_path / "bad.mid").write_bytes(b"MThd garbage")
    assert play.main(["--test-tone", "--render-midi", str(tmp_path / "bad.mid"), "-o",
                      str(tmp_path / "x.wav")]) == 2
    assert "not a readable MIDI file" in one_error_line(capsys)


# ---------------------------------------------------------------------------------- live, faked
class FakeStream:
    def __init__(self, samplerate, blocksize, device, channels, dtype, latency, callback):
        self.callback, self.blocksize, self.channels = callback, blocksize, channels
        self.latency = 0.005
        self._stop = threading.Event()
        self._thread = None

    def _run(self):
        out = np.zeros((self.blocksize, self.channels), np.float32)
        while not self._stop.wait(0.002):
            self.callback(out, self.blocksize, None, None)

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join()

    def close(self):
        pass


class FakeSoundDevice:
    def __init__(self, has_output=True):
        self.device = dict(name="Fake Out", index=0, hostapi=0, max_output_channels=2,
                           max_input_channels=0, default_samplerate=48000.0)
        self.has_output = has_output
        self.OutputStream = FakeStream

    def query_devices(self, device=None, kind=None):
        if kind is None and device is None:
            return [self.device] if self.has_output else []
        if not self.has_output or device not in (None, 0, "Fake Out"):
            raise ValueError(f"No output device matching {device!r}")
        return self.device

    def query_hostapis(self):
        return [{"name": "ALSA"}]


@pytest.fixture
def fake_live(monkeypatch):
    backend = FakeBackend(["Midi Through:0", "Keystation 49:0"])
    sd = FakeSoundDevice()
    monkeypatch.setattr(midi, "default_backend", lambda: backend)
    monkeypatch.setattr(play, "_import_sounddevice", lambda: sd)
    return backend, sd


def test_live_ready_line_status_and_notes(fake_live, capsys):
    backend, _ = fake_live

    def play_notes():
        deadline = time.monotonic() + 2
        while not backend.instances or backend.instances[0].callback is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
        time.sleep(0.05)
        m = backend.instances[0]
        m.send([0x90, 60, 100])
        m.send([0x91, 64, 100])     # channel 2: filtered by --channel 1
        m.send([0xF0, 1, 2, 0xF7])

    threading.Thread(target=play_notes, daemon=True).start()
    code = play.main(["--test-tone", "--virtual", "--duration", "0.6", "--status-interval", "0.1",
                      "--channel", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0] == "ready: alsa port 'SING Synth' audio 'Fake Out' 48000 Hz"
    status = [line for line in err.splitlines() if line.startswith("voices=")]
    assert len(status) >= 3
    assert all("xruns=0" in line for line in status)
    dsp = [re.search(r" dsp=(\d+%|-) ", line) for line in status]
    assert all(dsp) and any(m.group(1) != "-" for m in dsp), status
    assert any("voices=1 " in line for line in status), err
    assert "midi=2 " in status[-1]          # the note and the sysex; channel 2 filtered out


def test_status_dsp_is_the_longest_callback_since_the_last_line():
    from sing_synth.timing import CallbackTimes
    args = play.build_parser().parse_args(["--test-tone"])
    presets = load_presets()
    inst = play.Instrument(args, 48000, presets, presets["piano"])
    try:
        assert inst.audio_times is inst.mixer.times and inst.dsp() == "-"
        times = CallbackTimes(size=8)
        inst.set_audio_times(times, 256)             # a 5.33 ms period
        times.add(0.001)
        times.add(0.004)
        assert inst.dsp() == "75%" and inst.dsp() == "-"
        times.add(0.002)
        assert " dsp=38% " in inst.status_line() and " dsp=- " in inst.status_line()
    finally:
        inst.close()


def test_live_unknown_port_lists_the_ports(fake_live, capsys):
    assert play.main(["--test-tone", "--port", "Oxygen"]) == 2
    line = one_error_line(capsys)
    assert "'Oxygen' not found" in line and "'Keystation 49:0'" in line


def test_live_port_by_substring(fake_live, capsys):
    assert play.main(["--test-tone", "--port", "keystation", "--duration", "0.1",
                      "--status-interval", "0"]) == 0
    assert "port 'Keystation 49:0'" in capsys.readouterr().out


@pytest.fixture
def collector_spy(monkeypatch):
    """Whether the garbage collector was on as `Instrument.warm_up` began and as it ended, and
    what it froze; the collector on and nothing frozen afterwards, whatever the test did."""
    import gc
    seen = {}
    warm_up = play.Instrument.warm_up

    def spy(self, *args, **kwargs):
        seen["at_warm_up"] = gc.isenabled()
        warm_up(self, *args, **kwargs)
        seen["after"], seen["frozen"] = gc.isenabled(), gc.get_freeze_count()

    monkeypatch.setattr(play.Instrument, "warm_up", spy)
    yield seen
    gc.unfreeze()
    gc.enable()


def test_live_start_up_runs_with_the_garbage_collector_off(fake_live, collector_spy, capsys):
    """Building the instrument (importing torch, loading the model) and its warm-up run with
    the collector off (0.1-0.2 s of passes during the import, 80-100 ms for the last one); the
    warm-up freezes what start-up made and turns it back on.  An error in start-up turns it back
    on too: the process may go on (tests, a host embedding the instrument)."""
    import gc
    assert play.main(["--test-tone", "--virtual", "--duration", "0.1", "--status-interval", "0"]) == 0
    assert collector_spy == {"at_warm_up": False, "after": True, "frozen": collector_spy["frozen"]}
    assert collector_spy["frozen"] > 1000 and gc.isenabled()
    collector_spy.clear()
    assert play.main(["--test-tone", "--port", "Oxygen"]) == 2       # fails after the warm-up
    assert collector_spy["at_warm_up"] is False and gc.isenabled()
    one_error_line(capsys)


def test_jack_start_up_turns_the_garbage_collector_back_on_after_an_error(monkeypatch, collector_spy,
                                                                         capsys):
    import gc
    from types import SimpleNamespace
    from sing_synth import jack_io
    from sing_synth.errors import UserError
    from sing_synth.timing import CallbackTimes

    class NoServer:                   # a JACK client whose activation fails
        rate, blocksize, times, shutdown, port_name = 48000, 256, CallbackTimes(), None, "x"
        client = SimpleNamespace(name="x")

        def __init__(self, **_):
            pass

        def start(self, *_):
            raise UserError("JACK: cannot activate the client")

        def close(self):
            pass

    monkeypatch.setattr(jack_io, "JackIO", NoServer)
    assert play.main(["--test-tone", "--audio-api", "jack", "--midi-api", "jack"]) == 2
    assert "cannot activate" in one_error_line(capsys)
    assert collector_spy["at_warm_up"] is False and collector_spy["after"] and gc.isenabled()


def test_no_output_device_error_or_demo_fallback(fake_live, tmp_path, capsys):
    fake_live[1].has_output = False
    assert play.main(["--test-tone"]) == 2
    assert "no audio output device" in one_error_line(capsys)
    out = tmp_path / "demo.wav"
    assert play.main(["--test-tone", "--fallback-render", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rendering the demo" in err
    assert soundfile.info(str(out)).duration > 8


WARM_SCRIPT = r"""
import gc, sys, numpy as np
gc.disable()                      # as the live modes build the instrument
from sing_synth import play
from sing_synth.presets import find_preset, load_presets
ckpt, presets_dir = sys.argv[1], sys.argv[2]
args = play.build_parser().parse_args(["--checkpoint", ckpt, "--presets-dir", presets_dir,
                                       "--preset", "keys", "--render-device", "cpu"])
presets = load_presets(presets_dir)
inst = play.Instrument(args, 48000, presets, find_preset(presets, "keys"), ckpt)
inst.warm_up()
print(gc.isenabled(), file=sys.stderr)
out = np.zeros((256, 2), np.float32)
inst.mixer.callback(out, 256, None, None)
before = set(sys.modules)
for message in ([0x90, 64, 90], [0xC1, 88], [0x91, 67, 30], [0xE0, 0, 80], [0xB0, 64, 127]):
    inst.handle(bytes(message))
    inst.renderer.wait_idle(30)
    for _ in range(4):
        inst.mixer.callback(out, 256, None, None)
    inst.mixer.collect()
    inst.status_line()
inst.handle(bytes([0x80, 64, 0]))
inst.mixer.callback(out, 256, None, None)
assert np.abs(out).max() > 0, "no sound"
print(sorted(set(sys.modules) - before))
import gc
print(gc.get_freeze_count() > 10 * len(gc.get_objects()), file=sys.stderr)
print("numpy.ma" in sys.modules, file=sys.stderr)   # its import alone took ~110 ms
status = inst.renderer.status()
print(status["rendered"], status["stored"], file=sys.stderr)
from sing_synth.model import SING
gc.unfreeze()                     # what the warm-up froze, alive or garbage, is listed again
print(sum(type(o) is SING for o in gc.get_objects()), file=sys.stderr)
inst.close()
"""


def test_nothing_is_imported_after_warm_up(tmp_path):
    """Once `Instrument.warm_up` has run, notes (not cached: rendered head first), a program change,
    bend, pedal, the mixer and the status line import no module: a first-time import holds the
    GIL long enough to stall the audio callback (numpy.ma's took ~110 ms).  And start-up's objects
    are frozen out of the garbage collector's full passes (70 ms each with torch loaded), less the
    checkpoint's model."""
    import subprocess
    import sys
    ckpt, presets = tiny_sing(tmp_path)
    # twice: the second time the notes are read from the note store the first one wrote, and the
    # warm-up note is rendered all the same (the render path is what it warms)
    for first in (True, False):
        run = subprocess.run([sys.executable, "-c", WARM_SCRIPT, str(ckpt), str(presets)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "[]", run.stdout
        # the garbage collector's full passes no longer walk start-up's objects (torch, the model)
        enabled, frozen, numpy_ma, counts, models = run.stderr.strip().splitlines()[-5:]
        assert frozen == "True" and enabled == "True", run.stderr
        # the checkpoint's model (the renderer has its own copy of the weights) was not frozen in
        # with start-up's objects, although the collector is off until the warm-up
        assert models == "0", run.stderr
        # nothing on the live path needs numpy.ma, even at warm-up (np.median's first call imports it)
        assert numpy_ma == "False", run.stderr
        rendered, stored = map(int, counts.split())     # the program change prewarms its preset
        assert (rendered > 2 and stored == 0) if first else (rendered == 1 and stored > 2), run.stderr


def test_jack_callback_keeps_messages_a_busy_lock_refused():
    """JackIO's process callback: a message the handler refuses (a lock was taken) stays queued,
    with the ones after it, for the next cycle; the audio is mixed either way."""
    from collections import deque
    from types import SimpleNamespace
    from sing_synth.timing import CallbackTimes
    from sing_synth.jack_io import JackIO
    io = JackIO.__new__(JackIO)      # no JACK server: the callback alone, with fake ports
    events = [(0, b"\x90\x3c\x64"), (0, b"\x90\x40\x64")]
    io.midi_in = SimpleNamespace(incoming_midi_events=lambda: list(events))
    outs = [np.zeros(64, np.float32), np.zeros(64, np.float32)]
    io.outs = [SimpleNamespace(get_array=lambda o=o: o) for o in outs]
    io.out = np.zeros((64, 2), np.float32)
    io.pending, io.dropped, io.max_events, io.midi_budget = deque(), 0, 64, 1.0
    io.client, io.rate = SimpleNamespace(frames_since_cycle_start=0), 48000
    io.times = CallbackTimes()
    busy, handled, mixed = [True], [], []
    io.handle = lambda m: False if busy[0] else handled.append(m)
    io.mixer = SimpleNamespace(callback=lambda out, frames, t, s: mixed.append(frames))
    io._process(64)
    assert handled == [] and list(io.pending) == [b"\x90\x3c\x64", b"\x90\x40\x64"] and mixed == [64]
    busy[0], events[:] = False, []
    io._process(64)
    assert handled == [b"\x90\x3c\x64", b"\x90\x40\x64"] and not io.pending and io.dropped == 0
    assert io.times.count == 2 and all(0 <= t < 1 for t in io.times.since(0))


def test_jack_callback_handles_midi_only_in_its_budget():
    """Past ``midi_budget`` of the period (counted from the cycle's start) the rest of the
    messages wait for the next cycle; one is handled per cycle at least; none is lost."""
    from collections import deque
    from types import SimpleNamespace
    from sing_synth.timing import CallbackTimes
    from sing_synth.jack_io import JackIO
    io = JackIO.__new__(JackIO)
    events = [(0, bytes([0x90, 40 + i, 100])) for i in range(5)]
    io.midi_in = SimpleNamespace(incoming_midi_events=lambda: list(events))
    outs = [np.zeros(64, np.float32), np.zeros(64, np.float32)]
    io.outs = [SimpleNamespace(get_array=lambda o=o: o) for o in outs]
    io.out = np.zeros((64, 2), np.float32)
    io.pending, io.dropped, io.max_events, io.midi_budget = deque(), 0, 64, 0.5
    io.client, io.rate = SimpleNamespace(frames_since_cycle_start=48), 48000   # 75% gone
    io.times = CallbackTimes()
    handled, mixed = [], []
    io.handle = handled.append
    io.mixer = SimpleNamespace(callback=lambda out, frames, t, s: mixed.append(frames))
    io._process(64)
    assert len(handled) == 1 and len(io.pending) == 4 and mixed == [64]
    events[:] = []
    io.client.frames_since_cycle_start = 0            # on time: the rest fit
    io._process(64)
    assert handled == [bytes([0x90, 40 + i, 100]) for i in range(5)] and not io.pending
