"""Exact, vectorized rANS with stack semantics (numpy only).

This module owns the entropy-coder state: heads, stacks of 32-bit words,
renormalisation, serialization and size accounting.  It knows nothing about
probability distributions; a codec (utils/distributions.py) turns symbols
into integer intervals ``(start, freq)`` of the quantized CDF and back.

Two message layouts, one arithmetic:

* :class:`Message` -- independent lanes, each with its own head and its own
  stack (one lane per independent chain).  A lane's size and its initial-bits
  accounting are exactly those of a single-lane coder; numpy works on all
  lanes at once.  Symbols are arrays shaped ``(lanes, n)``: each lane codes
  its own ``n`` symbols, column 0 first (so a pop returns column n-1 first).
* :class:`InterleavedMessage` -- ``lanes`` heads sharing one stack (one long
  message).  A flat array of ``n`` symbols is coded in ``ceil(n / lanes)``
  vector steps; step j codes symbols ``[j*lanes, (j+1)*lanes)`` on lanes
  ``0..``.  The final head of every lane counts in the size, so the lane count
  trades speed against a constant ``~64 * lanes`` bits.

Arithmetic (both layouts).  Precision ``p`` (16..31): a quantized
distribution gives every symbol an interval ``[start, start + freq)`` of
``[0, 2^p)`` with ``freq >= 1``.  A head ``x`` is a uint64 kept in the
interval ``I = [2^32, 2^64)``; words are 32 bits.

Renormalisation bound (why uint64 never overflows and one word suffices):

* push(start, freq): if ``x >= freq * 2^(64-p)`` (tested as
  ``x > freq * 2^(64-p) - 1`` so that freq = 2^p, a certain symbol, does not
  overflow the bound) emit the low word and set
  ``x >>= 32``; afterwards ``x < 2^32 <= freq * 2^(64-p)`` (freq >= 1,
  p <= 32), so one word is always enough.  Then
  ``x' = (x // freq) * 2^p + x % freq + start``.  Upper bound:
  ``x // freq < 2^(64-p)`` so ``x' <= (2^(64-p) - 1) * 2^p + (freq - 1) + start
  < 2^64`` because ``start + freq <= 2^p``.  Lower bound: ``x' >= x`` since
  ``2^p >= freq`` (no emission), and ``x >= freq * 2^(64-p)`` before an
  emission gives ``x >> 32 >= freq * 2^(32-p)`` hence ``x' >= 2^32``.
  All intermediate values (``(x // freq) << p`` and the sums) are < 2^64.
* pop: ``cf = x mod 2^p``; the codec finds the symbol with
  ``start <= cf < start + freq``; ``x' = freq * (x >> p) + cf - start`` is the
  exact inverse of the push (so ``x' < 2^64``).  If ``x' < 2^32`` one word is
  read: ``x' >= freq * (x >> p) >= 2^(32-p) >= 1`` so ``(x' << 32) | w`` lies
  in I, and ``x' < 2^32`` keeps it below 2^64.

The bounds at p = 31, the largest precision (the authors' coder works at
31 bits with the same head interval, the same 32-bit words and the same
emission rule ``x >= freq * 2^33``): a push emits when
``x > freq * 2^33 - 1``; for freq = 2^31 that bound is 2^64 - 1 (the wrap of
``2^31 << 33`` to 0, minus one), so a certain symbol never emits and leaves
``x`` unchanged (``x // 2^31 * 2^31 + x % 2^31 = x``).  After an emission
``x < 2^32 <= freq * 2^33``; then ``x // freq < 2^33`` and
``x' <= (2^33 - 1) * 2^31 + (freq - 1) + start <= 2^64 - 2^31 + 2^31 - 1
= 2^64 - 1``.  A pop has ``x >> 31 >= 2`` (x >= 2^32), so
``x' >= 2 * freq >= 2`` before a word is read and ``x' < 2^32`` after the
test, giving ``2^32 <= (x' << 32) | w < 2^64``.  The codecs form
``floor(F * (2^31 - K))`` in float64 (exact below 2^53) and int64.
tests/test_ans.py checks these extremes against exact Python integers.

Default precision 28: the floor of one unit per bin costs at most
``K * 2^-28`` of probability mass (4e-6 for 1,024 latent bins, < 1e-5 bits
per symbol), rounding of frequencies is negligible at this resolution, and
the bins-to-integers map is formed in float64 (53-bit mantissa), so
``floor(F * 2^p)`` is well resolved for every p <= 31.  Speed does not depend
on p here (no tables), so there is no reason to pick it smaller.

Stack bottom: popping past the bottom of a stack raises ``ValueError`` and
leaves the message unchanged, unless the message was created with
``underflow_seed`` (explicit opt-in): then the missing words are drawn from a
deterministic hash of ``(seed, lane, k)`` (the k-th word borrowed by that
lane) and counted in ``borrowed_words``, which is what bits-back's "initial
bits" accounting needs.  Seeded random initial stacks are also available via
``random(...)``.

Sizes: ``bits()`` counts 32 bits per stack word plus, per head, the number
of significant bits of the head (``floor(log2 x) + 1``, between 33 and 64);
the serialized form stores every head as two words.
"""
import numpy as np

