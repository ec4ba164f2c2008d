"""An exact scan of multi-bit binary codes through 4-bit tables held in SIMD registers (FAISS's fast-scan idea,
bounded so that it returns exactly what :mod:`.lut` returns).

Each plane's byte ``j`` holds two 4-dimension nibbles, so ``v . bits = sum_t L_t[nibble_t]`` over ``dim/4`` tables of
16 entries. The tables are quantized to uint8 with one scale per query (``L_t[c] ~= min_t + scale * Q_t[c]``,
rounded, so each entry is off by at most ``scale/2``), and a vector byte shuffle (``pshufb``) looks up 32 documents'
entries at once. Codes are laid out for it (:func:`layout`): blocks of 32 documents, each byte column of a block
stored contiguously.

The estimate ``hat`` of a document's score is off by at most ``err = (dim/4) * scale * sum_b |alpha_b|`` (plus a
float32 margin), so a document with ``hat + err`` below the current k-th best exact score cannot enter the top k, and
is skipped; every other document is scored exactly from float byte tables (as ``lut`` does) and pushed into the heap.
The bounds of a window of up to 65,536 documents are kept, and what they cannot rule out is scored best bound first
(the heap's first k entries too), so the k-th best exact score settles at once: about k + a few more documents are
scored per window, against 5-9x as many in document order.
The result is the exact top k, with ties by position; the estimate only decides how little exact work is done.
(Exact scores add a document's entries in four interleaved sums, so they match ``lut``'s to float32 rounding.)

The shuffle loop is LLVM IR compiled once per process by llvmlite (which numba brings), for AVX2: numba cannot emit
the shuffle. The numba kernel around it calls it by address, a tile of 64 blocks and up to 4 queries at a time (one
load of the codes serves them all), bounds the tile's documents and keeps the heaps; each thread scans its own range
of tiles.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import threading
from functools import lru_cache

import numpy as np

from rankstack.errors import BadInput, MissingExtra
from rankstack.kernels import topk_heap
from rankstack.kernels.topk_heap import SERIAL_BELOW, byte_luts

logger = logging.getLogger(__name__)

__all__ = ["available", "layout", "ShuffleLayout", "quantized_tables", "topk", "BLOCK"]

BLOCK = 32  # documents per block: one AVX2 register of nibbles
_TILE_BLOCKS = 64  # blocks per tile: a 2-bit 384-d tile (2048 documents, 192 kB of codes) stays in L2 across queries
_TILE = _TILE_BLOCKS * BLOCK
_WINDOW_FLOATS = 1 << 18  # upper bounds held per thread for a selection window (1 MB, about L2)
MAX_TABLES = 256  # uint8 entries summed in uint16 lanes: 256 tables (dim 1024) x 255 < 2^16 cannot overflow


def _x86_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        import llvmlite.binding as llvm

        return bool(llvm.get_host_cpu_features().get("avx2", False))
    except (ImportError, RuntimeError):  # no llvmlite, or a host whose features LLVM cannot read
        return False


@lru_cache(maxsize=1)
def available() -> bool:
    """numba and llvmlite installed, an x86-64 CPU with AVX2, and the shuffle loops compiled for it (once per
    process; a failure is logged and leaves the other scans)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    if not _x86_avx2():
        return False
    try:
        _compiled()
    except Exception:  # noqa: BLE001 (any LLVM failure: the lut and gemm scans still serve)
        logger.warning("could not compile the shuffle scan's loops; multi-bit binary codes use the lut/gemm scans",
                       exc_info=True)
        return False
    return True


def fits(dim: int) -> bool:
    """Whether vectors of ``dim`` dimensions fit the scan's uint16 sums (:data:`MAX_TABLES` tables of 4)."""
    return dim // 4 <= MAX_TABLES


def require() -> None:
    if not available():
        try:
            import numba  # noqa: F401
        except ImportError as e:
            raise MissingExtra("the shuffle scan needs numba: `pip install 'rankstack[fastscan]'` "
                               "(or scan=lut / numpy)") from e
        if not _x86_avx2():
            raise BadInput(f"the shuffle scan needs an x86-64 CPU with AVX2 (this is {platform.machine()}); "
                           "use scan=lut, gemm or auto")
        raise BadInput("the shuffle scan's loops did not compile here (see the logged error); use scan=lut, gemm "
                       "or auto")


