"""rANS message layer (utils/ans.py): exact round trips, stack semantics,
bits-back identity, serialization, size accounting and bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from utils import ans

LAYOUTS = [ans.Message, ans.InterleavedMessage]


def random_intervals(rng, shape, precision, extreme=False):
    """Random (start, freq) inside [0, 2^p): some tiny (freq 1) and some
    near-certain (freq ~ 2^p) when ``extreme``."""
    total = 1 << precision
    if extreme:
        kind = rng.integers(0, 3, size=shape)
        freq = np.where(kind == 0, 1, np.where(kind == 1, total - rng.integers(0, 3, size=shape),
                                               rng.integers(1, total, size=shape)))
    else:
        freq = rng.integers(1, total, size=shape)
    freq = np.maximum(freq, 1)
    start = (rng.uniform(size=shape) * (total - freq + 1)).astype(np.int64)
    return start.astype(np.int64), freq.astype(np.int64)


def push_all(msg, start, freq):
    msg.push(start, freq)


def pop_all(msg, start, freq):
    """Pop with a lookup that checks the peeked cf lies in the expected interval
    and returns it; returns the number of checks made."""
    s_steps, n = msg.to_steps(start)
    f_steps, _ = msg.to_steps(freq)

    def lookup(sl, cf):
        s, f = s_steps[sl].astype(np.uint64), f_steps[sl].astype(np.uint64)
        assert ((cf >= s) & (cf < s + f)).all(), "peeked cf outside the pushed interval"
        return s_steps[sl], s, f

    out = msg.pop(n, lookup)
    np.testing.assert_array_equal(out, s_steps)


@settings(max_examples=25, deadline=None)
@given(precision=st.integers(ans.MIN_PRECISION, ans.MAX_PRECISION),
       lanes=st.integers(1, 9), n=st.integers(0, 40), seed=st.integers(0, 2 ** 31),
       extreme=st.booleans(), independent=st.booleans())
def test_round_trip_restores_message(precision, lanes, n, seed, extreme, independent):
    rng = np.random.default_rng(seed)
    layout = ans.Message if independent else ans.InterleavedMessage
    msg = layout.random(lanes, 3, seed, precision=precision)
    initial = msg.copy()
    shape = (lanes, n) if independent else (n,)
    start, freq = random_intervals(rng, shape, precision, extreme)
    push_all(msg, start, freq)
    pop_all(msg, start, freq)
    assert msg == initial
    assert msg.to_bytes() == initial.to_bytes()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_stack_semantics_last_in_first_out(layout):
    rng = np.random.default_rng(1)
    msg = layout.empty(4)
    shape = (4, 7) if layout is ans.Message else (13,)
    a = random_intervals(rng, shape, msg.precision)
    b = random_intervals(rng, shape, msg.precision)
    msg.push(*a)
    after_a = msg.copy()
    msg.push(*b)
    pop_all(msg, *b)
    assert msg == after_a
    pop_all(msg, *a)
    assert msg == layout.empty(4)


def test_bits_back_identity_pop_then_push_restores_random_message():
    """Pop under a distribution from seeded random words, push the same
    symbols back: the initial message returns bit for bit."""
    p = ans.DEFAULT_PRECISION
    msg = ans.Message.random(5, 20, seed=3)
    initial = msg.copy()
    # A fixed 4-symbol distribution: the lookup decodes whichever symbol the bits say.
    cdf = np.array([0, 1, 1 << (p - 2), (1 << p) - 5, 1 << p], dtype=np.uint64)
    popped = []

    def lookup(sl, cf):
        k = np.searchsorted(cdf, cf, side="right") - 1
        popped.append(k)
        return k, cdf[k], cdf[k + 1] - cdf[k]

    syms = msg.pop(30, lookup)
    assert msg.bits() < initial.bits()
    # pop returns, step-major, exactly what the lookup decoded (last step first)
    assert len(popped) == 30 and all(k.shape == (5,) for k in popped)
    np.testing.assert_array_equal(syms, np.concatenate(popped[::-1]))
    assert ((syms >= 0) & (syms < 4)).all() and len(np.unique(syms)) > 1
    s = msg.from_steps(syms, 30, (5, 30))
    msg.push(cdf[s].astype(np.int64), (cdf[s + 1] - cdf[s]).astype(np.int64))
    assert msg == initial


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pop_past_bottom_raises_and_leaves_message_unchanged(layout):
    msg = layout.empty(3)
    msg.push(*([np.full((3, 2), 5)] * 2) if layout is ans.Message else [np.full(6, 5)] * 2)
    before = msg.copy()
    n = 50 if layout is ans.Message else 150
    with pytest.raises(ValueError, match="bottom"):
        msg.pop(n, lambda sl, cf: (cf, cf, np.ones_like(cf)))
    assert msg == before


@pytest.mark.parametrize("layout", LAYOUTS)
def test_underflow_opt_in_borrows_deterministic_words(layout):
    lanes = 3
    steps = 40 if layout is ans.Message else 120
    results = []
    for _ in range(2):
        msg = layout.empty(lanes, underflow_seed=7)
        out = msg.pop(steps, lambda sl, cf: (cf, cf, np.ones_like(cf)))
        results.append((out, msg.to_array()))
        assert np.sum(msg.borrowed_words) > 0
    np.testing.assert_array_equal(results[0][0], results[1][0])
    # Pushing the popped symbols back reproduces the borrowed words on the stack.
    msg = layout.empty(lanes, underflow_seed=7)
    out = msg.pop(steps, lambda sl, cf: (cf, cf, np.ones_like(cf)))
    shape = (lanes, steps) if layout is ans.Message else (steps,)
    sym = msg.from_steps(out, steps, shape).astype(np.int64)
    msg.push(sym, np.ones_like(sym))
    again = layout.from_array(msg.to_array(), underflow_seed=7)
    out2 = again.pop(steps, lambda sl, cf: (cf, cf, np.ones_like(cf)))
    np.testing.assert_array_equal(out, out2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_serialization_round_trip(layout):
    rng = np.random.default_rng(4)
    msg = layout.random(6, 11, seed=5, precision=20)
    shape = (6, 9) if layout is ans.Message else (23,)
    msg.push(*random_intervals(rng, shape, 20))
    data = msg.to_bytes()
    assert len(data) * 8 >= msg.bits()
    back = layout.from_bytes(data)
    assert back == msg and back.precision == 20
    arr = msg.to_array()
    assert arr.dtype == np.uint32
    assert layout.from_array(arr) == msg


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("data, problem", [
    (b"", "header"), (b"abc", "multiple of 4"), (b"\x00" * 64, "header"),
])
def test_bytes_that_are_not_a_message(layout, data, problem):
    with pytest.raises(ValueError, match=problem):
        layout.from_bytes(data)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_truncated_message_rejected(layout):
    msg = layout.random(2, 4, seed=1)
    with pytest.raises(ValueError, match="not a"):
        layout.from_bytes(msg.to_bytes()[:-4])


def test_other_layout_rejected():
    with pytest.raises(ValueError, match="interleaved"):
        ans.InterleavedMessage.from_bytes(ans.Message.empty(2).to_bytes())


@pytest.mark.parametrize("precision", [15, 32, 20.0, True])
def test_precision_range(precision):
    with pytest.raises(ValueError, match="precision"):
        ans.Message.empty(2, precision=precision)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bad_intervals_rejected_message_unchanged(layout):
    msg = layout.random(2, 2, seed=0)
    before = msg.copy()
    shape = (2, 3) if layout is ans.Message else (3,)
    with pytest.raises(ValueError, match="freq"):
        msg.push(np.zeros(shape, np.int64), np.zeros(shape, np.int64))
    with pytest.raises(ValueError, match="inside"):
        msg.push(np.full(shape, 1 << msg.precision), np.ones(shape, np.int64))
    assert msg == before


def test_sizes_count_heads_and_words():
    msg = ans.Message.empty(4)
    np.testing.assert_array_equal(msg.lane_bits(), [33] * 4)
    assert msg.bits() == 132
    rnd = ans.Message.random(3, 10, seed=1)
    np.testing.assert_array_equal(rnd.lane_bits(), [64 + 320] * 3)
    il = ans.InterleavedMessage.random(3, 10, seed=1)
    assert il.bits() == 3 * 64 + 320


def test_independent_lanes_each_cost_as_a_single_lane_coder():
    """A lane of a multi-lane message is bit-identical to a one-lane message
    fed the same intervals."""
    rng = np.random.default_rng(6)
    start, freq = random_intervals(rng, (4, 30), 24)
    multi = ans.Message.random(4, 2, seed=9, precision=24)
    singles = [ans.Message(multi.head[i:i + 1], [multi.stack(i)], precision=24) for i in range(4)]
    multi.push(start, freq)
    for i, single in enumerate(singles):
        single.push(start[i:i + 1], freq[i:i + 1])
        assert single.head[0] == multi.head[i]
        np.testing.assert_array_equal(single.stack(0), multi.stack(i))
        assert single.lane_bits()[0] == multi.lane_bits()[i]


def test_peek_advance_low_level_verbs():
    p = 16
    msg = ans.InterleavedMessage.random(4, 2, seed=2, precision=p)
    before = msg.copy()
    start = np.array([0, 10, 100, 1000])
    freq = np.array([5, 20, 300, 64000])
    msg.push(start, freq)
    pushed = msg.copy()
    cf = msg.peek()
    assert ((cf >= start) & (cf < start + freq)).all()
    # an interval that cannot hold the peeked value is refused, message untouched
    with pytest.raises(ValueError, match="interval does not contain"):
        msg.advance(start + freq, np.ones(4, np.int64))
    assert msg == pushed
    msg.advance(start, freq)
    assert msg == before


@pytest.mark.parametrize("precision", [16, ans.DEFAULT_PRECISION, 31])
def test_certain_symbol_leaves_the_message_alone(precision):
    """A symbol of frequency 2^p carries no information: pushing it must not
    emit a word or change the head, even at the largest head (where the
    emission bound freq * 2^(64-p) wraps to 0 in uint64)."""
    for head in ((1 << 64) - 1, 1 << 63, 1 << 32):
        msg = ans.Message(np.array([head, head], np.uint64), [np.array([7], np.uint32)] * 2,
                          precision=precision)
        before = msg.copy()
        msg.push(np.zeros(2, np.int64), np.full(2, 1 << precision, np.int64))
        assert msg == before and int(msg.head[0]) == head
        out = msg.pop(1, lambda sl, cf: (np.zeros(2, np.int64), np.zeros(2, np.uint64),
                                         np.full(2, 1 << precision, np.uint64)))
        assert msg == before and out.tolist() == [0, 0]


def exact_push(x, start, freq, p, words):
    """The push of the module docstring in exact Python integers."""
    if x >= freq << (64 - p):
        words.append(x & 0xFFFFFFFF)
        x >>= 32
    return (x // freq << p) + x % freq + start


def test_precision_31_extremes_agree_with_exact_integers():
    """p = 31 (the authors' coder): heads at both ends of [2^32, 2^64) with
    the smallest and largest frequencies and the extreme starts, pushed and
    popped, equal the same formulas in exact integers, and every head stays
    inside [2^32, 2^64)."""
    p = 31
    total = 1 << p
    cases = [(0, 1), (total - 1, 1), (0, total - 1), (1, total - 1), (0, total),
             (total // 2, total // 2), (12345, 3)]
    heads = [1 << 32, (1 << 33) - 1, 1 << 63, (1 << 64) - 1, (1 << 64) - (1 << 31)]
    lanes = len(heads)
    for start, freq in cases:
        starts = np.full((lanes, 3), start, np.int64)
        freqs = np.full((lanes, 3), freq, np.int64)
        msg = ans.Message(np.array(heads, np.uint64), [np.zeros(0, np.uint32)] * lanes,
                          precision=p)
        before = msg.copy()
        msg.push(starts, freqs)
        for lane, head in enumerate(heads):
            words, x = [], head
            for _ in range(3):
                x = exact_push(x, start, freq, p, words)
                assert (1 << 32) <= x < (1 << 64)
            assert int(msg.head[lane]) == x
            assert msg.stack(lane).tolist() == words
        pop_all(msg, starts, freqs)
        assert msg == before
