"""`sing-synth` command line: a thin argparse shell over the function API.

Bad input prints one line, `sing-synth: error: ...`, and exits with status 2.
"""
import argparse
import itertools
import os
import sys
from pathlib import Path

from .errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) and exit 2."""

    def error(self, message):
        raise UserError(message)


def int_tuple(count: int):
    def parse(text: str) -> tuple:
        values = [int(v) for v in text.split(",")]
        if len(values) == 1:
            values *= count
        if len(values) != count or any(v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"expected {count} comma-separated non-negative integers")
        return tuple(values)
    return parse


def names(text: str) -> tuple:
    return tuple(v for v in text.split(",") if v)


def weights(text: str) -> tuple:
    """``NAME=W,NAME=W`` -> ((NAME, W), ...)."""
    pairs = []
    for item in names(text):
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not sep or not name or weight is None:
            raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT[,NAME=WEIGHT...], got {item!r}")
        pairs.append((name, weight))
    return tuple(pairs)


def pitch_weights(text: str) -> tuple:
    """``LO-HI=W,LO-HI=W`` -> (((LO, HI), W), ...), MIDI pitches, both ends included."""
    ranges = []
    for item, weight in weights(text):
        lo, sep, hi = item.partition("-")
        if not (sep and lo.isdigit() and hi.isdigit() and int(lo) <= int(hi)):
            raise argparse.ArgumentTypeError(f"expected LO-HI=WEIGHT[,LO-HI=WEIGHT...] (MIDI pitches), got {item!r}")
        ranges.append(((int(lo), int(hi)), weight))
    return tuple(ranges)


# --- train ---------------------------------------------------------------------------------------

def add_train(sub):
    p = sub.add_parser("train", help="train SING's three phases on an NSynth-format folder")
    p.add_argument("--data", required=True, help="NSynth jsonwav folder (examples.json + audio/)")
    p.add_argument("--out", required=True, help="run folder: train_state.pt, model.pt, metrics.csv")
    p.add_argument("--size", default="small", choices=["full", "base", "small"])
    p.add_argument("--lstm-hidden", type=int, default=0, help="override the size's LSTM hidden size")
    p.add_argument("--lstm-layers", type=int, default=0)
    p.add_argument("--channels", type=int, default=0, help="override the size's decoder channels")
    p.add_argument("--steps", type=int, default=0,
                   help="frames per note (default 265: 4-s notes); the data's notes must match")
    p.add_argument("--phase-harmonics", type=int, default=0, metavar="K",
                   help="also feed the LSTM the phase of the pitch's first K harmonics at each frame "
                        "(default 0: SING as published); with --init-from a model with fewer, the new "
                        "inputs start at zero weight")
    p.add_argument("--epochs", type=int_tuple(3), default=(50, 50, 20),
                   help="epochs per phase: autoencoder,sequence,end_to_end (one number for all)")
    p.add_argument("--batch-size", type=int_tuple(3), default=(64, 64, 64), help="per phase, as --epochs")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--loss", default="l1", choices=["l1", "mse", "waveform"])
    p.add_argument("--crop", type=int, default=0, metavar="FRAMES",
                   help="train the decoder on a random stretch of FRAMES frames of each batch (64: ~3x "
                        "faster steps, the same loss in expectation); 0: whole notes")
    p.add_argument("--resolutions", type=lambda t: tuple(int(v) for v in t.split(",")), default=(1024,),
                   help="STFT sizes of the spectral loss, e.g. 1024,4096 (default: the paper's 1024)")
    p.add_argument("--loss-eps", type=float, default=1.0,
                   help="eps of log(eps + |X|^2) (default the paper's 1); 0.01 weighs quiet partials "
                        "as if the notes were 20 dB louder (FluidSynth renders are quiet)")
    p.add_argument("--loss-norm-db", type=float, default=None, metavar="DB",
                   help="weigh every note as if its RMS were DB dBFS (e.g. -30): quiet notes are "
                        "otherwise mostly under eps (default: off, the paper's loss)")
    p.add_argument("--between-weight", type=float, default=1.0, metavar="W",
                   help="weigh the spectrogram bins between the harmonics of each note's pitch W "
                        "times the others in the training loss (subharmonics, frame-rate buzz; "
                        "default 1: the paper's loss); validation stays unweighted")
    p.add_argument("--between-low-hz", type=float, default=None, metavar="HZ",
                   help="start that band at HZ where 0.4 f0 is higher (the frame-rate buzz under "
                        "high notes; default: 0.4 f0)")
    p.add_argument("--low-weight", type=float, default=1.0, metavar="W",
                   help="weigh the spectrogram bins below --low-hz W times more in the training "
                        "loss (bass fundamentals near the decoder's 62.5 Hz frame rate; default 1)")
    p.add_argument("--low-hz", type=float, default=150.0, metavar="HZ",
                   help="the top of the band --low-weight weighs (default 150)")
    p.add_argument("--comb-weight", type=float, default=0.0, metavar="W",
                   help="add W times a loss term on the part of each note that repeats every hop (the "
                        "decoder's 62.5 Hz frame-rate comb, where bass partials get pulled); training only")
    p.add_argument("--train-split", default="train", choices=["train", "train+valid"],
                   help="train+valid: a final model on every note but the test split's, for "
                        "`sing-synth eval --split test` (validation then scores notes it trained on)")
    p.add_argument("--bptt", type=int, default=32, help="truncated back-propagation length (phase 2)")
    p.add_argument("--no-amp", action="store_true", help="train in fp32 instead of bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", type=names, default=(), help="comma-separated instrument families")
    p.add_argument("--sources", type=names, default=(), help="acoustic,electronic,synthetic")
    p.add_argument("--pitch-range", type=int, nargs=2, default=(), metavar=("LO", "HI"))
    p.add_argument("--stream", action="store_true", help="read notes from disk instead of holding them in RAM")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--device", default="", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last epoch")
    p.add_argument("--oversample", type=weights, default=(), metavar="NAME=W[,NAME=W]",
                   help="draw notes of instruments whose name contains NAME W times as often "
                        "(with replacement; e.g. marimba=4 for an instrument the model fits badly)")
    p.add_argument("--oversample-pitches", type=pitch_weights, default=(), metavar="LO-HI=W[,LO-HI=W]",
                   help="draw notes of MIDI pitches LO..HI W times as often (e.g. 33-39=3: the bass "
                        "near the decoder's 62.5 Hz frame rate); a note takes its largest weight")
    p.add_argument("--epoch-notes", type=int, default=0, metavar="N",
                   help="notes drawn per epoch with --oversample or --oversample-pitches "
                        "(default: the train split's size)")
    p.add_argument("--time-limit", type=float, default=0.0, metavar="MINUTES",
                   help="start no epoch that would end past MINUTES from now (judged by the last "
                        "epoch's time); the state is saved, --resume goes on (default: no limit)")
    p.add_argument("--init-from", default="", metavar="CKPT",
                   help="start from this checkpoint's weights (same size and instruments), e.g. the "
                        "shipped model with --epochs 0,0,N to train it further end to end")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from .train import TrainSettings, train
    settings = TrainSettings(
        data=args.data, out=args.out, size=args.size, lstm_hidden=args.lstm_hidden,
        lstm_layers=args.lstm_layers, channels=args.channels, steps=args.steps, phase_harmonics=args.phase_harmonics, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, loss=args.loss, resolutions=args.resolutions, loss_eps=args.loss_eps, loss_norm_db=args.loss_norm_db, between_weight=args.between_weight, between_low_hz=args.between_low_hz, low_weight=args.low_weight, low_hz=args.low_hz, comb_weight=args.comb_weight, train_split=args.train_split, bptt=args.bptt, crop=args.crop, amp=not args.no_amp,
        seed=args.seed, families=args.families, sources=args.sources,
        pitch_range=tuple(args.pitch_range), in_memory=not args.stream, workers=args.workers,
        device=args.device, progress=not args.no_progress, init_from=args.init_from,
        time_limit=args.time_limit, oversample=args.oversample,
        oversample_pitches=args.oversample_pitches, epoch_notes=args.epoch_notes,
        metadata={"command": " ".join(sys.argv)})
    path = train(settings, resume=args.resume)
    print(f"model: {path}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_now(0)
    return 0


def exit_now(code: int) -> None:
    """Ends a torchrun worker without the interpreter's teardown, once everything is saved and the
    process group destroyed: torch 2.13's gloo, after DDP's last backward, aborts ~1 worker exit in 4
    there ("terminate called without an active exception"; a bare DDP script does it too), and
    torchrun then reports the whole run failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- generate ------------------------------------------------------------------------------------