# ---- the shuffle loop, in LLVM IR ----------------------------------------------------------------------------

GROUPS = (4, 2, 1)  # queries per pass over a tile's codes: each column's load and nibble split serve them all


def _ir() -> str:
    """``fs_scan<G>(codes, tables, out, nblocks, nj, tstride, ostride)`` for G in :data:`GROUPS` (all i64, pointers
    as integers): for each of ``nblocks`` blocks of ``nj`` byte columns of 32 documents, and each query ``g < G``,
    ``out[g * ostride + 32 * block + d] = sum_j T_g[j, hi][c >> 4] + T_g[j, lo][c & 15]`` in uint16, ``c`` the block's
    byte ``j`` of document ``d``, ``T_g`` the tables at ``tables + g * tstride``: per column 32 bytes of the
    high-nibble table (16 entries, repeated for both 128-bit lanes, since a shuffle reads its own lane's table) then
    32 of the low one. Loading a column once for G queries doubles the throughput at 4 queries (measured 1.4 against
    3.1 ns per column and query with the codes in cache).

    The looked-up bytes are summed without widening them (FAISS's trick): read as 16 uint16 lanes, a shuffle's result
    adds ``even + 256 * odd`` document bytes to one accumulator, and shifted right by 8 adds the odd bytes alone to
    another; at the end of a block ``even = acc_e - (acc_o << 8)`` (mod 2^16, exact since each sum stays below 2^16:
    :data:`MAX_TABLES`) and the two are interleaved back into document order. Against zero-extending every byte
    this took 8-18% off the loop with the codes in cache (1.19 against 1.30 ns per column at one query, 0.81 against
    0.95 at four; AMD EPYC, AVX-512). An LLVM IR template (numba cannot emit the shuffle): long because the IR is
    spelled out instruction by instruction."""
    v8, w16, v16 = "<32 x i8>", "<16 x i16>", "<32 x i16>"
    fifteen = "<" + ", ".join(["i8 15"] * 32) + ">"
    four = "<" + ", ".join(["i8 4"] * 32) + ">"
    eight = "<" + ", ".join(["i16 8"] * 16) + ">"
    weave = "<" + ", ".join(f"i32 {i // 2 + 16 * (i % 2)}" for i in range(32)) + ">"
    out = [f"declare {v8} @llvm.x86.avx2.pshuf.b({v8}, {v8})"]
    for G in GROUPS:
        phis = "\n".join(f"""  %ae{g} = phi {w16} [zeroinitializer, %bbody], [%ae{g}.next, %jbody]
  %ao{g} = phi {w16} [zeroinitializer, %bbody], [%ao{g}.next, %jbody]""" for g in range(G))
        body = "\n".join(f"""  %tqo{g} = mul i64 %tstride, {g}
  %tqa{g} = add i64 %to, %tqo{g}
  %thp{g} = getelementptr i8, i8* %tab, i64 %tqa{g}
  %thv{g} = bitcast i8* %thp{g} to {v8}*
  %th{g} = load {v8}, {v8}* %thv{g}, align 1
  %tlp{g} = getelementptr i8, i8* %thp{g}, i64 32
  %tlv{g} = bitcast i8* %tlp{g} to {v8}*
  %tl{g} = load {v8}, {v8}* %tlv{g}, align 1
  %rh{g} = call {v8} @llvm.x86.avx2.pshuf.b({v8} %th{g}, {v8} %hi)
  %rl{g} = call {v8} @llvm.x86.avx2.pshuf.b({v8} %tl{g}, {v8} %lo)
  %wh{g} = bitcast {v8} %rh{g} to {w16}
  %wl{g} = bitcast {v8} %rl{g} to {w16}
  %e1{g} = add {w16} %ae{g}, %wh{g}
  %ae{g}.next = add {w16} %e1{g}, %wl{g}
  %sh{g} = lshr {w16} %wh{g}, {eight}
  %sl{g} = lshr {w16} %wl{g}, {eight}
  %o1{g} = add {w16} %ao{g}, %sh{g}
  %ao{g}.next = add {w16} %o1{g}, %sl{g}""" for g in range(G))
        stores = "\n".join(f"""  %oc{g} = shl {w16} %ao{g}, {eight}
  %ev{g} = sub {w16} %ae{g}, %oc{g}
  %acc{g} = shufflevector {w16} %ev{g}, {w16} %ao{g}, <32 x i32> {weave}
  %oqo{g} = mul i64 %ostride, {g}
  %oq{g} = add i64 %oo, %oqo{g}
  %op{g} = getelementptr i16, i16* %out, i64 %oq{g}
  %opv{g} = bitcast i16* %op{g} to {v16}*
  store {v16} %acc{g}, {v16}* %opv{g}, align 1""" for g in range(G))
        out.append(f"""
define void @fs_scan{G}(i64 %codes_i, i64 %tab_i, i64 %out_i, i64 %nblocks, i64 %nj, i64 %tstride,
                       i64 %ostride) {{
entry:
  %codes = inttoptr i64 %codes_i to i8*
  %tab = inttoptr i64 %tab_i to i8*
  %out = inttoptr i64 %out_i to i16*
  %bstride = mul i64 %nj, 32
  br label %bloop
bloop:
  %blk = phi i64 [0, %entry], [%blk.next, %bend]
  %more = icmp slt i64 %blk, %nblocks
  br i1 %more, label %bbody, label %exit
bbody:
  %cb = mul i64 %blk, %bstride
  br label %jloop
jloop:
  %j = phi i64 [0, %bbody], [%j.next, %jbody]
{phis}
  %jmore = icmp slt i64 %j, %nj
  br i1 %jmore, label %jbody, label %bend
jbody:
  %co = mul i64 %j, 32
  %ci = add i64 %cb, %co
  %cp = getelementptr i8, i8* %codes, i64 %ci
  %cpv = bitcast i8* %cp to {v8}*
  %c = load {v8}, {v8}* %cpv, align 1
  %lo = and {v8} %c, {fifteen}
  %hi = lshr {v8} %c, {four}
  %to = mul i64 %j, 64
{body}
  %j.next = add i64 %j, 1
  br label %jloop
bend:
  %oo = mul i64 %blk, 32
{stores}
  %blk.next = add i64 %blk, 1
  br label %bloop
exit:
  ret void
}}""")
    return "\n".join(out)


