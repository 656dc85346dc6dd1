r"""Exact selection of the ``k`` largest of many non-negative scores, without a sort.

A budget keeps the ``k`` units of largest gain (:mod:`proxgen_jax.solvers.budgets`), with ties broken by flat
index (the lower index is kept), so that exactly ``k`` are kept. Only the ``k``-th largest value ``T`` is needed:
keep every score above ``T`` and the first ones equal to it. Non-negative floats are ordered like their bit
patterns read as integers of the same width, so ``T`` is searched over integers with counting passes
``#{i : b_i ≥ t}`` and no sort (XLA's CPU sort of 21M float32 scores takes ~11 s; a counting pass ~40 ms).

Two searches, both exact:

* ``"bisect"``: bisection over the bits, one counting pass per bit (31 in float32, 63 in float64); a fixed loop,
  the default off the CPU (where a pass is memory-bound and a data-dependent loop would copy its predicate to
  the host every iteration).
* ``"search"`` (default on the CPU): the sample-guided interpolation search. The ``k``-th largest of a strided
  sample of 4096 scores (bisection on the sample: no full pass) and two sample ranks ±3σ away give the first
  candidates; then every pass interpolates linearly in the bracket ``[lo, hi)`` of bit patterns
  (``#(≥ lo) ≥ k > #(≥ hi)``) and a bisection step is taken whenever two passes did not shrink the bracket
  four-fold, so the bracket at least halves every three passes and the search ends (the bracket is one pattern
  wide, or ``#(≥ lo) = k``) within 3× the bisection's passes in the worst case; measured passes below.

Ties at ``T`` cost a prefix sum over the scores; the search skips it (``lax.cond``) when no tie straddles the
budget. NaN scores count as larger than every number (they are kept first, so NaN propagates).

References:
  Floyd & Rivest, *Expected time bounds for selection*, CACM 1975 (selection guided by a sample).
  Perl, Itai & Avni, *Interpolation search — a log log N search*, CACM 1978.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: Sample size of the sample-guided search (a strided subsample of the scores).
SAMPLE_SIZE = 4096
#: The search ends by gathering the bracket's entries once it holds at most FEW of them, one per group of ROWS groups
#: (two in one group — probability ≈ FEW²/2·ROWS ≈ 6 % — and the search goes on instead).
FEW = 32
ROWS = 8192
_METHODS = ("auto", "search", "bisect")
_ROW = 64  # count in int8 over 64 rows (exact: ≤ 64 < 127), then in the bits' integer type over the columns


def ordered_bits(scores: jax.Array) -> jax.Array:
    """Non-negative floats as integers of the same width (int32 / int64), ordered like the values (NaN above
    +inf). Narrower floats (bf16, f16) are widened to float32 first."""
    wide = scores.dtype == jnp.float64
    ftype, itype = (jnp.float64, jnp.int64) if wide else (jnp.float32, jnp.int32)
    return jax.lax.bitcast_convert_type(scores.astype(ftype), itype)


def count_at_least(bits: jax.Array, t) -> jax.Array:
    """``#{i : bits_i ≥ t}`` of a flat integer array, as the bits' integer type (:func:`count_at_least_rows`)."""
    return count_at_least_rows(bits[None], jnp.asarray(t, bits.dtype)[None])[0]


def count_at_least_rows(bits: jax.Array, t: jax.Array) -> jax.Array:
    """``#{i : bits[r, i] ≥ t[r]}`` for every row ``r`` of a 2-D integer array, as the bits' integer type, in
    one fused pass for all rows (as fast as a pass per row, and one fusion to compile instead of one per row)."""
    rows, n = bits.shape
    main = n - n % _ROW
    count = jnp.zeros((rows,), bits.dtype)
    if main:
        # int8 partial counts over 64 slices of each row (exact: ≤ 64), summed down the major axis so that XLA:CPU
        # vectorises the reduction across columns (measured: 1.4 ms per pass over 4.7M entries, against 16 ms
        # reducing each run of 64 along the minor axis and 8 ms for one int32 sum).
        hits = (bits[:, :main] >= t[:, None]).astype(jnp.int8).reshape(rows, _ROW, -1)
        count += jnp.sum(jnp.sum(hits, axis=1, dtype=jnp.int8).astype(bits.dtype), axis=1, dtype=bits.dtype)
    if n > main:
        count += jnp.sum(bits[:, main:] >= t[:, None], axis=1, dtype=bits.dtype)
    return count