DEFAULT_PRECISION = 28
MIN_PRECISION = 16
MAX_PRECISION = 31

_WORD_BITS = np.uint64(32)
_LOW_WORD = np.uint64(0xFFFFFFFF)
_HEAD_MIN = np.uint64(1 << 32)
_MAGIC = 0x534E4172            # b"rANS" read as little-endian uint32
_LAYOUT_INDEPENDENT = 1
_LAYOUT_INTERLEAVED = 2


def _check_precision(precision):
    if isinstance(precision, bool) or not isinstance(precision, (int, np.integer)):
        raise ValueError(f"precision must be an integer, got {precision!r}")
    if not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise ValueError(f"precision must be in [{MIN_PRECISION}, {MAX_PRECISION}], got {precision}")
    return int(precision)


def _check_lanes(lanes):
    if isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer)) or lanes < 1:
        raise ValueError(f"lanes must be a positive integer, got {lanes!r}")
    return int(lanes)


def _bit_length(x):
    """Number of significant bits of each uint64 in ``x`` (exact)."""
    x = np.asarray(x, dtype=np.uint64)
    hi = (x >> _WORD_BITS).astype(np.float64)      # < 2^32: exact in float64
    lo = (x & _LOW_WORD).astype(np.float64)
    bl_hi = np.frexp(hi)[1].astype(np.int64)         # frexp(0) -> exponent 0
    bl_lo = np.frexp(lo)[1].astype(np.int64)
    return np.where(hi > 0, 32 + bl_hi, bl_lo)


def _check_lane_ids(lane_ids, lanes):
    """Lane identities as uint64 (lanes,): 0..lanes-1 by default."""
    if lane_ids is None:
        return np.arange(lanes, dtype=np.uint64)
    ids = np.asarray(lane_ids)
    if ids.shape != (lanes,) or ids.dtype.kind not in "iu" or (ids.size and ids.min() < 0):
        raise ValueError(f"lane_ids must be {lanes} non-negative integers, got {lane_ids!r}")
    return ids.astype(np.uint64)