def add_generate(sub):
    p = sub.add_parser("generate", help="render notes to WAV files (all combinations, one batch)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--instrument", nargs="+", required=True,
                   help="instrument id or name, or a blend like 'flute:0.7,violin:0.3'")
    p.add_argument("--pitch", nargs="+", type=int, required=True, help="MIDI pitch(es)")
    p.add_argument("--velocity", nargs="+", type=int, default=[100], help="MIDI velocity(ies) 1-127")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--reference", action="store_true", help="use the fp32 reference path, not the fast one")
    p.add_argument("--raw-levels", action="store_true",
                   help="the model's raw levels, without the checkpoint's level calibration")
    p.set_defaults(func=run_generate)


def run_generate(args) -> int:
    from .render import render_notes
    from .checkpoint import load_checkpoint
    import soundfile
    ckpt = load_checkpoint(args.checkpoint)
    notes = list(itertools.product(args.instrument, args.pitch, args.velocity))
    waves = render_notes(ckpt, notes, batch_size=args.batch_size, device=args.device,
                         fast=not args.reference, levels=not args.raw_levels)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for (instrument, pitch, velocity), wave in zip(notes, waves):
        name = instrument.replace(":", "_").replace(",", "+")
        soundfile.write(out / f"{name}-{pitch:03d}-{velocity:03d}.wav", wave,
                        ckpt.model.config.sample_rate, subtype="PCM_16")
    print(f"{len(notes)} notes written to {out}")
    return 0