def kth_largest_bisect(bits: jax.Array, k) -> jax.Array:
    """The ``k``-th largest of the non-negative integers ``bits`` (``1 ≤ k ≤ n``) by bisection over the bits."""
    nbits = 8 * bits.dtype.itemsize - 1

    def body(i, t):
        cand = t | (jnp.ones([], bits.dtype) << (nbits - 1 - i).astype(bits.dtype))
        return jnp.where(count_at_least(bits, cand) >= k, cand, t)

    return jax.lax.fori_loop(0, nbits, body, jnp.zeros([], bits.dtype))


def _sample_guesses(bits, k):
    """Candidates for the ``k``-th largest from a strided sample: its own ``k``-th and two ±3σ ranks."""
    n = bits.shape[0]
    stride = max(1, n // SAMPLE_SIZE)
    sample = bits[::stride][:SAMPLE_SIZE]
    m = sample.shape[0]
    ks = jnp.clip((k.astype(jnp.float32) * m / n).astype(bits.dtype), 1, m)
    spread = (3 * jnp.sqrt(ks.astype(jnp.float32) * (1 - ks.astype(jnp.float32) / m)) + 1).astype(bits.dtype)
    ranks = jnp.stack([jnp.clip(ks - spread, 1, m), jnp.clip(ks + spread, 1, m)])
    return jax.vmap(lambda r: kth_largest_bisect(sample, r))(ranks)  # (larger, smaller) values


def kth_largest_search(bits: jax.Array, k) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(T, #(≥ T), passes)``: the ``k``-th largest of the non-negative integers ``bits`` (``1 ≤ k ≤ n``) by the
    sample-guided, bisection-safeguarded interpolation search (module docstring); a ``while`` loop."""
    return tuple(v[0] for v in kth_largest_search_rows(bits[None], jnp.asarray(k)[None]))


def kth_largest_search_rows(bits: jax.Array, k) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`kth_largest_search` for every row of a 2-D ``bits`` (``k`` per row), all rows in one loop: each
    pass counts every row still open (one vectorised pass per row) and the loop ends with the last row."""
    it, big = bits.dtype, jnp.iinfo(bits.dtype).max
    ft = jnp.float64 if it == jnp.int64 else jnp.float32
    rows, n = bits.shape
    k = jnp.asarray(k).astype(it)
    most = 4 * (8 * it.itemsize) + 8  # from the 5th pass on the bracket halves at least every 4: ends before
    guesses = jax.vmap(_sample_guesses)(bits, k)
    large, small = guesses[:, 0], guesses[:, 1]

    def open_(s):  # per row
        i, lo, c_lo, hi = s[:4]
        return (i < most) & (c_lo != k) & (hi - lo > 1)

    def many(s):  # still open, with more than FEW entries in the bracket
        return open_(s) & (s[2] - s[4] > FEW)

    def body(s, active):
        # #(≥ lo) = c_lo ≥ k > c_hi = #(≥ hi); f_lo > 0 > f_hi: #(≥ ·) − k + ½ at the ends, the end kept twice in a
        # row halved (Illinois); side: which end moved last (1: lo, −1: hi); w1…w3: widths 1…3 passes ago. Rows
        # not ``active`` keep their state.
        i, lo, c_lo, hi, c_hi, f_lo, f_hi, side, w1, w2, w3 = s
        w0 = hi - lo
        cand = lo + (f_lo / (f_lo - f_hi) * w0.astype(ft)).astype(it)  # regula falsi in the bracket
        cand = jnp.where((i >= 4) & (w0 > w3 // 2), lo + w0 // 2, cand)  # not halved in 3 passes: bisect
        cand = jnp.where((i == 1) & (large > lo) & (large < hi), large, cand)
        cand = jnp.clip(jnp.where(i == 0, small, cand), lo + 1, hi - 1)
        c = count_at_least_rows(bits, cand)
        up = c >= k
        f = (c - k).astype(ft) + 0.5
        f_lo = jnp.where(up, f, jnp.where(side == -1, f_lo / 2, f_lo))
        f_hi = jnp.where(up, jnp.where(side == 1, f_hi / 2, f_hi), f)
        new = (i + 1, jnp.where(up, cand, lo), jnp.where(up, c, c_lo), jnp.where(up, hi, cand),
               jnp.where(up, c_hi, c), f_lo, f_hi, jnp.where(up, 1, -1).astype(jnp.int32), w0, w1, w2)
        return tuple(jnp.where(active, a, b) for a, b in zip(new, s))

    def run(s, go):  # passes while any row satisfies go(s)
        return jax.lax.while_loop(lambda s: jnp.any(go(s)), lambda s: body(s, go(s)), s)

    zero, top = jnp.zeros((rows,), it), jnp.full((rows,), big, it)
    n_it = jnp.full((rows,), n, it)
    count0 = jnp.zeros((rows,), jnp.int32)
    init = (count0, zero, n_it, top, zero, (n_it - k).astype(ft) + 0.5, 0.5 - k.astype(ft), count0, top, top, top)
    state = run(init, many)

    def finish(s):  # the few entries of each open bracket, one per group (or the search goes on if two share one)
        i, lo, c_lo, hi, c_hi = s[:5]
        gathered = [_bracket_entries(bits[r], lo[r], hi[r], (c_lo - c_hi)[r]) for r in range(rows)]
        few = jnp.stack([g[0] for g in gathered])
        alone = jnp.stack([g[1] for g in gathered])
        t = jax.vmap(kth_largest_bisect)(few, k - c_hi)  # small arrays: no full pass
        found = (t, c_hi + jnp.sum(few >= t[:, None], axis=1, dtype=it), i + 1)
        rest = searched(run(s, lambda s: open_(s) & ~alone))
        done = searched(s)
        return tuple(jnp.where(open_(s), jnp.where(alone, a, b), d) for a, b, d in zip(found, rest, done))

    def searched(s):
        return s[1], s[2], s[0]

    return jax.lax.cond(jnp.any(open_(state)), finish, searched, state)


def _bracket_entries(bits, lo, hi, inside) -> tuple[jax.Array, jax.Array]:
    """The entries with ``lo ≤ b < hi`` gathered by one pass: the largest of each of ``ROWS`` groups of entries
    (−1 where a group has none), then the remainder as it is; and whether no group held two of them, i.e. whether
    the gathered entries number ``inside = #(lo ≤ b < hi)`` (known to the search: no counting pass)."""
    n = bits.shape[0]
    vals = jnp.where((bits >= lo) & (bits < hi), bits, -jnp.ones_like(bits))
    width = n // ROWS
    if width < 2:
        return vals, jnp.ones([], bool)
    main = width * ROWS
    # Groups of entries ROWS apart (entry i in group i mod ROWS): reduced down the major axis, which XLA:CPU
    # vectorises (a reduction along rows of consecutive entries is ~10× slower per pass).
    few = jnp.concatenate([jnp.max(vals[:main].reshape(width, ROWS), axis=0), vals[main:]])
    return few, jnp.sum(few >= 0, dtype=bits.dtype) == inside


def _last_tie(bits, t, k) -> jax.Array:
    """The flat index of the last entry equal to ``t`` that is kept (``t`` the ``k``-th largest): the
    ``(k − #(> t))``-th such entry. A prefix sum over the entries; only a scalar leaves it."""
    ties = bits == t
    need = k - jnp.sum(bits > t, dtype=bits.dtype)
    return jnp.argmax(jnp.cumsum(ties, dtype=bits.dtype) >= need).astype(bits.dtype)


def score_bits(scores: jax.Array) -> jax.Array:
    """The flat, ordered integer keys :func:`top_k_mask` selects on: ``|scores|`` (``−0`` counts as ``0``; NaN
    stays NaN, above every number) as :func:`ordered_bits`. Computing them once and selecting with
    :func:`top_k_of_bits` lets a caller write the keys to memory once, where the selection's passes read them."""
    return ordered_bits(jnp.abs(scores.reshape(-1)))


def top_k_mask(scores: jax.Array, k, *, method: str = "auto") -> jax.Array:
    """A bool mask of exactly ``clip(k, 0, n)`` entries of the non-negative ``scores``: the largest, ties to the
    lower flat index. ``k`` may be traced.

    The search yields two scalars, the ``k``-th largest ``T`` and the index of the last tie kept, and the mask is
    one elementwise pass: ``b > T  or  (b = T  and  index ≤ last)``.

    Args:
      scores: non-negative floats (any shape; the flat index breaks ties; ``−0`` counts as ``0``).
      k: how many to keep (an int or a traced integer).
      method: ``"auto"`` (``"search"`` on the CPU, ``"bisect"`` elsewhere), ``"search"`` or ``"bisect"``
        (module docstring).
    """
    return top_k_of_bits(score_bits(scores), k, method=method).reshape(scores.shape)


def top_k_of_bits(bits: jax.Array, k, *, method: str = "auto") -> jax.Array:
    """:func:`top_k_mask` on the flat keys :func:`score_bits` made (a flat bool mask)."""
    return top_k_rows(bits[None], jnp.asarray(k)[None], method=method)[0]


def top_k_rows(bits: jax.Array, k, *, method: str = "auto") -> jax.Array:
    """:func:`top_k_of_bits` for every row of a 2-D array of keys at once, ``k[r]`` of row ``r`` (a bool mask).

    One batched search for all rows — one loop, one compilation — instead of one per row: the rows' counting
    passes run together and the loop ends when the last row has its ``T``. Ties are resolved (a prefix sum) only
    when some row has a tie straddling its budget.
    """
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}.")
    rows, n = bits.shape
    if n == 0:
        return jnp.zeros(bits.shape, bool)
    k = jnp.broadcast_to(jnp.asarray(k).astype(bits.dtype), (rows,))
    kk = jnp.clip(k, 1, n)
    every = jnp.full((rows,), n - 1, bits.dtype)

    def last_ties(t, tied):
        return jax.lax.cond(jnp.any(tied), lambda: jnp.where(tied, jax.vmap(_last_tie)(bits, t, kk), every),
                            lambda: every)

    def by_bisection():
        t = jax.vmap(kth_largest_bisect)(bits, kk)
        return t, jax.vmap(_last_tie)(bits, t, kk)

    def by_search():
        t, c_t, _ = kth_largest_search_rows(bits, kk)
        return t, last_ties(t, c_t != kk)

    if method == "auto":
        t, last = jax.lax.platform_dependent(cpu=by_search, default=by_bisection)
    else:
        t, last = by_search() if method == "search" else by_bisection()
    t = jnp.where(k >= n, -jnp.ones_like(t), jnp.where(k <= 0, jnp.full_like(t, jnp.iinfo(t.dtype).max), t))
    last = jnp.where(k <= 0, -jnp.ones_like(last), last)
    t, last = t[:, None], last[:, None]
    return (bits > t) | ((bits == t) & (jnp.arange(n, dtype=bits.dtype)[None] <= last))
