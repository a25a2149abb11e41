"""`sing-synth play` / `run_synth.py`: the live instrument, and offline rendering of MIDI files.

Live: a MIDI input port (python-rtmidi: a virtual port or an existing one, `sing_synth.midi`)
feeds `engine.Controller`; `engine.NoteRenderer` (SING) or, with ``--test-tone``,
`engine.tone.ToneRenderer` renders the notes; `engine.Mixer.callback` is the sounddevice output
stream's callback.  Once the stream runs and the port is open, one line goes to stdout::

    ready: <midi api> port '<port name>' audio '<device name>' <rate> Hz

and every ``--status-interval`` seconds a status line goes to stderr (rewritten in place with
``\\r`` on a terminal, one line per interval otherwise)::

    voices=3 cache=41/512MB notes=57 prewarm=57/365 xruns=0 latency=11.2ms midi=230 malformed=0

``prewarm``: notes of the start preset rendered in the background / queued.  ``latency``: the last note-on's delay from the request to sound -- the render wait (0 for a
cached note) plus the output stream's latency.  SIGINT / SIGTERM (or ``--duration``) close the
stream, the port and the renderer and exit 0.

Offline (``--render-midi IN.mid -o OUT.wav``): the same controller and mixer, every note of the
file rendered first (batched, before mixing), then ``Mixer.callback`` called block by block into
an array written with soundfile.  No audio device, no MIDI port.

No audio output (no device, or PortAudio finds none): an error, or with
``--fallback-render OUT.wav`` (what ``make run`` passes) one line saying so, and the bundled demo
rendered to OUT.wav instead.

``--device`` is the AUDIO output device (sounddevice's name or index, as the other audio
programs' option of that name); the torch device SING renders on is ``--render-device``
(cpu, cuda, cuda:N, mps, auto; default auto = the best present).
"""
from __future__ import annotations

import argparse
import gc
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .cli import Parser
from .errors import UserError, import_or_error

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = Path("models") / "sing-small-fluidr3.pt"
DEFAULT_RATE = 48000
TAIL_S = 6.0          # offline: the longest a note can still sound after the last event