# --- eval ----------------------------------------------------------------------------------------

def add_eval(sub):
    p = sub.add_parser("eval", help="mean spectral loss of a checkpoint on a split of a dataset; with "
                                    "--report, a comparison with a sampler baseline, pitch and loudness")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=["train", "valid", "test", "all"])
    p.add_argument("--seed", type=int, default=0, help="the split's seed (as in training)")
    p.add_argument("--loss", default="l1", choices=["l1", "mse", "waveform"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--report", default="", metavar="OUT",
                   help="write OUT/report.md, OUT/metrics.json and spectrogram PNGs: spectral L1 of SING "
                        "and of a sampler baseline (nearest train pitch resampled), pitch error, loudness")
    p.add_argument("--examples", type=int, default=6, help="notes drawn as spectrograms in the report")
    p.add_argument("--families", type=names, default=(), help="comma-separated instrument families (report)")
    p.add_argument("--sources", type=names, default=(), help="acoustic,electronic,synthetic (report)")
    p.add_argument("--pitch-range", type=int, nargs=2, default=(), metavar=("LO", "HI"),
                   help="MIDI pitches kept (report)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    from .checkpoint import load_checkpoint
    from .render import evaluate_loss
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.report and (args.families or args.sources or args.pitch_range):
        raise UserError("--families, --sources and --pitch-range apply to --report only")
    result = None
    if args.report:   # one rendering gives the loss and the report
        from .evaluate import evaluate
        result = evaluate(args.checkpoint, args.data, args.split, seed=args.seed, report=args.report,
                          n_examples=args.examples, batch_size=args.batch_size, device=args.device,
                          families=args.families, sources=args.sources, pitch_range=tuple(args.pitch_range),
                          loss=args.loss, progress=not args.no_progress and sys.stderr.isatty())
        loss, count = result["summary"]["loss_value"], result["summary"]["notes"]
    else:
        from .evaluate import trained_splits
        ckpt = load_checkpoint(args.checkpoint)
        trained_splits(ckpt, args.split)
        loss, count = evaluate_loss(ckpt.model, args.data, args.split, seed=args.seed, loss=args.loss,
                                    batch_size=args.batch_size, device=args.device)
    if count == 0:
        raise UserError(f"{args.data}: the {args.split} split is empty")
    print(f"{args.split}: {count} notes, {args.loss} spectral loss {loss:.6f}")
    if result is not None:
        from .evaluate import summary_lines
        for line in summary_lines(result):
            print(line)
        print(f"report: {Path(args.report) / 'report.md'}")
    return 0


# --- calibrate -----------------------------------------------------------------------------------

def add_calibrate(sub):
    p = sub.add_parser("calibrate", help="measure each instrument's level against its training notes "
                                         "and store the correction in the checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="the dataset the checkpoint trained on")
    p.add_argument("--split", default=None, choices=["train", "valid", "train+valid"],
                   help="notes measured (default: the split(s) the checkpoint trained on)")
    p.add_argument("--seed", type=int, default=0, help="the split's seed (as in training)")
    p.add_argument("--out", default=None, help="write here (default: rewrite the checkpoint)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args) -> int:
    from .levels import calibrate
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    s = calibrate(args.checkpoint, args.data, out=args.out, split=args.split, seed=args.seed,
                  batch_size=args.batch_size, device=args.device,
                  progress=not args.no_progress and sys.stderr.isatty())
    print(f"{args.out or args.checkpoint}: levels of {s['instruments']} instruments from "
          f"{s['notes']} {s['split']} notes; SING's level minus theirs, median {-s['median_error_db']:+.1f} dB, "
          f"mean |error| {s['mean_abs_error_db']:.1f} dB -> {s['mean_abs_error_after_db']:.1f} dB "
          f"corrected; instruments' medians {s['spread_db']:.1f} dB apart -> {s['spread_after_db']:.1f} dB")
    return 0


# --- convert -------------------------------------------------------------------------------------

def add_convert(sub):
    p = sub.add_parser("convert", help="rewrite a checkpoint (or the original sing.th) in this format")
    p.add_argument("source", help="a sing-synth checkpoint or the published sing.th")
    p.add_argument("target")
    p.add_argument("--half", action="store_true", help="store the weights in fp16 (half the size)")
    p.set_defaults(func=run_convert)


def run_convert(args) -> int:
    from .checkpoint import load_checkpoint, save_checkpoint
    ckpt = load_checkpoint(args.source)
    save_checkpoint(args.target, ckpt.model, ckpt.instruments, ckpt.metadata, half=args.half)
    print(f"{args.target}: {ckpt.model.config.n_instruments} instruments, "
          f"{'fp16' if args.half else 'fp32'} weights")
    return 0


# --- play ----------------------------------------------------------------------------------------

def add_play(sub):
    from . import play
    p = sub.add_parser("play", help="the live instrument: MIDI in, audio out (or --render-midi a file)")
    play.add_arguments(p)
    p.set_defaults(func=play.run)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sing-synth", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train(sub)
    add_generate(sub)
    add_eval(sub)
    add_calibrate(sub)
    add_convert(sub)
    add_play(sub)
    from .soundfont import add_dataset_command
    add_dataset_command(sub)
    return parser


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as exc:
        print(f"sing-synth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