@lru_cache(maxsize=1)
def _compiled():
    """``({G: address}, engine)`` of the compiled shuffle loops; the engine must stay alive while they are used."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    mod = llvm.parse_assembly(_ir())
    mod.verify()
    tm = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3)
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
    pb.getModulePassManager().run(mod, pb)
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    logger.debug("compiled the shuffle loops for %s", llvm.get_host_cpu_name())
    return {g: engine.get_function_address(f"fs_scan{g}") for g in GROUPS}, engine


def scan_blocks(fs: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """The uint16 table sums of every block of ``fs [nblocks, nj, 32]`` against the tables of G queries, ``tables
    [G, nj, 64]`` (G in :data:`GROUPS`) or one query's ``[nj, 64]``: ``[G, nblocks * 32]`` (or ``[nblocks * 32]``),
    for tests and for a look at the loop on its own."""
    require()
    addrs, _ = _compiled()
    fs = np.ascontiguousarray(fs, np.uint8)
    tables = np.ascontiguousarray(tables, np.uint8)
    one = tables.ndim == 2
    tables = tables[None] if one else tables
    if fs.ndim != 3 or fs.shape[2] != BLOCK or tables.shape[1:] != (fs.shape[1], 64) or tables.shape[0] not in GROUPS:
        raise BadInput(f"shuffle scan: codes {fs.shape} and tables {tables.shape} do not match")
    g, nblocks, nj = tables.shape[0], fs.shape[0], fs.shape[1]
    out = np.zeros((g, nblocks * BLOCK), np.uint16)
    fn = ctypes.CFUNCTYPE(None, *[ctypes.c_int64] * 7)(addrs[g])
    fn(fs.ctypes.data, tables.ctypes.data, out.ctypes.data, nblocks, nj, nj * 64, nblocks * BLOCK)
    return out[0] if one else out


# ---- codes and tables ------------------------------------------------------------------------------------------

class ShuffleLayout:
    """Codes laid out for the shuffle scan, and what its exact pass reads, kept in step with an index's growing
    codes by :meth:`sync` in O(new rows) amortised (buffers double when full).

    ``fs [B, nblocks, nj, 32]``: each plane's byte columns per block of 32 documents (documents past ``n`` are zero
    codes); ``ab [ntiles, B + 1, 2048]``: per tile of the scan, the scales of each plane as float32 and their sum per
    document (scales are mean magnitudes, never negative), one contiguous piece per tile (``at [B, n]`` gives the
    scales in document order); ``codes [n, B, nj]``: the row-major planes themselves (the index's own array, not a
    copy)."""

    def __init__(self, nb: int, nj: int):
        if not fits(8 * nj):
            raise BadInput(f"the shuffle scan handles up to {4 * MAX_TABLES} dimensions (uint16 sums), got {8 * nj}; "
                           "use scan=lut or gemm")
        self._fs = np.zeros((nb, 0, nj, BLOCK), np.uint8)
        self._ab = np.zeros((0, nb + 1, _TILE), np.float32)
        self.codes = np.zeros((0, nb, nj), np.uint8)
        self._lock = threading.Lock()  # a search takes its arrays while another thread's search syncs appended rows

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    @property
    def fs(self) -> np.ndarray:
        return self._fs[:, :-(-self.n // BLOCK)]

    @property
    def at(self) -> np.ndarray:
        nb = self._fs.shape[0]
        return self._ab[:, :nb].transpose(1, 0, 2).reshape(nb, -1)[:, :self.n]

    @property
    def nbytes(self) -> int:
        """Bytes this layout adds beside the index's own codes (its buffers, spare capacity included)."""
        return self._fs.nbytes + self._ab.nbytes

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(fs, codes, ab)`` of the same rows, taken together (a concurrent :meth:`sync` may append more). ``ab`` is
        the whole buffer, ``[>= ntiles, B + 1, 2048]``: C-contiguous, so numba vectorises its loops over a tile."""
        with self._lock:
            return self.fs, self.codes, self._ab

    def sync(self, codes: np.ndarray, alphas: np.ndarray) -> ShuffleLayout:
        """Follow ``codes [n, B, nj]`` / ``alphas [n, B]`` whose first rows are the ones laid out so far (an index
        that appended rows; one that rewrote rows makes a new layout): lays out the rows past the last whole block.
        Thread-safe against other syncs and :meth:`arrays`; rows already laid out are never moved, only copied on
        growth, so a search holding the previous arrays reads what it took."""
        with self._lock:
            return self._sync(codes, alphas)

    def _sync(self, codes: np.ndarray, alphas: np.ndarray) -> ShuffleLayout:
        codes = np.ascontiguousarray(codes, np.uint8)
        n, nb, nj = codes.shape
        if (nb, nj) != self._fs.shape[::2] or n < self.n or np.shape(alphas) != (n, nb):
            raise BadInput(f"codes {codes.shape} / scales {np.shape(alphas)} do not continue this shuffle layout "
                           f"({self.n} x {self._fs.shape[0]} x {self._fs.shape[2]}); make a new one")
        if n == self.n:  # nothing appended (the usual search): only the view of the index's codes is refreshed
            self.codes = codes
            return self
        start = self.n // BLOCK * BLOCK  # the last partial block is laid out again
        a = np.asarray(alphas[start:], np.float32)
        if (a < 0).any():  # the error bound is err * sum_b alpha_b
            raise BadInput("the shuffle scan needs non-negative plane scales (mean magnitudes), as the codec writes")
        blocks = -(-n // BLOCK)
        if blocks > self._fs.shape[1]:
            cap = max(blocks, 2 * self._fs.shape[1], 32)
            fs = np.zeros((nb, cap, nj, BLOCK), np.uint8)
            fs[:, :self._fs.shape[1]] = self._fs
            ab = np.zeros((-(-cap // _TILE_BLOCKS), nb + 1, _TILE), np.float32)
            ab[:self._ab.shape[0]] = self._ab
            self._fs, self._ab = fs, ab
        tail = np.zeros(((blocks - start // BLOCK) * BLOCK, nb, nj), np.uint8)
        tail[:n - start] = codes[start:]
        self._fs[:, start // BLOCK:blocks] = tail.reshape(-1, BLOCK, nb, nj).transpose(2, 0, 3, 1)
        sa = np.concatenate([a, a.sum(axis=1, keepdims=True)], axis=1).T  # [B + 1, n - start]
        for t in range(start // _TILE, -(-n // _TILE)):
            lo, hi = max(start, t * _TILE), min(n, (t + 1) * _TILE)
            self._ab[t, :, lo - t * _TILE:hi - t * _TILE] = sa[:, lo - start:hi - start]
        self.codes = codes
        return self


def layout(codes: np.ndarray, alphas: np.ndarray) -> ShuffleLayout:
    """``codes [n, B, nj]`` uint8 planes, ``alphas [n, B]`` scales -> :class:`ShuffleLayout` (one transpose)."""
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise BadInput(f"codes must be [n, planes, dim/8] uint8, got shape {codes.shape}")
    return ShuffleLayout(codes.shape[1], codes.shape[2]).sync(codes, alphas)


def quantized_tables(qe: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``qe [nq, dim]`` -> ``(tables [nq, nj, 64] uint8, scale [nq], offset [nq])``, with ``qe . bits ~= offset +
    scale * sum of the looked-up entries``, each entry off by at most ``scale / 2``. Per byte column ``j``: the
    high-nibble table (dimensions ``8j..8j+3``, numpy's ``packbits`` order) twice, then the low-nibble one twice."""
    qe = np.ascontiguousarray(qe, np.float32)
    if qe.ndim != 2 or qe.shape[1] % 8:
        raise BadInput(f"queries must be [nq, dim] with dim a multiple of 8, got shape {qe.shape}")
    try:
        prepare = _prepare()
    except ImportError as e:
        raise MissingExtra("the shuffle scan needs numba: `pip install 'rankstack[fastscan]'`") from e
    tables, scale, offset, _, _ = prepare(qe)
    return tables, scale, offset