# ------------------------------------------------------------------------------------ arguments
def _channel(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 16:
        raise argparse.ArgumentTypeError(f"MIDI channel must be 1..16, got {text!r}")
    return value


def _positive(kind, name, allow_zero=False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            need = "a number >= 0" if allow_zero else "a positive number"
            raise argparse.ArgumentTypeError(f"{name} must be {need}, got {text!r}")
        return value
    return parse


def _latency(text: str):
    if text in ("low", "high"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"--latency must be low, high or seconds, got {text!r}")
    return value


def add_arguments(p) -> None:
    """Adds the play options to ``p`` (run_synth.py's parser and `sing-synth play`)."""
    g = p.add_argument_group("sound")
    g.add_argument("--checkpoint", default=None, metavar="PATH",
                   help=f"SING checkpoint (default: {DEFAULT_CHECKPOINT} in the repository)")
    g.add_argument("--test-tone", action="store_true",
                   help="play a built-in harmonic tone instead of SING (a routing check; no model)")
    g.add_argument("--preset", default="piano", help="preset of every channel at start (default: piano)")
    g.add_argument("--presets-dir", default=None, metavar="DIR",
                   help="folder of preset YAML files (default: presets/ in the repository)")
    g.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    g.add_argument("--render-device", default="auto", metavar="DEV",
                   help="torch device SING renders on: cpu, cuda, cuda:N, mps, auto (default)")
    g.add_argument("--cache-mb", type=_positive(float, "--cache-mb"), default=512.0,
                   help="note cache size in MiB (default 512)")
    g.add_argument("--note-store", default=None, metavar="DIR",
                   help="folder where rendered notes are kept across sessions, so that a note "
                        "rendered once is read back instead of rendered again (default: "
                        "~/.cache/sing-synth/notes); 'off': none")
    g.add_argument("--note-store-mb", type=_positive(float, "--note-store-mb"), default=2048.0,
                   help="bound of the note store in MiB, all models together; the least recently "
                        "used notes go first (default 2048: ~8,000 notes)")
    g.add_argument("--raw-levels", action="store_true",
                   help="play the model's raw levels, without the checkpoint's level calibration "
                        "(which brings each instrument to its training notes' level)")
    g.add_argument("--no-prewarm", action="store_true",
                   help="do not pre-render the start preset's notes (every note renders when first "
                        "played: benchmarks of that path)")
    g.add_argument("--render-threads", type=_positive(int, "--render-threads", allow_zero=True),
                   default=None, metavar="N",
                   help="torch threads of the render worker (default: the cores less one, so that "
                        "the audio callback keeps a core; 0: torch's default)")
    g = p.add_argument_group("MIDI input")
    g.add_argument("--port", default=None, metavar="NAME",
                   help="connect to this MIDI output port (name or unique substring)")
    g.add_argument("--virtual", nargs="?", const="SING Synth", default=None, metavar="NAME",
                   help="create a virtual MIDI input port (default name 'SING Synth'); the default "
                        "when --port is not given")
    g.add_argument("--midi-api", default="auto", choices=["auto", "alsa", "jack", "coremidi", "windows"],
                   help="auto: ALSA on Linux (JACK when ALSA is missing and a JACK server runs), "
                        "CoreMIDI on macOS, WinMM on Windows")
    g.add_argument("--channel", type=_channel, default=None, metavar="N",
                   help="listen on MIDI channel N only (1-16; default all 16, each its own preset)")
    g.add_argument("--list-ports", action="store_true", help="list the MIDI input sources and exit")
    g = p.add_argument_group("audio output")
    g.add_argument("--audio-api", default="portaudio", choices=["portaudio", "jack"],
                   help="portaudio (default): the audio device through sounddevice; jack: one JACK "
                        "client for MIDI in and audio out, the MIDI handled in the audio callback "
                        "(a cached note sounds in the period its note-on arrives, as FluidSynth's)")
    g.add_argument("--device", default=None, metavar="DEV",
                   help="audio output device: sounddevice name (substring) or index")
    g.add_argument("--list-devices", action="store_true", help="list the audio devices and exit")
    g.add_argument("--samplerate", type=_positive(int, "--samplerate"), default=None,
                   help=f"stream rate in Hz (default: the device's, else {DEFAULT_RATE})")
    g.add_argument("--blocksize", type=_positive(int, "--blocksize"), default=256,
                   help="frames per audio callback (default 256)")
    g.add_argument("--latency", type=_latency, default="low",
                   help="sounddevice latency: low, high or seconds (default low)")
    g.add_argument("--polyphony", type=_positive(int, "--polyphony"), default=128,
                   help="voices at once (default 128)")
    g.add_argument("--gain", type=_positive(float, "--gain", allow_zero=True), default=0.5,
                   help="master gain before the limiter (default 0.5)")
    g.add_argument("--mixer", default="auto", choices=["auto", "compiled", "numpy"],
                   help="how the voices are mixed: the compiled block (C, built at install), "
                        "numpy, or auto: compiled when it was built (default)")
    g = p.add_argument_group("running")
    g.add_argument("--render-midi", default=None, metavar="IN.mid",
                   help="render a MIDI file offline (no audio device, no MIDI port); needs -o")
    g.add_argument("-o", "--output", default=None, metavar="OUT.wav", help="WAV written by --render-midi")
    g.add_argument("--fallback-render", default=None, metavar="OUT.wav",
                   help="with no audio output device, render the bundled demo here instead of failing")
    g.add_argument("--status-interval", type=_positive(float, "--status-interval", allow_zero=True),
                   default=0.5, metavar="SECONDS", help="status line period on stderr (0: none; default 0.5)")
    g.add_argument("--duration", type=_positive(float, "--duration"), default=None, metavar="SECONDS",
                   help="exit after this long (scripts, tests)")


def build_parser(prog="sing-synth play") -> Parser:
    p = Parser(prog=prog, description="Play SING live from a MIDI port, or render a MIDI file.")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return run(args)
    except UserError as exc:
        print(f"sing-synth: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


# ------------------------------------------------------------------------------------ set-up
def _checkpoint_path(args) -> Path:
    if args.checkpoint:
        path = Path(args.checkpoint)
        if not path.is_file():
            raise UserError(f"checkpoint not found: {path}")
        return path
    path = REPO_ROOT / DEFAULT_CHECKPOINT
    if not path.is_file():
        raise UserError(f"the shipped model {DEFAULT_CHECKPOINT} is missing: run `make shipped-model` "
                        f"to train it, pass --checkpoint PATH, or use --test-tone")
    return path


def _open_store(renderer, args, checkpoint) -> None:
    """The note store (``--note-store``): rendered notes kept on disk across sessions.  A folder
    that cannot be made or read leaves the instrument without one, with a note saying so."""
    from .engine.store import default_root, file_id
    where = getattr(args, "note_store", None)
    if where == "off" or not isinstance(checkpoint, (str, Path)):
        return
    try:
        renderer.open_store(Path(where) if where else default_root(), file_id(checkpoint),
                            getattr(args, "note_store_mb", 2048.0))
    except OSError as exc:
        print(f"sing-synth: note: no note store ({exc}): every note is rendered",
              file=sys.stderr, flush=True)


def _mixer_kernel(asked: str) -> str:
    """The `Mixer` kernel for ``--mixer``; a note when 'auto' finds no compiled block."""
    from .engine.mixer import KERNELS
    if "compiled" not in KERNELS:
        if asked == "compiled":
            raise UserError("--mixer compiled: the compiled mixer was not built (no C compiler "
                            "when the package was installed); reinstall with one, or use --mixer numpy")
        if asked == "auto":
            print("sing-synth: note: the compiled mixer was not built (no C compiler at install): "
                  "mixing with numpy, slower in a stream (README, Speed)", file=sys.stderr, flush=True)
    return asked


def _presets(args):
    from .presets import find_preset, load_presets
    presets = load_presets(args.presets_dir)
    return presets, find_preset(presets, args.preset)


class Instrument:
    """What both modes share: presets, renderer, mixer, controller."""

    def __init__(self, args, rate: int, presets, preset, checkpoint=None, blocksize=None):
        from .engine import Controller, Mixer
        self.rate = int(rate)
        if args.test_tone:
            from .engine.tone import ToneRenderer
            self.renderer = ToneRenderer(presets, stream_rate=self.rate, cache_mb=args.cache_mb)
        else:
            from .checkpoint import load_checkpoint
            from .engine import NoteRenderer
            from .presets import check_instruments
            ckpt = load_checkpoint(checkpoint)
            check_instruments(presets, ckpt.instruments.values())
            self.renderer = NoteRenderer(ckpt, device=args.render_device, stream_rate=self.rate,
                                         cache_mb=args.cache_mb,
                                         threads=getattr(args, "render_threads", None),
                                         levels=not getattr(args, "raw_levels", False))
            _open_store(self.renderer, args, checkpoint)
            # the renderer has the weights it needs; the checkpoint's own copy (~25 MB for the
            # shipped model) goes now.  Left to this frame, it would outlive it: imports made here
            # leave tracebacks that keep the frame, and start-up runs with the collector off.
            del ckpt
        self.probe = LatencyProbe(self.renderer)
        self.mixer = Mixer(self.rate, blocksize_max=max(1024, int(blocksize or args.blocksize)),
                           polyphony=args.polyphony, master_gain=args.gain,
                           kernel=_mixer_kernel(getattr(args, "mixer", "auto")))
        self.controller = Controller(self.mixer, self.probe, presets, preset, self.rate)
        self.channel = None if args.channel is None else args.channel - 1
        self.output_latency = 0.0
        # the status line's dsp=: the audio side's longest callback since the last line, as a
        # share of the period (`set_audio_times`)
        self.set_audio_times(self.mixer.times, int(blocksize or args.blocksize))

    def set_audio_times(self, times, blocksize: int) -> None:
        """The `timing.CallbackTimes` the status line's ``dsp=`` reads (the mixer's own by
        default; with JACK, how far into each cycle its process callback returned), per
        ``blocksize``-frame period."""
        self.audio_times, self.period_s = times, int(blocksize) / self.rate
        self._dsp_from = times.count

    def warm_up(self, timeout: float = 10.0) -> None:
        """Before the audio starts: renders the default preset's middle note through the path a key
        pressed now takes (kernels for batch 1 built, the resampler made, the cache and the ready
        callbacks run), never from the note store (`renderer.WorkerQueue.warm_up`), and builds
        the status line once.  Whatever Python imports or builds the
        first time is done now: measured before this, the first note after start-up came with a
        ~110 ms stall of the audio callback (the main thread importing numpy.ma for a median while
        holding the GIL, and torch's first calls), heard as a gap in that note."""
        preset = self.controller.default_preset
        lo, hi = preset.pitch_range
        pitch = min(max(60, lo), hi)
        self.renderer.warm_up(self.renderer.make_key(preset, pitch, 100), timeout)
        self.status_line()
        # Python's full garbage collection walks every object the process has (torch, numpy,
        # the model: ~170,000) holding the GIL: 70-100 ms measured, an xrun each time it ran
        # during the soak.  Frozen now, later collections only walk what is made after start-up.
        # The live modes build the instrument with the collector off (`gc.disable`): importing
        # torch alone ran 2 full passes and 31 middle ones (0.1-0.2 s of its 1.0-1.3 s), and a
        # last pass here found 35 unreachable objects for 80-100 ms.  Those few objects are
        # frozen with the rest, and the collector is on again from here.
        gc.freeze()
        gc.enable()

    def handle(self, message: bytes) -> None:
        """The MIDI thread's entry: channel filter (``--channel``), then the controller."""
        if not self._filtered(message):
            self.controller.handle(message)

    def try_handle(self, message: bytes) -> bool:
        """`handle` from the audio thread (``--audio-api jack``): False, with nothing done, when
        it would have to wait for a lock (`engine.Controller.try_handle`)."""
        return self._filtered(message) or self.controller.try_handle(message)

    def _filtered(self, message: bytes) -> bool:
        """True for a channel message that ``--channel`` leaves out."""
        return (self.channel is not None and bool(message) and 0x80 <= message[0] < 0xF0
                and message[0] & 0x0F != self.channel)

    def status_line(self) -> str:
        r = self.renderer.status()
        m = self.mixer
        c = self.controller.counts
        last = self.probe.last_ms
        latency = "-" if last is None else f"{last + 1000.0 * self.output_latency:.1f}ms"
        store = r.get("store")
        store = "" if store is None else (f"from_store={r['stored']} "
                                          f"store={store['store_mb']:.0f}/{store['store_limit_mb']:.0f}MB ")
        return (f"voices={m.active_voices} cache={r['cache_mb']:.0f}/{r['cache_limit_mb']:.0f}MB "
                f"notes={r['cached_notes']} {store}prewarm={r.get('prewarm_done', 0)}/{r.get('prewarm_total', 0)} "
                f"xruns={m.xruns} dsp={self.dsp()} latency={latency} "
                f"midi={c['messages']} malformed={c['malformed']}")

    def dsp(self) -> str:
        """The longest audio callback since the last call, as a share of the period ('-': none)."""
        times = self.audio_times
        count = times.count
        worst = times.since(self._dsp_from)
        self._dsp_from = count
        return f"{100.0 * worst.max() / self.period_s:.0f}%" if len(worst) else "-"

    def close(self) -> None:
        self.controller.close()
        self.renderer.close()


class LatencyProbe:
    """Stands between the controller and the renderer to time each note-on: request -> ready
    (0 for a cached note).  Forwards everything else."""

    def __init__(self, renderer):
        self.renderer = renderer
        self.last_ms = None
        self._asked: dict = {}
        renderer.add_ready_callback(self._ready)

    def __getattr__(self, name):
        return getattr(self.renderer, name)

    def request(self, key, urgent=True):
        t0 = time.perf_counter()
        note = self.renderer.request(key, urgent)
        if note is not None:
            self.last_ms = 1000.0 * (time.perf_counter() - t0)
        elif urgent:
            self._asked.setdefault(key, t0)
        return note

    def _ready(self, key, note):
        t0 = self._asked.pop(key, None)
        if t0 is not None:
            self.last_ms = 1000.0 * (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ offline
class _NullMixer:
    def post(self, event):
        pass

    def collect(self):
        return 0


class _KeyRecorder:
    """A renderer stand-in that records the keys a controller asks for (never rendering)."""

    def __init__(self, renderer):
        self.config = renderer.config
        self.keys: dict = {}
        self._dummy = np.zeros(2, np.float32)

    def add_ready_callback(self, callback):
        pass

    def request(self, key, urgent=True):
        self.keys.setdefault(key, None)
        return self._dummy

    def prewarm(self, keys):
        return 0


def _read_midi(path):
    import mido
    try:
        midi = mido.MidiFile(str(path))
        events, now = [], 0.0
        for msg in midi:      # merged tracks, time = seconds since the previous message
            now += msg.time
            if not msg.is_meta and msg.type != "sysex":
                events.append((now, msg))
        return events, now
    except FileNotFoundError:
        raise UserError(f"{path}: no such MIDI file") from None
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise UserError(f"{path}: not a readable MIDI file ({' '.join(str(exc).split()) or type(exc).__name__})") from None


def render_midi(inst: Instrument, midi_path, blocksize=256, presets=None, preset=None) -> tuple:
    """Renders a MIDI file through the instrument's controller and mixer; returns
    (stereo float32 array [frames, 2], stats dict)."""
    events, end = _read_midi(midi_path)
    from .engine import Controller
    t0 = time.perf_counter()
    # pass 1: which notes the file needs, with its program changes; render them all in batches
    recorder = _KeyRecorder(inst.renderer)
    scout = Controller(_NullMixer(), recorder, presets or inst.controller.presets,
                       preset or inst.controller.default_preset, inst.rate)
    for _, msg in events:
        if inst.channel is None or not hasattr(msg, "channel") or msg.channel == inst.channel:
            scout.handle(msg)
    inst.renderer.prewarm(list(recorder.keys))
    inst.renderer.wait_idle()
    t_render = time.perf_counter() - t0
    # pass 2: the same controller and mixer as live, the callback called block by block
    inst.controller.prewarm_programs = False
    rate, mixer = inst.rate, inst.mixer
    total = int(math.ceil((end + TAIL_S) * rate / blocksize)) * blocksize
    out = np.zeros((total, 2), np.float32)
    pos, i, last_event_frame = 0, 0, 0
    while pos < total:
        while i < len(events) and int(round(events[i][0] * rate)) <= pos:
            msg = events[i][1]
            if inst.channel is None or not hasattr(msg, "channel") or msg.channel == inst.channel:
                inst.controller.handle(msg)
                if inst.renderer.status()["queue"] or inst.renderer.status()["rendering"]:
                    inst.renderer.wait_idle()      # a note the scout missed: render it now
            i += 1
            last_event_frame = pos
        mixer.callback(out[pos:pos + blocksize], blocksize, None, None)
        pos += blocksize
        if i >= len(events) and pos > last_event_frame and mixer.sounding_voices == 0 \
                and not mixer.events:
            break
    out = out[:pos]
    mixer.collect()
    elapsed = time.perf_counter() - t0
    return out, {"seconds": pos / rate, "wall_s": elapsed, "render_s": t_render,
                 "notes": len(recorder.keys), "rendered": inst.renderer.status()["rendered"],
                 "stored": inst.renderer.status().get("stored", 0),
                 "errors": mixer.errors + mixer.voice_errors}


def _write_wav(path, audio, rate) -> None:
    import soundfile
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), audio, rate, subtype="PCM_16")
    except (OSError, RuntimeError, ValueError) as exc:
        raise UserError(f"{path}: cannot write WAV ({' '.join(str(exc).split())})") from None


def run_offline(args, midi_path, out_path, presets, preset, checkpoint, rate, note=None) -> int:
    inst = Instrument(args, rate, presets, preset, checkpoint)
    try:
        audio, stats = render_midi(inst, midi_path, args.blocksize, presets, preset)
    finally:
        inst.close()
    _write_wav(out_path, audio, rate)
    speed = stats["seconds"] / max(stats["wall_s"], 1e-9)
    print(f"{out_path}: {stats['seconds']:.2f} s of audio at {rate} Hz, {stats['rendered']} notes rendered, "
          f"{stats['stored']} read from the note store, {stats['wall_s']:.2f} s ({speed:.1f}x real time)",
          flush=True)
    return 0


# ------------------------------------------------------------------------------------ live
def _import_sounddevice():
    return import_or_error("sounddevice", "audio output unavailable: {reason} "
                                          "(install PortAudio: libportaudio2 on Debian/Ubuntu)")


def _output_device(sd, requested):
    """(index, info) of the output device to use, or (None, None) if there is none."""
    try:
        devices = sd.query_devices()
    except Exception:
        devices = []
    outputs = [d for d in devices if d.get("max_output_channels", 0) > 0]
    if requested is not None:
        spec = int(requested) if str(requested).strip().isdigit() else requested
        try:
            info = sd.query_devices(spec, kind="output")
        except Exception as exc:
            names = ", ".join(f"{d['index']}: {d['name']!r}" for d in outputs) or "none"
            raise UserError(f"audio device {requested!r}: {' '.join(str(exc).split())}; "
                            f"output devices: {names}") from None
        return info["index"], info
    try:
        info = sd.query_devices(kind="output")
        return info["index"], info
    except Exception:
        pass
    if not outputs:
        return None, None
    # no default output: prefer a JACK device (a server runs), else the first output
    apis = {}
    try:
        apis = {i: h["name"] for i, h in enumerate(sd.query_hostapis())}
    except Exception:
        pass
    outputs.sort(key=lambda d: "JACK" not in apis.get(d.get("hostapi"), ""))
    return outputs[0]["index"], outputs[0]


class StatusLine:
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = 0

    def show(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()


# the audio callback waits for the GIL whenever another thread holds it; Python hands it over
# after this many seconds (default 5 ms: a whole 256-frame period at 48 kHz)
SWITCH_INTERVAL_S = 0.0002


def _return_freed_notes() -> None:
    """glibc: notes (0.77 MB each) always in their own mmap, so an evicted note's memory goes
    back to the system at once.  glibc's default raises the mmap threshold to the size of the
    last chunk freed, after which notes come from the heap, where freed ones fragment it and
    the resident size creeps above the cache's cap."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 256 * 1024)      # M_MMAP_THRESHOLD: fixed, no dynamic adjustment
    except (OSError, AttributeError):
        pass


def _signals(stop) -> dict:
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, lambda *_: stop.set())
        except (ValueError, OSError):     # not the main thread
            pass
    return old


def _main_loop(args, inst, stop, status, tick=None) -> None:
    """Status lines and housekeeping until ``stop``, ``--duration`` or ``tick()`` returning
    False (called every interval)."""
    deadline = None if args.duration is None else time.monotonic() + args.duration
    # finished notes are dropped here (never on the audio thread): at least every 0.1 s
    interval = min(args.status_interval, 0.1) if args.status_interval else 0.1
    next_status = time.monotonic() + (args.status_interval or 0)
    while not stop.is_set():
        wait = interval if deadline is None else min(interval, deadline - time.monotonic())
        if wait <= 0:
            break
        if stop.wait(wait):
            break
        inst.mixer.collect()
        if tick is not None and tick() is False:
            break
        now = time.monotonic()
        if args.status_interval and now >= next_status - 0.001:
            next_status = max(next_status + args.status_interval, now)
            status.show(inst.status_line())


def run_live(args, presets, preset, checkpoint) -> int:
    if getattr(args, "audio_api", "portaudio") == "jack":
        return run_live_jack(args, presets, preset, checkpoint)
    from . import midi
    try:
        sd = _import_sounddevice()
    except UserError:
        if not args.fallback_render:
            raise
        sd = None     # no PortAudio at all: no audio output either
    index, info = _output_device(sd, args.device) if sd is not None else (None, None)
    if info is None:
        if args.fallback_render:
            from .demo import DEMO_PATH
            print(f"sing-synth: no audio output device here; rendering the demo to "
                  f"{args.fallback_render} instead", file=sys.stderr, flush=True)
            return run_offline(args, DEMO_PATH, args.fallback_render, presets, preset, checkpoint,
                               args.samplerate or DEFAULT_RATE)
        raise UserError("no audio output device found (see --list-devices); render offline with "
                        "--render-midi IN.mid -o OUT.wav")
    rate = int(args.samplerate or info.get("default_samplerate") or DEFAULT_RATE)
    _return_freed_notes()
    inst = stream = port = None
    stop = threading.Event()
    old_handlers = {}
    status = StatusLine()
    switch = sys.getswitchinterval()
    try:
        gc.disable()        # until the warm-up (`Instrument.warm_up`)
        inst = Instrument(args, rate, presets, preset, checkpoint)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        inst.warm_up()
        if not args.no_prewarm:
            inst.controller.prewarm()
        channels = min(2, int(info["max_output_channels"]))
        try:
            stream = sd.OutputStream(samplerate=rate, blocksize=args.blocksize, device=index,
                                     channels=channels, dtype="float32", latency=args.latency,
                                     callback=inst.mixer.callback)
        except Exception as exc:
            raise UserError(f"cannot open audio device {info['name']!r} at {rate} Hz: "
                            f"{' '.join(str(exc).split())}") from None
        port = midi.MidiInput(inst.handle, api=args.midi_api, port=args.port,
                              virtual=args.virtual).open()
        old_handlers = _signals(stop)
        stream.start()
        try:
            inst.output_latency = float(stream.latency)
        except Exception:
            pass
        print(f"ready: {port.api} port '{port.port_name}' audio '{info['name']}' {rate} Hz", flush=True)
        _main_loop(args, inst, stop, status)
        return 0
    finally:
        status.end()
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception:
                pass
        if port is not None:
            port.close()
        if inst is not None:
            inst.close()
        gc.enable()
        sys.setswitchinterval(switch)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def run_live_jack(args, presets, preset, checkpoint) -> int:
    """``--audio-api jack``: the instrument as one JACK client (`jack_io.JackIO`)."""
    from .jack_io import JackIO
    if args.midi_api not in ("auto", "jack"):
        raise UserError("--audio-api jack takes its MIDI from JACK: use --midi-api jack (or auto)")
    if args.device is not None:
        raise UserError("--device names a PortAudio device; with --audio-api jack connect the "
                        "outputs with jack_connect or a patchbay")
    io = JackIO(name=args.virtual or "SING Synth", port=args.port)
    inst = None
    stop = threading.Event()
    old_handlers = {}
    status = StatusLine()
    switch = sys.getswitchinterval()
    try:
        if args.samplerate and int(args.samplerate) != io.rate:
            raise UserError(f"--samplerate {args.samplerate}: the JACK server runs at {io.rate} Hz")
        _return_freed_notes()
        gc.disable()        # until the warm-up (`Instrument.warm_up`)
        inst = Instrument(args, io.rate, presets, preset, checkpoint, blocksize=io.blocksize)
        inst.controller.collect_on_handle = False       # handle() runs on the audio thread
        inst.output_latency = io.blocksize / io.rate
        inst.set_audio_times(io.times, io.blocksize)
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        inst.warm_up()
        if not args.no_prewarm:
            inst.controller.prewarm()
        io.start(inst.try_handle, inst.mixer)
        old_handlers = _signals(stop)
        print(f"ready: jack port '{io.port_name}' audio 'JACK {io.client.name}' {io.rate} Hz",
              flush=True)

        def tick():
            if io.shutdown:
                raise UserError(f"JACK: {io.shutdown}")
            io.check()
        _main_loop(args, inst, stop, status, tick)
        return 0
    finally:
        status.end()
        io.close()
        if inst is not None:
            inst.close()
        gc.enable()
        sys.setswitchinterval(switch)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------ entry
def run(args) -> int:
    if args.output and not args.render_midi:
        raise UserError("-o/--output goes with --render-midi IN.mid")
    if args.render_midi and not args.output:
        raise UserError("--render-midi needs -o OUT.wav")
    if args.port is not None and args.virtual is not None:
        raise UserError("give --port NAME or --virtual [NAME], not both")
    if args.list_devices:
        print(_import_sounddevice().query_devices())
        return 0
    if args.list_ports:
        from . import midi
        api, ports = midi.list_ports(args.midi_api)
        print(f"MIDI input sources ({api}):")
        for i, name in enumerate(ports):
            print(f"  {i}: {name}")
        if not ports:
            print("  (none)")
        return 0
    presets, preset = _presets(args)
    if args.list_presets:
        for p in presets.values():
            mark = "*" if p.name == preset.name else " "
            print(f"{mark} {p.name:16s} program {p.program:3d}  {p.description}")
        return 0
    checkpoint = None if args.test_tone else _checkpoint_path(args)
    if args.render_midi:
        return run_offline(args, args.render_midi, args.output, presets, preset, checkpoint,
                           args.samplerate or DEFAULT_RATE)
    return run_live(args, presets, preset, checkpoint)
