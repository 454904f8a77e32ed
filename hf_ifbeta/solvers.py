"""Inverse-Hessian solvers of the proxy head: `H'^{-1} g` and the self-influence term, chosen by name.

For the fitted head theta (C, d + 1) and its fit rows, with `P = C (d + 1)` parameters,

    H = mean_i S_i (x) x_i x_i^T + I_C (x) diag(reg),     S_i = d^2 l_i / d f_i^2 (`losses.curvature_terms`),

and vec(theta) row-major. Softmax is invariant to adding one vector to every class row of theta, so the data
part of H is singular along `1_C (x) u`; every gradient sums to zero over classes and lies in the complement,
which H maps to itself. Each solver therefore works with the gauge-fixed `H' = H + kappa (1_C 1_C^T / C) (x) I`:
equal to H on the class-centred subspace (so every score is unchanged) and well conditioned on the rest.

A solver is built from the fitted head and its rows (the curvature), answers `solve(g)` and `self_influence(e, x)`,
and drops the rows with `release()` once no more solves are needed. `get_solver(name)` returns its class:

- "exact": H' dense (P, P) in float64, Cholesky; exact self-influence.
- "kfac": conjugate gradients on exact Hessian-vector products, preconditioned by EK-FAC (H never formed);
  EK-FAC self-influence.

`HESSIAN_MODES` adds "auto", which `resolve_solver` turns into "exact" for heads of at most `exact_max_params`
parameters and "kfac" above.
"""

import logging
from typing import Any, Callable, Dict, Optional, Tuple, Type

import torch

from .arrays import Stream
from .losses import ProxyLoss, apply_curvature, curvature_terms

__all__ = ["HESSIAN_MODES", "ExactSolver", "KfacSolver", "Solver", "get_solver", "resolve_solver"]

logger = logging.getLogger(__name__)

# Rows x parameters per block (at least 256 rows) when rank-one gradients are expanded to (rows, C (d + 1)).
_BLOCK_ELEMENTS = 1 << 22