@lru_cache(maxsize=1)
def _prepare():
    """A compiled :func:`quantized_tables` that also returns each query's error bound and component sum: one call in
    place of a dozen numpy operations, which cost a single query about 60 us (a quarter of its scan at 20k
    documents)."""
    import numba

    f32 = np.float32

    @numba.njit(cache=True, nogil=True)
    def prepare(qe):
        """``-> (tables, scale, offset, err, qsum)``; ``err``: the bound on ``|hat - exact|`` per unit of scale sum,
        ``sum over 2 nj tables of 2 * scale / 2``, widened by 1% and by a float32 rounding margin of the table sums
        (each of the ``2 nj`` float entries is at most ``|qe|_1`` in size)."""
        nq, dim = qe.shape
        nj = dim // 8
        tables = np.empty((nq, nj, 64), np.uint8)
        scale = np.empty(nq, f32)
        offset = np.empty(nq, f32)
        err = np.empty(nq, f32)
        qsum = np.empty(nq, f32)
        t = np.empty((nj, 2, 16), f32)
        mins = np.empty((nj, 2), f32)
        for q in range(nq):
            rng = f32(0.0)
            off = f32(0.0)
            l1 = f32(0.0)
            sm = f32(0.0)
            for j in range(nj):
                for h in range(2):
                    v = qe[q, 8 * j + 4 * h:8 * j + 4 * h + 4]
                    for x in range(4):
                        l1 += abs(v[x])
                        sm += v[x]
                    lo = f32(np.inf)
                    hi = f32(-np.inf)
                    for c in range(16):
                        e = f32(0.0)
                        for x in range(4):
                            if (c >> (3 - x)) & 1:
                                e += v[x]
                        t[j, h, c] = e
                        lo = min(lo, e)
                        hi = max(hi, e)
                    mins[j, h] = lo
                    off += lo
                    rng = max(rng, hi - lo)
            sc = rng / f32(255.0)
            if not sc > 0:
                sc = f32(1.0)
            for j in range(nj):
                for h in range(2):
                    for c in range(16):
                        r = np.rint((t[j, h, c] - mins[j, h]) / sc)
                        u = np.uint8(min(max(r, 0.0), 255.0))
                        tables[q, j, 32 * h + c] = u
                        tables[q, j, 32 * h + 16 + c] = u
            scale[q], offset[q], qsum[q] = sc, off, sm
            err[q] = f32(dim // 4) * sc * f32(1.01) + f32(1e-5) * f32(dim // 4) * l1
        return tables, scale, offset, err, qsum

    return prepare


# ---- the scan ---------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _addresses() -> np.ndarray:
    """The compiled loops' addresses for 4, 2 and 1 queries (:data:`GROUPS`), as the kernel takes them."""
    addrs, _ = _compiled()
    return np.array([addrs[g] for g in GROUPS], np.int64)


@lru_cache(maxsize=1)
def _call():
    """A numba intrinsic that calls the compiled loop at an address given as an argument (so the kernel that uses it
    caches: the address is not baked in)."""
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def call(typingctx, addr, codes, tab, out, nblocks, nj, tstride, ostride):
        sig = types.void(*[types.int64] * 8)

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            fp = builder.inttoptr(args[0], ir.FunctionType(ir.VoidType(), [i64] * 7).as_pointer())
            builder.call(fp, args[1:])
            return context.get_dummy_value()

        return sig, codegen

    return call


@lru_cache(maxsize=2)
def _kernel(parallel: bool):
    """The compiled scan (numba): per range of tiles, bound every document from the SIMD table sums, then score
    exactly, best bound first, what the bound cannot rule out. It is longer than the house's 80 lines because it is
    one numba parallel region with its helpers inlined into it (the form the timings in benchmarks/RESULTS.md were
    measured in); a split has not been measured."""
    import numba

    push = topk_heap.heap_push()
    call = _call()
    f32 = np.float32
    i64 = np.int64

    @numba.njit(fastmath=True, cache=True, nogil=True, inline="always")
    def _upper(q, buf, ub, cnt, tile, scale, offset, err, qsum, base, ab):
        """Upper bounds ``ub[:cnt]`` of the scores of the documents of a tile from their table sums ``buf [B,
        _TILE]``: ``hat + err``, with ``hat = bq + sum_b alpha_b (2 (offset + scale * sum_b) - qsum)`` and ``err *
        sum_b alpha_b`` on top, in loops the compiler vectorises (over rows of C-contiguous arrays: indexing with
        offsets, or strided views, keep numba from vectorising)."""
        c0, c1 = f32(2.0) * offset[q] - qsum[q] + err[q], f32(2.0) * scale[q]
        bq = base[q]
        nb = ab.shape[1] - 1
        blk = ab[tile]
        s1 = blk[nb]
        for r in range(cnt):
            ub[r] = bq + c0 * s1[r]
        for b in range(nb):
            a, bb = blk[b], buf[b]
            for r in range(cnt):
                ub[r] += c1 * a[r] * f32(bb[r])

    @numba.njit(fastmath=True, cache=True, nogil=True, inline="always")
    def _exact(q, i, flut, qsum, base, codes, ab):
        nb, nj = codes.shape[1], codes.shape[2]
        tile, r = i // _TILE, i % _TILE
        nj4 = nj // 4 * 4
        s = base[q]
        for b in range(nb):
            # four independent sums: one chain of dependent additions would wait on each one's latency
            a0 = a1 = a2 = a3 = f32(0.0)
            for j in range(0, nj4, 4):
                a0 += flut[q, j, codes[i, b, j]]
                a1 += flut[q, j + 1, codes[i, b, j + 1]]
                a2 += flut[q, j + 2, codes[i, b, j + 2]]
                a3 += flut[q, j + 3, codes[i, b, j + 3]]
            for j in range(nj4, nj):
                a0 += flut[q, j, codes[i, b, j]]
            s += ab[tile, b, r] * (f32(2.0) * ((a0 + a1) + (a2 + a3)) - qsum[q])
        return s

    @numba.njit(fastmath=True, cache=True, nogil=True, inline="always")
    def _gather(ub, cnt, off, root, cand, m):
        """Appends to ``cand[m:]`` the window positions ``off + r`` of a tile's documents whose bound ``ub[r]`` reaches
        ``root`` (the k-th best exact score so far, or -inf while the heap fills), in groups of 16 that are mostly
        ruled out by their largest bound, while the tile's bounds are still in L1; returns the new count."""
        for g in range(0, cnt, 16):
            ge = min(cnt, g + 16)
            top = ub[g]
            for r in range(g + 1, ge):
                top = max(top, ub[r])
            if top < root:
                continue
            for r in range(g, ge):
                if ub[r] >= root:
                    cand[m] = off + r
                    m += 1
        return m

    @numba.njit(fastmath=True, cache=True, nogil=True)
    def _select(q, ub, cand, m, i0, t, flut, qsum, base, codes, ab, hs, hp, fill, exact, th, tp):
        """Query ``q`` over a window of documents from ``i0`` whose upper bounds are ``ub``, of which ``cand[:m]``
        reached the k-th best exact score as it stood when they were bounded: exact scores into the heaps for what
        the bounds cannot rule out, best bound first, so the k-th best exact score rises as fast as it can and rules
        out the rest (in document order, 5-9x as many documents were scored at 20k)."""
        k = hs.shape[2]
        h, p = hs[t, q], hp[t, q]
        f = fill[t, q]
        if f < k:  # the heap's first entries: the window's best bounds (in document order, any k would enter)
            need = min(k - f, m)
            tf = 0
            for x in range(m):
                r = cand[x]
                if tf < need or ub[r] > th[0]:
                    tf = push(th, tp, tf, need, ub[r], r)
            for x in range(tf):
                r = tp[x]
                exact[t, q] += 1
                f = push(h, p, f, k, _exact(q, i0 + r, flut, qsum, base, codes, ab), i0 + r)
                ub[r] = -np.inf  # scored
            if f < k:  # the window held fewer documents than the heap lacked: all are in
                fill[t, q] = f
                return
        root = h[0]
        mm = 0
        for x in range(m):  # what still reaches the k-th best score, best bound first
            if ub[cand[x]] >= root:
                cand[mm] = cand[x]
                mm += 1
        sel = cand[:mm]
        if mm > 1:
            sel = sel[np.argsort(-ub[sel])]
        for x in range(mm):
            r = sel[x]
            if ub[r] < h[0]:
                break  # neither it nor any after it (lower bounds) can reach the k-th best exact score
            exact[t, q] += 1
            f = push(h, p, f, k, _exact(q, i0 + r, flut, qsum, base, codes, ab), i0 + r)
        fill[t, q] = f

    @numba.njit(parallel=parallel, fastmath=True, cache=True, nogil=True)
    def scan(addrs, fs, tabs, flut, scale, offset, err, qsum, base, codes, ab, bounds, hs, hp, fill, exact, wtiles):
        """``addrs``: the loops for 4, 2 and 1 queries (:data:`GROUPS`); ``wtiles``: tiles per selection window."""
        nb, nj = fs.shape[0], fs.shape[2]
        n, nq, k = codes.shape[0], tabs.shape[0], hs.shape[2]
        fs_ptr, tab_ptr, plane = i64(fs.ctypes.data), i64(tabs.ctypes.data), i64(fs.strides[0])
        W = wtiles * _TILE
        for t in numba.prange(bounds.shape[0] - 1):
            buf = np.empty((4, nb, _TILE), np.uint16)  # a group's table sums: query, plane, document
            buf_ptr = i64(buf.ctypes.data)
            lo, hi = bounds[t], bounds[t + 1]
            wd = min(W, (hi - lo) * BLOCK)
            ub = np.empty(nq * wd, f32)  # the window's upper bounds, per query (flat: slices of it vectorise)
            th, tp = np.empty(k, f32), np.empty(k, np.int32)
            cand = np.empty(nq * wd, np.int32)  # per query: window positions whose bound reached the heap's root
            mq = np.zeros(nq, i64)
            for w0 in range(lo, hi, wtiles * _TILE_BLOCKS):
                w1 = min(hi, w0 + wtiles * _TILE_BLOCKS)
                for b0 in range(w0, w1, _TILE_BLOCKS):
                    m = min(w1, b0 + _TILE_BLOCKS) - b0
                    cnt = min(n, (b0 + m) * BLOCK) - b0 * BLOCK
                    off = (b0 - w0) * BLOCK
                    q0 = 0
                    while q0 < nq:
                        G = 4 if nq - q0 >= 4 else (2 if nq - q0 >= 2 else 1)
                        for b in range(nb):
                            call(addrs[0 if G == 4 else (1 if G == 2 else 2)], fs_ptr + b * plane + b0 * nj * BLOCK,
                                 tab_ptr + q0 * nj * 64, buf_ptr + b * _TILE * 2, m, nj, nj * 64, nb * _TILE)
                        for q in range(q0, q0 + G):
                            u = ub[q * wd + off:q * wd + off + cnt]
                            _upper(q, buf[q - q0], u, cnt, b0 // _TILE_BLOCKS, scale, offset, err, qsum, base, ab)
                            root = hs[t, q, 0] if fill[t, q] == k else -np.inf
                            mq[q] = _gather(u, cnt, off, root, cand[q * wd:(q + 1) * wd], mq[q])
                        q0 += G
                wi = w0 * BLOCK
                for q in range(nq):
                    _select(q, ub[q * wd:(q + 1) * wd], cand[q * wd:(q + 1) * wd], mq[q], wi, t, flut, qsum, base,
                            codes, ab, hs, hp, fill, exact, th, tp)
                    mq[q] = 0

    return scan


def topk(qe: np.ndarray, base: np.ndarray, lay: ShuffleLayout, k: int, *, parts: int | None = None,
         stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exact best ``min(k, n)`` documents per query, ``(scores [nq, k], positions [nq, k])``, best first, ties by
    position, for ``score = base + sum_b alpha_b qe . s_b`` (``s_b`` the +-1 planes). ``stats``, when given, gets
    ``exact``: the documents scored exactly (the rest were ruled out by their bound)."""
    import numba

    require()
    qe = np.ascontiguousarray(qe, np.float32)
    base = np.ascontiguousarray(base, np.float32)
    nq, dim = qe.shape
    fs, codes, ab = lay.arrays()
    n = codes.shape[0]
    if dim != 8 * codes.shape[2]:
        raise BadInput(f"query dimension {dim} does not match the codes' {8 * codes.shape[2]}")
    kk = min(k, n)
    if kk <= 0 or nq == 0:
        return topk_heap.none(nq, kk)
    # |hat - exact| <= sum_b |alpha_b| * err
    tabs, scale, offset, err, qsum = _prepare()(qe)
    parallel = nq * n >= SERIAL_BELOW
    parts = parts or (numba.get_num_threads() if parallel else 1)
    bounds = topk_heap.bounds(fs.shape[1], parts, unit=_TILE_BLOCKS)  # ranges of whole tiles: their scales are stored by tile
    hs, hp, fill = topk_heap.heaps(parts, nq, kk)
    exact = np.zeros((parts, nq), np.int64)
    # the selection window: as many tiles as keep every query's bounds within _WINDOW_FLOATS per thread (one tile for a
    # large batch, 32 tiles = 65,536 documents for up to 4 queries)
    wtiles = max(1, min(32, _WINDOW_FLOATS // (nq * _TILE_BLOCKS * BLOCK)))
    _kernel(parallel)(_addresses(), fs, tabs, byte_luts(qe), scale, offset, err,
                      qsum, base, codes, ab, bounds, hs, hp, fill, exact, wtiles)
    if stats is not None:
        stats["exact"] = exact.sum(axis=0)
    return topk_heap.merge(hs, hp, fill, kk)