def _hash_words(seed, lane, index):
    """Deterministic pseudo-random 32-bit words from (seed, lane, index):
    a splitmix64 finalizer (uint64 arithmetic wraps by design)."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
             + np.asarray(lane, dtype=np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             + np.asarray(index, dtype=np.uint64) * np.uint64(0x94D049BB133111EB)
             + np.uint64(0x2545F4914F6CDD1D))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> _WORD_BITS).astype(np.uint32)


def _parse_header(arr, layout, what, header_words):
    """Check the serialized header of a message of ``layout``: returns the
    words as uint64 with its precision and lane count; ValueError otherwise."""
    arr = np.asarray(arr)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError("not a message: expected a 1-D integer array")
    arr = arr.astype(np.uint64)
    if arr.size < 4 or arr[0] != _MAGIC or arr[1] != layout:
        raise ValueError(f"not {what} message (bad header)")
    precision, lanes = int(arr[2]), int(arr[3])
    _check_precision(precision)
    if lanes < 1 or arr.size < header_words(lanes):
        raise ValueError("not a message: truncated header")
    return arr, precision, lanes


def _check_interval(start, freq, precision):
    """Validate (start, freq) handed to the low-level verbs."""
    start = np.asarray(start)
    freq = np.asarray(freq)
    if start.shape != freq.shape:
        raise ValueError(f"start and freq shapes differ: {start.shape} vs {freq.shape}")
    if start.dtype.kind not in "iu" or freq.dtype.kind not in "iu":
        raise ValueError("start and freq must be integer arrays")
    if start.size:
        if freq.min() < 1:
            raise ValueError("every freq must be >= 1")
        if start.min() < 0 or (start.astype(np.int64) + freq.astype(np.int64)).max() > (1 << precision):
            raise ValueError(f"intervals must lie inside [0, 2^{precision})")
    return start.astype(np.uint64), freq.astype(np.uint64)


class _MessageBase:
    """Arithmetic shared by both layouts (one vector step at a time)."""

    precision: int

    def _push_step(self, x, start, freq):
        """Returns (new heads, mask of lanes that emitted their low word)."""
        # freq * 2^(64-p) - 1 wraps to 2^64 - 1 for freq = 2^p (never emit).
        emit = x > (freq << np.uint64(64 - self.precision)) - np.uint64(1)
        x = np.where(emit, x >> _WORD_BITS, x)
        q = x // freq
        x = (q << np.uint64(self.precision)) + (x - q * freq) + start
        return x, emit

    def _pop_step(self, x, cf, start, freq):
        """Heads after removing the symbol, before reading words."""
        return freq * (x >> np.uint64(self.precision)) + cf - start

    @property
    def _cf_mask(self):
        return np.uint64((1 << self.precision) - 1)

    def bits(self):
        """Total size in bits: 32 per stack word plus the heads' significant bits."""
        raise NotImplementedError

    def to_bytes(self):
        """Serialized message (little-endian uint32 words)."""
        return self.to_array().astype("<u4").tobytes()

    @classmethod
    def from_bytes(cls, data, underflow_seed=None):
        """Inverse of :meth:`to_bytes`; ``ValueError`` if ``data`` is not a message."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError("from_bytes expects bytes")
        if len(data) % 4:
            raise ValueError("not a message: length is not a multiple of 4 bytes")
        return cls.from_array(np.frombuffer(bytes(data), dtype="<u4").astype(np.uint32),
                              underflow_seed=underflow_seed)

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        return np.array_equal(self.to_array(), other.to_array())

    __hash__ = None


class Message(_MessageBase):
    """Independent lanes: ``lanes`` heads, each with its own stack.

    Symbols/intervals are arrays shaped ``(lanes,)`` (one per lane) or
    ``(lanes, n)`` (n per lane, pushed column 0 first).
    """

    def __init__(self, head, stacks, precision=DEFAULT_PRECISION, underflow_seed=None,
                 lane_ids=None):
        """Low-level constructor: ``head`` uint64 (lanes,) in [2^32, 2^64),
        ``stacks`` a list of uint32 arrays (bottom first), one per lane.
        ``lane_ids``: the identity of each lane's chain (default 0..lanes-1);
        a lane's borrowed words depend on ``(underflow_seed, its id)`` only,
        not on its position, so a chain gets the same words in any batch."""
        self.precision = _check_precision(precision)
        head = np.array(head, dtype=np.uint64).reshape(-1)
        self.lanes = _check_lanes(head.size)
        if (head < _HEAD_MIN).any():
            raise ValueError("every head must be >= 2^32")
        if len(stacks) != self.lanes:
            raise ValueError("need one stack per lane")
        self.head = head
        self._top = np.array([len(s) for s in stacks], dtype=np.int64)
        self._buf = np.zeros((self.lanes, max(16, int(self._top.max()) + 1)), dtype=np.uint32)
        for lane, s in enumerate(stacks):
            self._buf[lane, :len(s)] = np.asarray(s, dtype=np.uint32)
        self._set_underflow(underflow_seed, lane_ids)

    def _set_underflow(self, underflow_seed, lane_ids=None):
        if underflow_seed is not None and (not isinstance(underflow_seed, (int, np.integer))
                                           or isinstance(underflow_seed, bool)
                                           or not 0 <= underflow_seed < 2 ** 64):
            raise ValueError(f"underflow_seed must be None or an integer in [0, 2^64), got {underflow_seed!r}")
        self.underflow_seed = None if underflow_seed is None else int(underflow_seed)
        self.borrowed_words = np.zeros(self.lanes, dtype=np.int64)
        self.lane_ids = _check_lane_ids(lane_ids, self.lanes)

    # ----- constructors ---------------------------------------------------------
    @classmethod
    def empty(cls, lanes, precision=DEFAULT_PRECISION, underflow_seed=None):
        """Heads at 2^32, empty stacks.  ``underflow_seed``: opt in to random
        words when a pop runs past the bottom (see module docstring)."""
        lanes = _check_lanes(lanes)
        return cls(np.full(lanes, 1 << 32, dtype=np.uint64),
                   [np.zeros(0, np.uint32)] * lanes, precision, underflow_seed)

    @classmethod
    def random(cls, lanes, words_per_lane, seed, precision=DEFAULT_PRECISION, underflow_seed=None,
               lane_ids=None):
        """Seeded random initial message: every head has its top bit set and
        63 random bits below it, every stack holds ``words_per_lane`` random words.
        With ``lane_ids`` each lane's words come from its own stream seeded by
        ``(seed, lane id)`` (and its borrowed words are keyed by the id too):
        a chain starts from the same message whichever lanes it shares."""
        lanes = _check_lanes(lanes)
        if words_per_lane < 0:
            raise ValueError("words_per_lane must be >= 0")
        if lane_ids is None:
            rng = np.random.default_rng(seed)
            words = rng.integers(0, 2 ** 32, size=(lanes, words_per_lane + 2), dtype=np.uint64)
        else:
            ids = _check_lane_ids(lane_ids, lanes)
            words = np.stack([np.random.default_rng([seed, int(i)]).integers(
                0, 2 ** 32, size=words_per_lane + 2, dtype=np.uint64) for i in ids])
        head = (words[:, 0] << _WORD_BITS) | words[:, 1] | np.uint64(1 << 63)
        return cls(head, list(words[:, 2:].astype(np.uint32)), precision, underflow_seed,
                   lane_ids)

    def copy(self):
        """An independent snapshot (same content, same underflow option)."""
        new = Message.__new__(Message)
        new.precision = self.precision
        new.lanes = self.lanes
        new.head = self.head.copy()
        new._top = self._top.copy()
        new._buf = self._buf[:, :max(16, int(self._top.max()) + 1)].copy()
        new.underflow_seed = self.underflow_seed
        new.borrowed_words = self.borrowed_words.copy()
        new.lane_ids = self.lane_ids.copy()
        return new

    # ----- sizes ----------------------------------------------------------------
    def stack_words(self):
        """Number of 32-bit words on each lane's stack, int64 (lanes,)."""
        return self._top.copy()

    def lane_bits(self):
        """Bits per lane (stack words * 32 + significant bits of the head)."""
        return 32 * self._top + _bit_length(self.head)

    def bits(self):
        return int(self.lane_bits().sum())

    def stack(self, lane):
        """Copy of one lane's stack, bottom first."""
        return self._buf[lane, :self._top[lane]].copy()

    def underflow_words(self, lane, count):
        """The first ``count`` words this message's lane ``lane`` borrows when
        popping past its stack bottom (``underflow_seed`` set), in borrowing
        order, uint32: what a decoder pushes back there at the very end."""
        if self.underflow_seed is None:
            raise ValueError("this message borrows no words (no underflow_seed)")
        return _hash_words(self.underflow_seed, self.lane_ids[lane],
                           np.arange(count, dtype=np.uint64)).astype(np.uint32)

    # ----- serialization --------------------------------------------------------
    def to_array(self):
        """uint32 array: [magic, layout, precision, lanes, words per lane...,
        heads (lo, hi per lane)..., lane 0's stack, lane 1's stack, ...]."""
        header = np.array([_MAGIC, _LAYOUT_INDEPENDENT, self.precision, self.lanes], dtype=np.uint32)
        heads = np.stack([self.head & _LOW_WORD, self.head >> _WORD_BITS], axis=1).astype(np.uint32).ravel()
        cols = np.arange(self._buf.shape[1])
        body = self._buf[cols[None, :] < self._top[:, None]]      # row-major: lane by lane
        return np.concatenate([header, self._top.astype(np.uint32), heads, body])

    @classmethod
    def from_array(cls, arr, underflow_seed=None):
        arr, precision, lanes = _parse_header(arr, _LAYOUT_INDEPENDENT, "an independent-lanes",
                                              lambda lanes: 4 + 3 * lanes)
        counts = arr[4:4 + lanes].astype(np.int64)
        lohi = arr[4 + lanes:4 + 3 * lanes].reshape(lanes, 2)
        head = lohi[:, 0] | (lohi[:, 1] << _WORD_BITS)
        body = arr[4 + 3 * lanes:]
        if int(counts.sum()) != body.size:
            raise ValueError("not a message: stack lengths do not match the data")
        if (head < _HEAD_MIN).any():
            raise ValueError("not a message: a head is below 2^32")
        ends = np.cumsum(counts)
        stacks = np.split(body.astype(np.uint32), ends[:-1])
        return cls(head, stacks, precision, underflow_seed)

    # ----- layout helpers used by the codecs -------------------------------------
    def to_steps(self, a):
        """Codec-shaped array (lanes,) or (lanes, n) -> step-major flat array
        (step j = column j, all lanes); also returns n."""
        a = np.asarray(a)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[0] != self.lanes:
            raise ValueError(f"expected an array shaped (lanes={self.lanes}, n), got {a.shape}")
        return np.ascontiguousarray(a.T).ravel(), a.shape[1]

    def from_steps(self, flat, n, shape):
        return flat.reshape(n, self.lanes).T.reshape(shape)

    def _step_slices(self, n):
        return [slice(j * self.lanes, (j + 1) * self.lanes) for j in range(n)]

    # ----- low-level verbs ----------------------------------------------------
    def push(self, start, freq):
        """Push intervals shaped (lanes,) or (lanes, n), column 0 first."""
        start, n = self.to_steps(start)
        freq, _ = self.to_steps(freq)
        start, freq = _check_interval(start, freq, self.precision)
        self._push_steps(start, freq, n)

    def _ensure_capacity(self, extra):
        need = int(self._top.max()) + extra + 1
        if need > self._buf.shape[1]:
            new = np.zeros((self.lanes, max(need, 2 * self._buf.shape[1])), dtype=np.uint32)
            new[:, :self._buf.shape[1]] = self._buf
            self._buf = new

    def _push_steps(self, start, freq, n):
        self._ensure_capacity(n)
        cap = self._buf.shape[1]
        flat = self._buf.reshape(-1)
        base = np.arange(self.lanes, dtype=np.int64) * cap
        x, top = self.head, self._top
        for sl in self._step_slices(n):
            # Every lane writes its low word at its top; only emitting lanes
            # advance the top (words above the top are free space).
            flat[base + top] = x.astype(np.uint32)
            x, emit = self._push_step(x, start[sl], freq[sl])
            top += emit
        self.head = x

    def peek(self):
        """Cumulative frequency ``head mod 2^p`` of every lane."""
        return self.head & self._cf_mask

    def advance(self, start, freq):
        """Second half of a pop: remove the symbol whose interval is
        (start, freq) from every lane (arrays shaped (lanes,))."""
        start, freq = _check_interval(np.asarray(start).reshape(-1), np.asarray(freq).reshape(-1),
                                      self.precision)
        cf = self.peek()
        if ((cf < start) | (cf >= start + freq)).any():
            raise ValueError("advance: interval does not contain the peeked cumulative frequency")
        self._pop_steps(1, lambda sl, c: (None, start, freq))

    def pop(self, n, lookup):
        """Pop ``n`` symbols per lane.  ``lookup(sl, cf) -> (symbols, start, freq)``
        maps the peeked cumulative frequencies of step ``sl`` (a slice of the
        step-major flat layout) to symbols and their intervals.  Returns the
        step-major flat array of symbols (step n-1 decoded first)."""
        return self._pop_steps(n, lookup)

    def _pop_steps(self, n, lookup):
        saved = (self.head.copy(), self._top.copy(), self.borrowed_words.copy())
        cap = self._buf.shape[1]
        flat = self._buf.reshape(-1)
        base = np.arange(self.lanes, dtype=np.int64) * cap
        x, top = self.head.copy(), self._top
        mask = self._cf_mask
        out = None
        try:
            for j, sl in reversed(list(enumerate(self._step_slices(n)))):
                cf = x & mask
                sym, start, freq = lookup(sl, cf)
                if sym is not None:
                    if out is None:
                        out = np.empty(n * self.lanes, dtype=sym.dtype)
                    out[sl] = sym
                x = self._pop_step(x, cf, start, freq)
                need = x < _HEAD_MIN
                top -= need
                if top.min() < 0:
                    words = self._underflow(top)
                else:
                    words = flat[base + top]
                x = np.where(need, (x << _WORD_BITS) | words, x)
        except Exception:
            self.head, self._top, self.borrowed_words = saved
            raise
        self.head = x
        return out

    def _underflow(self, top):
        """Words for a step where some lanes ran past their stack bottom."""
        under = top < 0
        if self.underflow_seed is None:
            lanes = np.flatnonzero(under)
            raise ValueError(f"pop past the bottom of the stack of lane(s) {lanes[:8].tolist()} "
                             "(create the message with underflow_seed to borrow random bits)")
        cap = self._buf.shape[1]
        words = self._buf.reshape(-1)[np.arange(self.lanes) * cap + np.maximum(top, 0)]
        lanes = np.flatnonzero(under)
        words[lanes] = _hash_words(self.underflow_seed, self.lane_ids[lanes], self.borrowed_words[lanes])
        self.borrowed_words[lanes] += 1
        top[lanes] = 0
        return words


