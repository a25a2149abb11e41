"""Inference path: the decoder as matrix products on a `[B, T, C]` layout, in bf16/fp16 where it pays.

Written as GEMMs (unfold + Linear for the kernel-9 conv, Linear for the 1x1 convs, Linear to the frame
+ fold for the transposed conv), the decoder runs ~2x faster in bf16 on AVX-512-bf16 CPUs, whereas
bf16 autocast on the Conv1d form is slower (MACHINE-NOTES.md).
"""
import torch
from torch import nn
from torch.nn import functional as F

from .model import SING


def cpu_supports_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def best_dtype(device) -> torch.dtype:
    """The fastest dtype this device computes in natively (fp16 on CPU is storage only)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


class FastRenderer(nn.Module):
    """Renders notes with the weights of a `SING` model, reshaped once for GEMMs.

    The LSTM and the decoder run in `dtype` (bf16 LSTM: 124 -> 83 ms per note at full size, batch 8,
    on this CPU); the overlap-add is summed in fp32.

    Shape:
        instrument: `[B]` ids or `[B, n_instruments]` blend weights; pitch, velocity: `[B]`
        output: `[B, length]` float32
    """

    def __init__(self, model: SING, dtype=None, device=None, lstm_dtype=None):
        super().__init__()
        config = model.config
        device = torch.device(device or next(model.parameters()).device)
        dtype = dtype or best_dtype(device)
        self.config = config
        self.dtype = dtype
        lstm_dtype = lstm_dtype or dtype
        seq = type(model.sequence_generator)(config)
        seq.load_state_dict(model.sequence_generator.state_dict())
        self.sequence_generator = seq.to(device=device, dtype=lstm_dtype).eval()
        layers = model.decoder.layers
        conv0, conv1, conv2, out = layers[0], layers[2], layers[4], layers[6]
        with torch.no_grad():
            weights = {
                # unfold gives [B, L, D, K] windows: the conv weight [C, D, K] flattens to match
                "w0": conv0.weight.reshape(conv0.weight.shape[0], -1), "b0": conv0.bias,
                "w1": conv1.weight[..., 0], "b1": conv1.bias,
                "w2": conv2.weight[..., 0], "b2": conv2.bias,
                "w_frame": out.conv_tr.weight[:, 0, :] * out.window,
            }
            for name, value in weights.items():
                self.register_buffer(name, value.detach().to(device=device, dtype=dtype).clone())
            self.register_buffer("b_out", out.conv_tr.bias.detach().to(device=device, dtype=torch.float32))

    @torch.no_grad()
    def decode(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Frame embeddings `[B, T, D]` -> waveform `[B, length]` (float32)."""
        return self.overlap_add(self.frames(self.windows(embeddings)))

    def windows(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The kernel-K windows of the embeddings, `[B, L, D * K]` (L = T - K + 1 frames)."""
        return embeddings.to(self.dtype).unfold(1, self.config.kernel, 1).flatten(2)

    @torch.no_grad()
    def frames(self, windows: torch.Tensor) -> torch.Tensor:
        """Windows `[B, L, D * K]` -> windowed frames `[B, L, frame]` in float32.  Frames are
        independent of each other, so any run of windows can be decoded on its own (`stages`)."""
        x = F.relu(F.linear(windows, self.w0, self.b0))
        x = F.relu(F.linear(x, self.w1, self.b1))
        x = F.relu(F.linear(x, self.w2, self.b2))
        return (x @ self.w_frame).float()

    def _fold(self, frames: torch.Tensor) -> tuple:
        """Overlap-add of frames `[B, K, frame]` -> (untrimmed wave `[B, 1, 1, full]`, first kept
        sample): the transposed conv's padding (frame - stride) plus the decoder's trim (frame / 2)."""
        config = self.config
        full = (frames.shape[1] - 1) * config.stride + config.frame
        wave = F.fold(frames.transpose(1, 2), output_size=(1, full),
                      kernel_size=(1, config.frame), stride=(1, config.stride))
        return wave, config.frame - config.stride + config.frame // 2

    def overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames `[B, L, frame]` -> waveform `[B, length]` (the transposed conv's overlap-add)."""
        wave, start = self._fold(frames)
        return wave[:, 0, 0, start:start + self.config.length] + self.b_out

    def head_wave(self, frames: torch.Tensor) -> torch.Tensor:
        """The samples the first frames `[B, K, frame]` settle on their own: every sample before
        frame K's start, `[B, K * stride - trim]` -- the first samples of `overlap_add` of all
        frames, bit for bit."""
        wave, start = self._fold(frames)
        end = min(frames.shape[1] * self.config.stride, start + self.config.length)
        return wave[:, 0, 0, start:end] + self.b_out

    @torch.no_grad()
    def stages(self, instrument, pitch, velocity, lstm_chunks: int = 4, decoder_chunk: int = 64,
               head_frames: int = 0):
        """`forward` in short steps: a generator that yields between them and returns the
        waveform `[B, length]` (as ``StopIteration.value``).

        The LSTM runs in ``lstm_chunks`` runs of steps (its state carried over), the decoder in
        runs of ``decoder_chunk`` frames, so that a caller can do something else between two
        steps -- the live renderer renders a key pressed now there, instead of waiting for a
        whole prewarm batch.  It yields None, except with ``head_frames`` > 0: then the LSTM's
        first ``head_frames + kernel - 1`` steps and the decoder's first ``head_frames`` frames
        run first, and the first step yields the note's head, `head_wave` of those frames (the
        LSTM is causal and frames overlap only their neighbours, so the head's samples are final:
        a note can start playing while the rest renders).  The result equals `forward`'s up to
        the GEMMs' rounding."""
        seq = self.sequence_generator
        steps = self.config.steps
        parts, state, done, head = [], None, 0, None
        if head_frames > 0:
            wave, (symbols, _, out, state, head) = self.head(instrument, pitch, velocity, head_frames)
            parts.append(out)
            done = out.shape[1]
            yield wave
        else:
            symbols = seq.symbols(instrument, pitch, velocity)
        chunks = max(1, lstm_chunks)
        bounds = [done + round((steps - done) * i / chunks) for i in range(chunks + 1)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b > a:
                out, state = seq.run(symbols, pitch, a, b - a, state)
                parts.append(out)
                yield
        windows = self.windows(torch.cat(parts, dim=1))
        frames = [] if head is None else [head]
        for a in range(0 if head is None else head.shape[1], windows.shape[1], max(1, decoder_chunk)):
            frames.append(self.frames(windows[:, a:a + decoder_chunk]))
            yield
        return self.overlap_add(torch.cat(frames, dim=1))

    @torch.no_grad()
    def head(self, instrument, pitch, velocity, head_frames: int) -> tuple:
        """The first step of a head-first render (`stages`): the LSTM's first ``head_frames +
        kernel - 1`` steps and the decoder's first ``head_frames`` frames.  Returns (the note's
        head `[B, samples]`, `head_wave`; what `rest` goes on from)."""
        seq, config = self.sequence_generator, self.config
        symbols = seq.symbols(instrument, pitch, velocity)
        out, state = seq.run(symbols, pitch, 0, min(config.steps, head_frames + config.kernel - 1))
        frames = self.frames(self.windows(out))
        return self.head_wave(frames), (symbols, pitch, out, state, frames)

    @torch.no_grad()
    def rest(self, carry) -> torch.Tensor:
        """The rest of a `head` render in one run: the whole waveform `[B, length]`, equal to
        `stages`' (and to `forward`'s up to the GEMMs' rounding)."""
        symbols, pitch, out, state, head = carry
        parts, done = [out], out.shape[1]
        if done < self.config.steps:
            parts.append(self.sequence_generator.run(symbols, pitch, done, self.config.steps - done, state)[0])
        windows = self.windows(torch.cat(parts, dim=1))
        return self.overlap_add(torch.cat([head, self.frames(windows[:, head.shape[1]:])], dim=1))

    @torch.no_grad()
    def forward(self, instrument, pitch, velocity) -> torch.Tensor:
        embeddings = self.sequence_generator(instrument, pitch, velocity)
        return self.decode(embeddings)


class GraphedRenderer:
    """`FastRenderer.forward` replayed from CUDA graphs: one graph per batch size in ``buckets``.

    A call of B notes runs in pieces of at most the largest bucket; each piece is copied into the
    static inputs of the smallest bucket that holds it (the spare rows repeat its first note, so
    every row is a valid note), the bucket's graph is replayed, and its first rows are copied out.
    A graph is captured on first use.  Replaying one launches every kernel of a note batch at once
    (a full-size note is ~800 LSTM step kernels and a dozen decoder GEMMs), so small batches stop
    paying Python's and the launches' overhead.  Graphs share one memory pool: calls must not run
    concurrently (one renderer thread).

    Head first (`head`, then `rest`): a bucket has two more graphs, `FastRenderer.head` (the
    LSTM's first steps and the decoder's first frames: what a key pressed now waits for) and
    `FastRenderer.rest` (the rest of the same notes, from the first graph's static state).

    Off CUDA (or with ``capture=False``) the same buckets run eagerly on the static inputs, which
    keeps the padding and slicing testable on a CPU.

    Shape:
        instrument: `[B]` ids or `[B, n_instruments]` blend weights; pitch, velocity: `[B]`
        output: `[B, length]` float32
    """

    def __init__(self, fast: FastRenderer, buckets=(1, 8, 64, 256), capture=None):
        if not buckets or min(buckets) < 1:
            raise ValueError(f"buckets must be positive batch sizes, got {buckets!r}")
        self.fast = fast
        self.device = fast.w0.device
        self.capture = self.device.type == "cuda" if capture is None else bool(capture)
        self.buckets = sorted(set(int(b) for b in buckets))
        self._slots = {}     # (bucket, instrument ndim, instrument dtype) -> [step, inputs]
        self._heads = {}     # (head_frames, bucket, ndim, dtype) -> [(head, rest) steps, inputs]
        self._pending = None     # `head`'s steps and batch size, or the whole notes, for `rest`
        self._pool = None

    def __call__(self, instrument, pitch, velocity) -> torch.Tensor:
        n = int(pitch.shape[0])
        pieces = []
        for start in range(0, n, self.buckets[-1]):
            end = min(n, start + self.buckets[-1])
            pieces.append(self._run(instrument[start:end], pitch[start:end], velocity[start:end]))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def head(self, instrument, pitch, velocity, head_frames: int) -> torch.Tensor:
        """`FastRenderer.head`'s head of each note `[B, samples]` from a graph (one per bucket
        and ``head_frames``); `rest` then returns the same notes whole.  A batch larger than the
        largest bucket is rendered whole at once, its head cut from it."""
        n = int(pitch.shape[0])
        if n > self.buckets[-1]:
            self._pending = whole = self(instrument, pitch, velocity)
            return whole[:, :head_frames * self.fast.config.stride]
        bucket = next(b for b in self.buckets if b >= n)
        key = (int(head_frames), bucket, instrument.dim(), instrument.dtype)
        slot = self._heads.get(key)
        if slot is None:
            inputs = self._inputs(bucket, instrument)
            slot = self._heads[key] = [self._capture_head(inputs, head_frames), inputs]
        (head, rest), inputs = slot
        self._fill(inputs, (instrument, pitch, velocity), n)
        self._pending = (head, rest, n)
        return self._replay(head)[:n].clone()

    def rest(self) -> torch.Tensor:
        """The whole notes `[B, length]` of the last `head` call."""
        pending, self._pending = self._pending, None
        if pending is None:
            raise RuntimeError("rest() without a head() before it")
        if isinstance(pending, torch.Tensor):
            return pending
        _, rest, n = pending
        return self._replay(rest)[:n].clone()

    def _capture_head(self, inputs, head_frames: int) -> tuple:
        """(head, rest) steps, each [graph or None, static output, function]: `FastRenderer.head`
        of the static inputs, then `FastRenderer.rest` of the head's static state."""
        head = [None, None, lambda: self.fast.head(*inputs, head_frames)]
        rest = [None, None, lambda: self.fast.rest(head[1][1])]
        if self.capture:
            head[:2] = self._capture(head[2])
            head[0].replay()          # the rest's warm-up runs read a state, not garbage
            rest[:2] = self._capture(rest[2])
        return head, rest

    @staticmethod
    def _replay(step) -> torch.Tensor:
        """Replays a step's graph, [graph or None, static output, function] (without a graph:
        runs its function); its waveform."""
        graph, _, fn = step
        if graph is None:
            step[1] = fn()
        else:
            graph.replay()
        return step[1][0] if isinstance(step[1], tuple) else step[1]

    def _run(self, instrument, pitch, velocity) -> torch.Tensor:
        n = int(pitch.shape[0])
        bucket = next(b for b in self.buckets if b >= n)
        step, inputs = self._slot(bucket, instrument)
        self._fill(inputs, (instrument, pitch, velocity), n)
        return self._replay(step)[:n].clone()

    @staticmethod
    def _fill(inputs, values, n: int) -> None:
        """Copies a batch of ``n`` notes into a bucket's static inputs, the spare rows repeating
        its first note."""
        for static, value in zip(inputs, values):
            static[:n].copy_(value)
            static[n:].copy_(value[:1].expand_as(static[n:]))

    def _inputs(self, bucket: int, instrument) -> tuple:
        """A bucket's static inputs, valid notes (a blend has all its weight on instrument 0)."""
        inputs = (torch.zeros((bucket, *instrument.shape[1:]), dtype=instrument.dtype, device=self.device),
                  torch.full((bucket,), 60, dtype=torch.long, device=self.device),
                  torch.zeros(bucket, dtype=torch.long, device=self.device))
        if instrument.dim() > 1:
            inputs[0][:, 0] = 1
        return inputs

    def _slot(self, bucket: int, instrument) -> list:
        key = (bucket, instrument.dim(), instrument.dtype)
        if key not in self._slots:
            inputs = self._inputs(bucket, instrument)
            step = [None, None, lambda: self.fast(*inputs)]
            if self.capture:
                step[:2] = self._capture(step[2])
            self._slots[key] = [step, inputs]
        return self._slots[key]

    def _capture(self, fn) -> tuple:
        """(a CUDA graph of ``fn()``, its static output).  Warm-up runs go on a side stream
        first, as capture requires (cuDNN and cuBLAS set up their workspaces).  The pool is
        shared: one graph's replay may overwrite another's output, hence the copies out."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: another renderer thread may sync or allocate while this one captures
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            output = fn()
        return graph, output