class Solver:
    """Solves `H' v = g` for one fitted head.

    Args:
        rows (`Stream`): the fit rows; H is their mean curvature.
        theta (`torch.Tensor`): (C, d + 1) the fitted head.
        loss (`ProxyLoss`): the head's loss (alpha, temperature; its `l2` is in `reg`).
        reg (`torch.Tensor`): (d + 1,) the regulariser's diagonal on one class row of theta.
        tol (`float`), max_iter (`int`): relative-residual target and iteration budget of iterative solvers
            (direct ones ignore them).

    Attributes:
        info (`Dict[str, Any]`): diagnostics of the last solve: `cg_iterations`, `residual` (the true relative
            residual), and the solver's own.
    """

    name: str = ""
    # dtype of the per-row maths; every sum over rows, theta and the solve itself are float64 whatever it is.
    dtype: torch.dtype = torch.float64

    def __init__(self, rows: Stream, theta: torch.Tensor, loss: ProxyLoss, reg: torch.Tensor, *, tol: float,
                 max_iter: int):  # fmt: skip
        self.rows, self.theta, self.loss, self.reg = rows, theta, loss, reg
        self.tol, self.max_iter = tol, max_iter
        self.token = object()  # identifies theta in the rows' memo of per-row terms
        self.info: Dict[str, Any] = {}

    def solve(self, g: torch.Tensor) -> torch.Tensor:
        """`H'^{-1} g` for g (C, d + 1) float64."""
        raise NotImplementedError

    def self_influence(self, e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(m,) `grad l_i^T H'^{-1} grad l_i` with `grad l_i = e_i x_i^T`, for e (m, C) and x (m, d + 1)."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop the fit rows and what only `solve` needs; `self_influence` still works."""
        self.rows = None

    def _residual(self, apply: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, g: torch.Tensor) -> float:
        g_norm = float(g.norm())
        return float((apply(v) - g).norm()) / g_norm if g_norm > 0 else 0.0


class ExactSolver(Solver):
    """Dense H' (P, P) in float64 and its Cholesky factor L; the self-influence is `||L^{-1} grad l_i||^2`."""

    name = "exact"
    dtype = torch.float64  # small heads: float64 throughout

    def __init__(self, rows, theta, loss, reg, *, tol, max_iter):
        super().__init__(rows, theta, loss, reg, tol=tol, max_iter=max_iter)
        C, D = theta.shape
        H = dense_hessian(rows, theta, self.token, loss, reg)
        # Gauge scale: the mean diagonal of H (any kappa > 0 gives the same scores; this one conditions well).
        add_gauge_(H, C, D, float(H.diagonal().mean()))
        self.L, self.jitter = cholesky_(H)
        self.H: Optional[torch.Tensor] = H

    def solve(self, g):
        P = self.L.shape[0]
        v = torch.cholesky_solve(g.reshape(P, 1), self.L).reshape(g.shape)
        if self.H is not None:
            residual = self._residual(lambda u: self.H @ u.reshape(P), v, g.reshape(P))
        else:
            residual = self._residual(lambda u: self.L @ (self.L.T @ u.reshape(P)), v, g.reshape(P))
        self.info = {"cg_iterations": 0, "residual": residual, "jitter": self.jitter}
        return v

    def self_influence(self, e, x):
        return exact_self_influence(self.L, e, x)

    def release(self):
        super().release()
        self.H = None  # (P, P): the factor L is all that is left to use


class KfacSolver(Solver):
    """Preconditioned conjugate gradients on exact products `H' V`, with the EK-FAC preconditioner, whose
    inverse also gives the self-influence (an approximation)."""

    name = "kfac"
    dtype = torch.float32  # large heads: float32 chunk maths, the sums, CG vectors and preconditioner in float64

    def __init__(self, rows, theta, loss, reg, *, tol, max_iter):
        super().__init__(rows, theta, loss, reg, tol=tol, max_iter=max_iter)
        self.precond = EKFAC(rows, theta, self.token, loss, reg)

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        return hvp(self.rows, self.theta, self.token, V, self.loss, self.reg, self.precond.kappa)

    def solve(self, g):
        v, iterations, _ = pcg(self.matvec, self.precond.solve, g, self.tol, self.max_iter)
        residual = self._residual(self.matvec, v, g)  # the true residual, not the recursive one
        converged = iterations < self.max_iter or residual <= self.tol
        self.info = {"cg_iterations": iterations, "residual": residual, "cg_converged": converged}
        if not converged:
            logger.warning(
                f"Conjugate gradients stopped at cg_max_iter={self.max_iter} with relative residual {residual:.3g} "
                f"(target {self.tol:.1g}): scores are approximate; raise cg_max_iter or l2."
            )
        return v

    def self_influence(self, e, x):
        return self.precond.self_influence(e, x)


SOLVERS: Dict[str, Type[Solver]] = {cls.name: cls for cls in (ExactSolver, KfacSolver)}
HESSIAN_MODES: Tuple[str, ...] = ("auto", *SOLVERS)


def get_solver(name: str) -> Type[Solver]:
    """The solver class registered as `name`; a `ValueError` lists the choices for any other name."""
    if name not in SOLVERS:
        raise ValueError(f"Unknown hessian mode: {name}. Choose between {list(HESSIAN_MODES)}.")
    return SOLVERS[name]


def resolve_solver(hessian: str, num_params: int, exact_max_params: int) -> Type[Solver]:
    """`get_solver(hessian)`, with "auto" meaning "exact" up to `exact_max_params` parameters and "kfac" above."""
    if hessian == "auto":
        hessian = "exact" if num_params <= exact_max_params else "kfac"
    return get_solver(hessian)


# ---------------------------------------------------------------------------------------------------------
# Exact path
# ---------------------------------------------------------------------------------------------------------


def dense_hessian(rows: Stream, theta, token, loss: ProxyLoss, reg) -> torch.Tensor:
    """H (P, P), P = C (d + 1), float64, assembled chunk by chunk: mean_i S_i (x) x_i x_i^T + I (x) diag(reg).

    Block (c, k) of H is `X^T diag(S_i[c, k]) X`; only the blocks k >= c are computed (H is symmetric), which
    costs n P^2 / 2 multiply-adds in all.
    """
    C, D = theta.shape
    P = C * D
    H = torch.zeros(P, P, dtype=torch.float64, device=theta.device)
    H4 = H.view(C, D, C, D)
    block = max(256, _BLOCK_ELEMENTS // P)
    for chunk in rows:
        _, _, p, p_tau = chunk.terms_at(loss, theta, token)
        terms = curvature_terms(loss, p, p_tau)
        for s in range(0, len(chunk.y), block):
            x = chunk.x[s : s + block]  # (b, D)
            qs = [(w, q[s : s + block]) for w, q in terms]
            for c in range(C):
                s_c = sum(-w * q[:, c : c + 1] * q[:, c:] for w, q in qs)  # (b, C - c): S_i[c, c:]
                s_c[:, 0] += sum(w * q[:, c] for w, q in qs)
                weighted = (s_c[:, :, None] * x[:, None, :]).reshape(len(x), (C - c) * D)
                H4[c, :, c:, :] += (x.T @ weighted).view(D, C - c, D).to(torch.float64)
    for c in range(C - 1):  # mirror the upper block triangle: H[k, :, c, :] = H[c, :, k, :]^T
        H4[c + 1 :, :, c, :] = H4[c, :, c + 1 :, :].permute(1, 2, 0)
    H /= len(rows)
    H.diagonal().add_(reg.repeat(C))
    return H


def add_gauge_(H: torch.Tensor, C: int, D: int, kappa: float) -> None:
    """H += kappa * (1_C 1_C^T / C) (x) I_D, in place (no (P, P) temporary)."""
    eye = torch.eye(D, dtype=H.dtype, device=H.device)
    H.view(C, D, C, D).add_((kappa / C) * eye[None, :, None, :])


def cholesky_(H: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """Cholesky factor of H, adding (in place) the smallest diagonal jitter, relative to the mean diagonal,
    that makes it succeed. Returns (L, jitter added)."""
    scale = float(H.diagonal().mean())
    added = 0.0
    for jitter in (0.0, 1e-12, 1e-10, 1e-8, 1e-6):
        H.diagonal().add_(jitter * scale - added)
        added = jitter * scale
        L, err = torch.linalg.cholesky_ex(H)
        if int(err) == 0:
            return L, added
    raise ValueError(
        "The proxy-head Hessian is not positive definite even with jitter: features are degenerate. "
        "Raise l2 (e.g. 1e-3) or check the features."
    )


def exact_self_influence(L: torch.Tensor, e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(m,) ||L^{-1} (e_i (x) x_i)||^2 = grad l_i^T H'^{-1} grad l_i, in blocks of rows."""
    P = L.shape[0]
    out = []
    rows = max(256, _BLOCK_ELEMENTS // P)
    for s in range(0, len(e), rows):
        grads = (e[s : s + rows, :, None] * x[s : s + rows, None, :]).reshape(-1, P).to(L.dtype)  # (b, P)
        out.append((torch.linalg.solve_triangular(L, grads.T, upper=False) ** 2).sum(0))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------------
# Kronecker-factored path
# ---------------------------------------------------------------------------------------------------------


def hvp(rows: Stream, theta, token, V, loss: ProxyLoss, reg, kappa) -> torch.Tensor:
    """H' V (C, d + 1) without forming H: mean_i S_i (V x_i) x_i^T + reg * V + gauge, float64."""
    out = torch.zeros_like(V, dtype=torch.float64)
    V_c = None
    for chunk in rows:
        V_c = V.to(chunk.x.dtype) if V_c is None else V_c
        _, _, p, p_tau = chunk.terms_at(loss, theta, token)
        u = chunk.x @ V_c.T  # (m, C)
        su = apply_curvature(curvature_terms(loss, p, p_tau), u)
        out += (su.T @ chunk.x).to(torch.float64)
    return out / len(rows) + reg * V + kappa * V.mean(0, keepdim=True)


class EKFAC:
    """EK-FAC preconditioner: the eigenbases of A = mean x x^T (D, D) and G = mean S_i (C, C), with the exact
    diagonal of H' in the basis Q_G (x) Q_A (George et al., 2018), so M^{-1} R = Q_G ((Q_G^T R Q_A) / Lambda) Q_A^T.
    """

    def __init__(self, rows: Stream, theta, token, loss: ProxyLoss, reg):
        C, D = theta.shape
        dev = theta.device
        A = torch.zeros(D, D, dtype=torch.float64, device=dev)
        G = torch.zeros(C, C, dtype=torch.float64, device=dev)
        trace = 0.0  # sum_i tr(S_i) ||x_i||^2 = m tr(H_data)
        for chunk in rows:
            _, _, p, p_tau = chunk.terms_at(loss, theta, token)
            A += (chunk.x.T @ chunk.x).to(torch.float64)
            trace_s = 0.0
            for w, q in curvature_terms(loss, p, p_tau):
                G += w * (torch.diag(q.sum(0)) - q.T @ q).to(torch.float64)
                trace_s = trace_s + w * (q - q**2).sum(1)  # (m,)
            trace += float((trace_s * (chunk.x**2).sum(1)).sum(dtype=torch.float64))
        A, G = A / len(rows), G / len(rows)
        # Gauge scale: the mean diagonal of H (any kappa > 0 gives the same scores; this one conditions well).
        self.kappa = kappa = trace / (len(rows) * C * D) + float(reg.mean())
        G += float(G.trace()) / C * torch.full((C, C), 1.0 / C, dtype=torch.float64, device=dev)  # gauge of G
        self.QA = torch.linalg.eigh(A).eigenvectors  # (D, D)
        self.QG = torch.linalg.eigh(G).eigenvectors  # (C, C)

        # Exact diagonal of H' in the Kronecker eigenbasis: mean_i diag(QG^T S_i QG) (x) (QA^T x_i)^2 + reg + gauge.
        lam = torch.zeros(C, D, dtype=torch.float64, device=dev)
        for chunk in rows:
            _, _, p, p_tau = chunk.terms_at(loss, theta, token)
            QG, QA = self.QG.to(chunk.x.dtype), self.QA.to(chunk.x.dtype)
            s = sum(w * (q @ QG**2 - (q @ QG) ** 2) for w, q in curvature_terms(loss, p, p_tau))
            t = (chunk.x @ QA) ** 2  # (m, D)
            lam += (s.clamp_min(0).T @ t).to(torch.float64)
        lam /= len(rows)
        lam += (reg[:, None] * self.QA**2).sum(0)[None, :]
        lam += kappa * (self.QG.sum(0) ** 2 / C)[:, None]
        self.lam = lam

    def solve(self, R: torch.Tensor) -> torch.Tensor:
        return self.QG @ ((self.QG.T @ R @ self.QA) / self.lam) @ self.QA.T

    def self_influence(self, e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(m,) (e_i (x) x_i)^T M^{-1} (e_i (x) x_i) for e (m, C), x (m, D)."""
        a = (e @ self.QG.to(e.dtype)) ** 2  # (m, C)
        b = (x @ self.QA.to(x.dtype)) ** 2  # (m, D)
        return ((a @ (1.0 / self.lam).to(e.dtype)) * b).sum(1)


def pcg(
    matvec: Callable, precond: Callable, b: torch.Tensor, tol: float, max_iter: int
) -> Tuple[torch.Tensor, int, float]:
    """Preconditioned conjugate gradients for H' v = b from v = 0. Returns (v, iterations, recursive rel. residual)."""
    b_norm = float(b.norm())
    v = torch.zeros_like(b)
    if b_norm == 0.0:
        return v, 0, 0.0
    r = b.clone()
    z = precond(r)
    d = z.clone()
    rz = float((r * z).sum())
    rel = 1.0
    for it in range(1, max_iter + 1):
        Hd = matvec(d)
        step = rz / float((d * Hd).sum())
        v += step * d
        r -= step * Hd
        rel = float(r.norm()) / b_norm
        if rel <= tol:
            return v, it, rel
        z = precond(r)
        rz_new = float((r * z).sum())
        d = z + (rz_new / rz) * d
        rz = rz_new
    return v, max_iter, rel
