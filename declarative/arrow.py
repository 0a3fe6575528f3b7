"""arrow: S factored as many small diagonal blocks and a narrow border, for a whole batch.

Many layers are separable but for a few coupling rows: softmax, sparsemax and
water-filling (one equality, Σx = 1 or Σx = P, ties n otherwise independent coordinates:
blocks of 5, 2 and 6), the l1-ball projection (blocks of 4), a box projection (blocks of 3,
no border). Their S, with the few nodes of highest degree in its graph (the
border) set aside, falls apart into many small connected components. Ordered blocks first
and border last, S is a bordered block-diagonal ("arrowhead") matrix

    S = [[Bd, E], [F, C]],   Bd = diag(B₁, …, B_k),

and with the Schur complement Σ = C − F Bd⁻¹ E,

    S⁻¹ r:  z = Bd⁻¹ r_b,  z_c = Σ⁻¹ (r_c − F z),  z_b = z − (Bd⁻¹ E) z_c.

The blocks of one size are inverted as one stack (one NumPy call for every block of
every instance), Σ likewise; solves are batched products. Softmax at n = 100 (N = 501:
100 blocks of 5 and one border node), 64 instances, CPU time: factored in 19-28 ms against
SuperLU's 33-35, solved in 1.3-1.8 ms against 4.4; sparsemax at n = 100 (100 blocks of 2):
10-13 against 18-20 ms, 1.0-1.5 against 1.5.

The elimination pivots within blocks only, which is stable where every block is well
conditioned; each instance is therefore checked on a probe (its residual must be at the
rounding of |S||x|), its reciprocal 1-norm condition number estimated from batched solves
(Hager's method, as LAPACK's gecon), and an instance that fails either is left to SuperLU.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph

# S is factored this way where its graph, without at most BORDER_MAX nodes (those of
# highest degree), has components of at most BLOCK_MAX nodes, and at least BLOCKS_MIN of
# them; else by SuperLU.
BORDER_MAX = 32
BLOCK_MAX = 12
BLOCKS_MIN = 8
# Used for batches of at least BATCH_MIN instances factored at once: below, its fixed cost
# (the structure's scatters, the probe and the condition estimate, batched) exceeds SuperLU's
# (softmax at n = 100, forward and backward: batch 8 46 against 54 ms of CPU time, batch 4
# 31 against 27).
BATCH_MIN = 8
# From ORDER_ALONE unknowns on (n + m) it is used at any batch size, one instance included:
# SuperLU's fill through the border (softmax's Σx = 1 row) then costs more than the batched
# structure's fixed cost. Forward + backward per instance (softmax, BENCHMARKS.md): n = 1,000
# (5,001 unknowns) at batch 1, 2, 4, 8: 117, 94, 81, 70 ms against 83, 55, 45, 43; n = 3,000
# at batch 4 630 against 243 ms; n = 300 (1,501) at 2 and 4 11 and 9.3 against 8.7 and 7.4;
# n = 100 (501), where SuperLU does not fill, 5-20% slower below batch 8.
ORDER_ALONE = 1_000
# A factorization is kept for an instance only where the probe's residual is at most
# PROBE_ROUNDING (1024 ulps) of |S||x| + |z| (max norms): block-wise pivoting lost nothing.
PROBE_ROUNDING = 1024 * np.finfo(float).eps


class Arrow:
    """The bordered block-diagonal structure of a sparsity pattern (CSC ``indices``,
    ``indptr``, order N), and maps from its stored entries to the blocks, the border
    strips E and F, and the corner C. `Arrow.of` finds it, or None."""

    def __init__(self, indices: np.ndarray, indptr: np.ndarray, N: int,
                 border: np.ndarray, labels: np.ndarray) -> None:
        self.N = N
        self.border = border
        nb = border.size
        self.nb = nb
        cols = np.repeat(np.arange(N), np.diff(indptr))
        rows = np.asarray(indices, dtype=np.int64)
        # each node's group (blocks of one size), block within the group, and place in it
        sizes = np.bincount(labels[labels >= 0])
        group_of_size = {s: g for g, s in enumerate(sorted(set(sizes[sizes > 0].tolist())))}
        order = np.argsort(labels, kind="stable")
        order = order[labels[order] >= 0]
        comp = labels[order]
        starts = np.concatenate([[0], np.flatnonzero(np.diff(comp)) + 1])
        g_node = np.full(N, -1)
        b_node = np.full(N, -1)
        l_node = np.full(N, -1)
        self.groups: list[np.ndarray] = []  # (k, s) nodes of each group's blocks
        members: dict[int, list[np.ndarray]] = {}
        for lo, hi in zip(starts.tolist(), [*starts[1:].tolist(), order.size], strict=True):
            nodes = order[lo:hi]
            members.setdefault(group_of_size[nodes.size], []).append(nodes)
        for g in range(len(group_of_size)):
            blocks = np.array(members[g])
            self.groups.append(blocks)
            k, s = blocks.shape
            g_node[blocks] = g
            b_node[blocks] = np.arange(k)[:, None]
            l_node[blocks] = np.arange(s)[None, :]
        q_node = np.full(N, -1)
        q_node[border] = np.arange(nb)
        # the stored entries of each part: (entries, flat positions in that part's array)
        gr, gc = g_node[rows], g_node[cols]
        self.block_maps, self.e_maps, self.f_maps = [], [], []
        for g, blocks in enumerate(self.groups):
            k, s = blocks.shape
            inb = np.flatnonzero((gr == g) & (gc == g))
            assert np.all(b_node[rows[inb]] == b_node[cols[inb]])  # components: no others
            self.block_maps.append((inb, (b_node[rows[inb]] * s + l_node[rows[inb]]) * s
                                    + l_node[cols[inb]]))
            e = np.flatnonzero((gr == g) & (q_node[cols] >= 0))
            self.e_maps.append((e, (b_node[rows[e]] * s + l_node[rows[e]]) * nb
                                + q_node[cols[e]]))
            f = np.flatnonzero((q_node[rows] >= 0) & (gc == g))
            self.f_maps.append((f, (q_node[rows[f]] * k + b_node[cols[f]]) * s
                                + l_node[cols[f]]))
        c = np.flatnonzero((q_node[rows] >= 0) & (q_node[cols] >= 0))
        self.c_map = (c, q_node[rows[c]] * nb + q_node[cols[c]])
        # (nnz, N): sum entry-wise products into their rows (residuals), and entries into
        # their columns (1-norms)
        nnz = rows.size
        self._rows = sp.csr_matrix((np.ones(nnz), (np.arange(nnz), rows)), shape=(nnz, N))
        self._colsum = sp.csr_matrix((np.ones(nnz), (np.arange(nnz), cols)), shape=(nnz, N))
        self._cols = cols

    @staticmethod
    def of(indices: np.ndarray, indptr: np.ndarray, N: int) -> Arrow | None:
        """The structure of the pattern, or None where it has none worth using: set aside
        nodes by decreasing degree (in the symmetrized graph), 0, 1, 2, 4, … up to
        BORDER_MAX of them, until every component left has at most BLOCK_MAX nodes."""
        cols = np.repeat(np.arange(N), np.diff(indptr))
        rows = np.asarray(indices)
        off = rows != cols
        G = sp.coo_matrix((np.ones(int(off.sum())), (rows[off], cols[off])), shape=(N, N))
        G = (G + G.T).tocsr()
        degree = np.diff(G.indptr)
        by_degree = np.argsort(-degree, kind="stable")
        nb = 0
        while nb <= BORDER_MAX:
            keep = np.ones(N, dtype=bool)
            keep[by_degree[:nb]] = False
            inner = np.flatnonzero(keep)
            count, labels = csgraph.connected_components(G[inner][:, inner], directed=False)
            if count >= BLOCKS_MIN and np.bincount(labels).max() <= BLOCK_MAX:
                full = np.full(N, -1)
                full[inner] = labels
                return Arrow(indices, indptr, N, np.sort(by_degree[:nb]), full)
            nb = 1 if nb == 0 else 2 * nb
        return None

    def factor(self, data: np.ndarray, z: np.ndarray
               ) -> tuple[ArrowFactors, np.ndarray, np.ndarray]:
        """Factor S for each row of ``data`` (B, nnz: CSC values in the pattern's order), each
        checked on the probe z (N,), a fixed vector of ±1.
        Returns the factors, each instance's reciprocal 1-norm condition estimate, and
        whether it is usable (finite, blocks and Σ invertible, the probe's residual at
        rounding); where not, its rcond is 0 and nothing of it may be read."""
        B = data.shape[0]
        ok = np.isfinite(data).all(axis=1)
        data = np.where(ok[:, None], data, 0.0)
        nb = self.nb
        binv, W, F = [], [], []
        for blocks, (ent, pos), (e_ent, e_pos), (f_ent, f_pos) in zip(
                self.groups, self.block_maps, self.e_maps, self.f_maps, strict=True):
            k, s = blocks.shape
            M = np.zeros((B, k * s * s))
            M[:, pos] = data[:, ent]
            inv = _invert_stack(M.reshape(B, k, s, s), ok)
            binv.append(inv)
            E = np.zeros((B, k * s * nb))
            E[:, e_pos] = data[:, e_ent]
            W.append(inv @ E.reshape(B, k, s, nb))
            Fg = np.zeros((B, nb * k * s))
            Fg[:, f_pos] = data[:, f_ent]
            F.append(Fg.reshape(B, nb, k, s))
        if nb:
            C = np.zeros((B, nb * nb))
            C[:, self.c_map[1]] = data[:, self.c_map[0]]
            schur = C.reshape(B, nb, nb)
            for Fg, Wg in zip(F, W, strict=True):
                schur = schur - np.einsum("bqks,bksp->bqp", Fg, Wg)
            sinv = _invert_stack(schur[:, None], ok)[:, 0]
        else:
            sinv = np.zeros((B, 0, 0))
        out = ArrowFactors(self, binv, W, F, sinv)
        every = np.arange(B)
        # the probe: S x = z must hold to rounding
        with np.errstate(all="ignore"):
            x = out.solve(every, np.broadcast_to(z, (B, self.N)), False)
            terms = data * x[:, self._cols]
            r = z - terms @ self._rows
            size = np.abs(terms) @ self._rows + 1.0
            ok &= np.isfinite(x).all(axis=1) & (np.abs(r).max(axis=1)
                                                <= PROBE_ROUNDING * size.max(axis=1))
            # ‖S⁻¹‖₁ from below by Hager's method (Higham, *Accuracy and Stability of
            # Numerical Algorithms*, §15.3; LAPACK's gecon) started at the probe: ‖S⁻¹z‖₁/‖z‖₁,
            # then the column of S⁻¹ that Sᵀ's solve with sign(S⁻¹z) points to
            w = out.solve(every, np.where(x >= 0, 1.0, -1.0), True)
            e = np.zeros((B, self.N))
            e[every, np.argmax(np.abs(w), axis=1)] = 1.0
            inverse = np.maximum(np.abs(x).sum(axis=1) / self.N,
                                 np.abs(out.solve(every, e, False)).sum(axis=1))
            rcond = np.where(ok, 1.0 / (self.norm1(data) * inverse), 0.0)
        rcond = np.where(np.isfinite(rcond), rcond, 0.0)
        return out, rcond, ok & (rcond > 0)

    def norm1(self, data: np.ndarray) -> np.ndarray:
        """‖S‖₁ per instance: the largest column sum of |S|."""
        return (np.abs(data) @ self._colsum).max(axis=1, initial=0.0)


def _invert_stack(M: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """M⁻¹ for a stack (B, k, s, s) in one call; where some block of an instance is singular,
    that instance's blocks are inverted alone and it is marked not ``ok`` (its blocks then
    NaN) if one of them is singular."""
    B, k, s, _ = M.shape
    try:
        return np.linalg.inv(M)
    except np.linalg.LinAlgError:
        out = np.full(M.shape, np.nan)
        for b in range(B):
            try:
                out[b] = np.linalg.inv(M[b])
            except np.linalg.LinAlgError:
                ok[b] = False
        return out


class ArrowFactors:
    """A batch's factorizations of S by `Arrow`: the blocks' inverses (per group, (B, k, s,
    s)), W = Bd⁻¹ E ((B, k, s, nb)), F ((B, nb, k, s)) and Σ⁻¹ ((B, nb, nb))."""

    def __init__(self, arrow: Arrow, binv: list, W: list, F: list, sinv: np.ndarray) -> None:
        self.arrow, self.binv, self.W, self.F, self.sinv = arrow, binv, W, F, sinv

    def solve(self, js: np.ndarray, rhs: np.ndarray, transpose: bool) -> np.ndarray:
        """S⁻¹ rhs (or S⁻ᵀ rhs) for instances ``js``, rhs (len(js), N) or (len(js), N, K)."""
        a = self.arrow
        one = rhs.ndim == 2
        r = rhs[..., None] if one else rhs
        out = np.empty(r.shape)
        every = js.size == self.sinv.shape[0] and bool(np.all(js == np.arange(js.size)))

        def pick(stack: np.ndarray) -> np.ndarray:
            return stack if every else stack[js]

        J, K = r.shape[0], r.shape[-1]
        rc = r[:, a.border] if a.nb else None
        zs = []
        for g, blocks in enumerate(a.groups):
            k, s = blocks.shape
            rb = r[:, blocks]  # (J, k, s, K)
            z = _times_blocks(pick(self.binv[g]), rb, transpose)
            zs.append(z)
            if a.nb:
                # Sᵀ's border rows hold Eᵀ, and Eᵀ Bd⁻ᵀ r = Wᵀ r; S's hold F
                if transpose:
                    W = pick(self.W[g]).reshape(J, k * s, a.nb)
                    rc = rc - np.swapaxes(W, 1, 2) @ rb.reshape(J, k * s, K)
                else:
                    rc = rc - pick(self.F[g]).reshape(J, a.nb, k * s) @ z.reshape(J, k * s, K)
        if a.nb:
            sinv = pick(self.sinv)
            zc = (np.swapaxes(sinv, 1, 2) if transpose else sinv) @ rc
            out[:, a.border] = zc
        for g, blocks in enumerate(a.groups):
            k, s = blocks.shape
            z = zs[g]
            if a.nb:
                if transpose:  # z_b = Bd⁻ᵀ (r_b − Fᵀ z_c)
                    Ft = np.swapaxes(pick(self.F[g]).reshape(J, a.nb, k * s), 1, 2)
                    z = z - _times_blocks(pick(self.binv[g]), (Ft @ zc).reshape(J, k, s, K),
                                          True)
                else:
                    z = z - (pick(self.W[g]).reshape(J, k * s, a.nb) @ zc).reshape(J, k, s, K)
            out[:, blocks] = z
        return out[..., 0] if one else out


def _times_blocks(inv: np.ndarray, r: np.ndarray, transpose: bool) -> np.ndarray:
    """inv @ r (or invᵀ @ r) block by block, inv (J, k, s, s), r (J, k, s, K): for one
    right-hand side by `einsum` (NumPy's matmul costs more on stacks of tiny matrices:
    softmax's 6,400 blocks of 5, 0.26 against 0.43 ms), for several by matmul (einsum's
    loop is then the slower, 3.1 against 0.38 ms at K = 2)."""
    if r.shape[-1] == 1:
        return np.einsum("jkba,jkb->jka" if transpose else "jkab,jkb->jka", inv,
                         r[..., 0])[..., None]
    return (np.swapaxes(inv, 2, 3) if transpose else inv) @ r


class ArrowLU:
    """One instance's factorization in an `ArrowFactors`, solving like SuperLU's."""

    __slots__ = ("factors", "j")

    def __init__(self, factors: ArrowFactors, j: int) -> None:
        self.factors, self.j = factors, j

    def solve(self, rhs: np.ndarray, trans: str = "N") -> np.ndarray:
        return self.factors.solve(np.array([self.j]), rhs[None], trans == "T")[0]