class InterleavedMessage(_MessageBase):
    """``lanes`` heads sharing one stack: a flat array of n symbols is coded
    in ceil(n / lanes) vector steps (see module docstring)."""

    def __init__(self, head, stack, precision=DEFAULT_PRECISION, underflow_seed=None):
        self.precision = _check_precision(precision)
        head = np.array(head, dtype=np.uint64).reshape(-1)
        self.lanes = _check_lanes(head.size)
        if (head < _HEAD_MIN).any():
            raise ValueError("every head must be >= 2^32")
        self.head = head
        stack = np.asarray(stack, dtype=np.uint32).reshape(-1)
        self._top = stack.size
        self._buf = np.zeros(max(64, 2 * stack.size), dtype=np.uint32)
        self._buf[:stack.size] = stack
        if underflow_seed is not None and (not isinstance(underflow_seed, (int, np.integer))
                                           or isinstance(underflow_seed, bool)
                                           or not 0 <= underflow_seed < 2 ** 64):
            raise ValueError(f"underflow_seed must be None or an integer in [0, 2^64), got {underflow_seed!r}")
        self.underflow_seed = None if underflow_seed is None else int(underflow_seed)
        self.borrowed_words = 0

    @classmethod
    def empty(cls, lanes, precision=DEFAULT_PRECISION, underflow_seed=None):
        lanes = _check_lanes(lanes)
        return cls(np.full(lanes, 1 << 32, dtype=np.uint64), np.zeros(0, np.uint32),
                   precision, underflow_seed)

    @classmethod
    def random(cls, lanes, words, seed, precision=DEFAULT_PRECISION, underflow_seed=None):
        """Seeded random heads (top bit set) and ``words`` random stack words."""
        lanes = _check_lanes(lanes)
        if words < 0:
            raise ValueError("words must be >= 0")
        rng = np.random.default_rng(seed)
        w = rng.integers(0, 2 ** 32, size=2 * lanes + words, dtype=np.uint64)
        head = (w[:lanes] << _WORD_BITS) | w[lanes:2 * lanes] | np.uint64(1 << 63)
        return cls(head, w[2 * lanes:].astype(np.uint32), precision, underflow_seed)

    def copy(self):
        new = InterleavedMessage(self.head, self._buf[:self._top], self.precision, self.underflow_seed)
        new.borrowed_words = self.borrowed_words
        return new

    def stack_words(self):
        return int(self._top)

    def bits(self):
        return int(32 * self._top + _bit_length(self.head).sum())

    def head_bits(self):
        """The constant-ish cost of the heads: significant bits per lane."""
        return _bit_length(self.head)

    def to_array(self):
        """uint32 array: [magic, layout, precision, lanes, stack length (lo, hi),
        heads (lo, hi)..., stack...]."""
        header = np.array([_MAGIC, _LAYOUT_INTERLEAVED, self.precision, self.lanes,
                           self._top & 0xFFFFFFFF, self._top >> 32], dtype=np.uint32)
        heads = np.stack([self.head & _LOW_WORD, self.head >> _WORD_BITS], axis=1).astype(np.uint32).ravel()
        return np.concatenate([header, heads, self._buf[:self._top]])

    @classmethod
    def from_array(cls, arr, underflow_seed=None):
        arr, precision, lanes = _parse_header(arr, _LAYOUT_INTERLEAVED, "an interleaved",
                                              lambda lanes: 6 + 2 * lanes)
        length = int(arr[4]) | (int(arr[5]) << 32)
        lohi = arr[6:6 + 2 * lanes].reshape(lanes, 2)
        head = lohi[:, 0] | (lohi[:, 1] << _WORD_BITS)
        if (head < _HEAD_MIN).any():
            raise ValueError("not a message: a head is below 2^32")
        if arr.size != 6 + 2 * lanes + length:
            raise ValueError("not a message: stack length does not match the data")
        return cls(head, arr[6 + 2 * lanes:].astype(np.uint32), precision, underflow_seed)

    # ----- layout helpers used by the codecs -------------------------------------
    def to_steps(self, a):
        """Any-shaped array -> flat (C order) array; also returns n."""
        a = np.asarray(a).reshape(-1)
        return a, a.size

    def from_steps(self, flat, n, shape):
        return flat.reshape(shape)

    def _step_slices(self, n):
        return [slice(s, min(n, s + self.lanes)) for s in range(0, n, self.lanes)]

    # ----- low-level verbs ----------------------------------------------------
    def push(self, start, freq):
        """Push a flat tensor of intervals (any shape, C order)."""
        start, n = self.to_steps(start)
        freq, _ = self.to_steps(freq)
        start, freq = _check_interval(start, freq, self.precision)
        self._push_steps(start, freq, n)

    def _push_steps(self, start, freq, n):
        if self._top + n > self._buf.size:
            new = np.zeros(max(self._top + n, 2 * self._buf.size), dtype=np.uint32)
            new[:self._top] = self._buf[:self._top]
            self._buf = new
        buf, top, head = self._buf, self._top, self.head
        for sl in self._step_slices(n):
            m = sl.stop - sl.start
            x = head[:m]
            x, emit = self._push_step(x, start[sl], freq[sl])
            # Emitting lanes append their low words in ascending lane order.
            words = head[:m][emit].astype(np.uint32)
            buf[top:top + words.size] = words
            top += words.size
            head[:m] = x
        self._top = top

    def peek(self, m=None):
        """Cumulative frequencies of the first ``m`` lanes (all by default)."""
        return self.head[:m] & self._cf_mask

    def advance(self, start, freq):
        """Remove one symbol from each of the first len(start) lanes."""
        start, freq = _check_interval(np.asarray(start).reshape(-1), np.asarray(freq).reshape(-1),
                                      self.precision)
        cf = self.peek(start.size)
        if ((cf < start) | (cf >= start + freq)).any():
            raise ValueError("advance: interval does not contain the peeked cumulative frequency")
        self._pop_steps(start.size, lambda sl, c: (None, start, freq))

    def pop(self, n, lookup):
        """Pop a flat tensor of n symbols (last step first); ``lookup`` as in
        :meth:`Message.pop`.  Returns the flat array of symbols."""
        return self._pop_steps(n, lookup)

    def _pop_steps(self, n, lookup):
        saved = (self.head.copy(), self._top, self.borrowed_words)
        head, buf, top = self.head, self._buf, self._top
        mask = self._cf_mask
        out = None
        try:
            for sl in reversed(self._step_slices(n)):
                m = sl.stop - sl.start
                x = head[:m]
                cf = x & mask
                sym, start, freq = lookup(sl, cf)
                if sym is not None:
                    if out is None:
                        out = np.empty(n, dtype=sym.dtype)
                    out[sl] = sym
                x = self._pop_step(x, cf, start, freq)
                need = x < _HEAD_MIN
                c = int(np.count_nonzero(need))
                if c:
                    if c > top:
                        words = self._underflow(c, top)
                        top = 0
                    else:
                        words = buf[top - c:top]
                        top -= c
                    x[need] = (x[need] << _WORD_BITS) | words
                head[:m] = x
        except Exception:
            self.head, self._top, self.borrowed_words = saved
            raise
        self._top = top
        return out

    def _underflow(self, c, top):
        if self.underflow_seed is None:
            raise ValueError(f"pop past the bottom of the stack (need {c} words, {top} left); "
                             "create the message with underflow_seed to borrow random bits")
        extra = c - top
        # Borrowed words sit below the existing bottom: the lowest lanes get them.
        borrowed = _hash_words(self.underflow_seed, 0, self.borrowed_words + np.arange(extra)[::-1])
        self.borrowed_words += extra
        return np.concatenate([borrowed, self._buf[:top]]).astype(np.uint64)
