import pytest

from sing_synth.timing import CallbackTimes


def test_callback_times_keep_the_last_values_in_order():
    times = CallbackTimes(size=4)
    assert times.since(0).size == 0 and times.summary()["n"] == 0
    for v in range(1, 4):
        times.add(v)
    assert times.since(0).tolist() == [1, 2, 3] and times.since(1).tolist() == [2, 3]
    for v in range(4, 11):                      # wraps around the ring twice
        times.add(v)
    assert times.count == 10
    assert times.since(0).tolist() == [7, 8, 9, 10]            # the last 4 only
    assert times.since(7).tolist() == [8, 9, 10] and times.since(10).size == 0
    assert times.since(12).size == 0                           # a count from before a clear
    s = times.summary()
    assert s["n"] == 4 and s["max_us"] == 10e6 and s["p50_us"] == pytest.approx(8.5e6)
    times.clear()
    assert times.count == 0 and times.since(0).size == 0
