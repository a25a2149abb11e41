import pytest
import torch

from sing_synth.config import SingConfig, named_config
from sing_synth.fast import FastRenderer, GraphedRenderer, best_dtype, cpu_supports_bf16
from sing_synth.model import SING


def relative_l2(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("dtype, harmonics", [(torch.float32, 0), (torch.bfloat16, 0), (torch.float32, 8),
                                               (torch.bfloat16, 8)])
def test_fast_path_matches_reference(dtype, harmonics):
    torch.manual_seed(0)
    model = SING(named_config("small", n_instruments=20, phase_harmonics=harmonics)).eval()
    if harmonics:   # weights on the phase inputs as large as the others'
        torch.nn.init.uniform_(model.sequence_generator.lstm.weight_ih_l0, -0.2, 0.2)
    instrument, pitch, velocity = torch.tensor([0, 7, 19]), torch.tensor([21, 60, 108]), torch.tensor([0, 2, 4])
    with torch.no_grad():
        reference = model(instrument, pitch, velocity)
    fast = FastRenderer(model, dtype=dtype)(instrument, pitch, velocity)
    assert fast.shape == (3, 64000) and fast.dtype == torch.float32
    assert relative_l2(fast, reference) <= (1e-5 if dtype == torch.float32 else 1e-2)


def test_fast_path_handles_blends():
    torch.manual_seed(1)
    model = SING(SingConfig(n_instruments=4, lstm_hidden=16, lstm_layers=1, channels=64)).eval()
    blend = torch.tensor([[0.25, 0.75, 0.0, 0.0]])
    with torch.no_grad():
        reference = model(blend, torch.tensor([64]), torch.tensor([3]))
    fast = FastRenderer(model, dtype=torch.float32)(blend, torch.tensor([64]), torch.tensor([3]))
    assert relative_l2(fast, reference) <= 1e-5


def test_best_dtype_on_cpu():
    assert best_dtype("cpu") == (torch.bfloat16 if cpu_supports_bf16() else torch.float32)


@pytest.mark.parametrize("lstm_chunks, decoder_chunk", [(1, 1000), (3, 50), (265, 1)])
def test_stages_give_forwards_result_in_steps(lstm_chunks, decoder_chunk):
    torch.manual_seed(2)
    model = SING(SingConfig(n_instruments=3, lstm_hidden=16, lstm_layers=2, channels=32)).eval()
    fast = FastRenderer(model, dtype=torch.float32)
    symbols = torch.tensor([0, 2]), torch.tensor([60, 40]), torch.tensor([3, 1])
    steps = fast.stages(*symbols, lstm_chunks=lstm_chunks, decoder_chunk=decoder_chunk)
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            wave = done.value
            break
        count += 1
    frames = model.config.steps - model.config.kernel + 1
    assert count == min(lstm_chunks, model.config.steps) + -(-frames // decoder_chunk)
    assert relative_l2(wave, fast(*symbols)) <= 1e-6


def tiny_fast(n_instruments=4, seed=2):
    torch.manual_seed(seed)
    model = SING(SingConfig(n_instruments=n_instruments, lstm_hidden=16, lstm_layers=1, channels=32)).eval()
    return FastRenderer(model, dtype=torch.float32)


@pytest.mark.parametrize("n", [1, 3, 8, 11])
def test_graphed_buckets_pad_and_split_to_the_same_notes(n):
    fast = tiny_fast()
    graphed = GraphedRenderer(fast, buckets=(1, 4, 8), capture=False)
    g = torch.Generator().manual_seed(n)
    instrument = torch.randint(0, 4, (n,), generator=g)
    pitch = torch.randint(24, 97, (n,), generator=g)
    velocity = torch.randint(0, 5, (n,), generator=g)
    out = graphed(instrument, pitch, velocity)
    expected = fast(instrument, pitch, velocity)
    assert out.shape == (n, fast.config.length)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # 11 notes: 8 then 3 padded to 4; 3: padded to 4; 1: its own bucket
    assert {key[0] for key in graphed._slots} == {1: {1}, 3: {4}, 8: {8}, 11: {4, 8}}[n]


def test_graphed_output_survives_the_next_call_and_takes_blends():
    fast = tiny_fast()
    graphed = GraphedRenderer(fast, buckets=(2,), capture=False)
    blend = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    first = graphed(blend, torch.tensor([60]), torch.tensor([3]))
    kept = first.clone()
    graphed(torch.tensor([[0.0, 0.0, 0.0, 1.0]]), torch.tensor([40]), torch.tensor([1]))
    torch.testing.assert_close(first, kept)           # a copy, not a view of the static output
    torch.testing.assert_close(first, fast(blend, torch.tensor([60]), torch.tensor([3])), rtol=1e-5, atol=1e-6)


def test_graphed_rejects_empty_buckets():
    with pytest.raises(ValueError):
        GraphedRenderer(tiny_fast(), buckets=())


def _stages(fast, inputs, head_frames):
    """`FastRenderer.stages`' head and whole waveform."""
    steps = fast.stages(*inputs, head_frames=head_frames)
    head = next(steps)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return head, done.value


class FakeGraph:
    """Stands in for a CUDA graph on a CPU: capture runs ``fn`` once, replay runs it again and
    writes its result into the captured (static) output in place, as a graph's kernels do."""
    def __init__(self, fn):
        self.fn, self.output = fn, fn()

    def replay(self):
        _copy_into(self.output, self.fn())


def _copy_into(dst, src):
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    else:
        for d, s in zip(dst, src):
            _copy_into(d, s)


@pytest.mark.parametrize("n, fake_graphs", [(1, False), (3, False), (3, True), (11, False)])
def test_graphed_head_then_rest_give_stages_head_and_whole_notes(n, fake_graphs):
    """`GraphedRenderer.head` gives what `stages` yields first, `rest` the whole notes; 3 notes
    pad a bucket of 4; 11 are more than the largest bucket (rendered whole, the head cut from
    them).  With stand-in graphs, the rest's graph reads the head graph's static state."""
    fast = tiny_fast()
    graphed = GraphedRenderer(fast, buckets=(1, 4, 8), capture=False)
    if fake_graphs:
        graphed.capture = True
        graphed._capture = lambda fn: (lambda g: (g, g.output))(FakeGraph(fn))
    g = torch.Generator().manual_seed(n)
    inputs = (torch.randint(0, 4, (n,), generator=g), torch.randint(24, 97, (n,), generator=g),
              torch.randint(0, 5, (n,), generator=g))
    head, whole = _stages(fast, inputs, 8)
    for _ in range(2):           # the second call replays what the first one made
        got_head = graphed.head(*inputs, 8)
        got_whole = graphed.rest()
        if n <= 8:
            torch.testing.assert_close(got_head, head, rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(got_head, whole[:, :8 * fast.config.stride])
        torch.testing.assert_close(got_whole, whole, rtol=1e-5, atol=1e-6)
        inputs = tuple(x.flip(0) for x in inputs)
        head, whole = _stages(fast, inputs, 8)
    assert len(graphed._heads) == (n <= 8)
    with pytest.raises(RuntimeError):
        graphed.rest()
