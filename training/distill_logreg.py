"""Bilevel distillation objective: logistic regression fitted on the synthetic cells, scored on
real training cells, differentiated through the fit by the implicit function theorem.

Why: the distilled set is judged by classifiers trained on it alone, and the one the goals name
is L2-regularised logistic regression. Matching statistics of the real cells (DM, DC) or a
kernel-ridge proxy (KRR) only approximates that. Here the inner problem *is* the learner:

    theta*(S) = argmin_theta  J(theta; S) = c * sum_i CE(W s_i + b, y_i) + 0.5 ||W||^2

(scikit-learn's ``LogisticRegression(C)`` objective: the intercept is not penalised; with two
classes scikit-learn fits one binomial weight vector, which equals this multinomial form with
c = C / 2), and the outer loss is the mean cross-entropy of theta*(S) on real training cells.
J is strictly convex in W, so theta* is a smooth function of S and

    dL/dS = -d/dS [ v . grad_theta J(theta*, S) ],   v = H^-1 dL/dtheta,

with H the Hessian of J at theta* (solved matrix-free by conjugate gradients, each product
O(n G C)). Measured (Kang cell type, expression space, k-means start, 100 Adam steps, one seed):
logistic regression on the set 0.958 at SPC 1 and 0.964 at SPC 10, against 0.944 / 0.953 for the
k-means start itself.

Written here because no maintained library differentiates through a fitted scikit-learn model;
the solver (Newton-CG) and the algebra are standard.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The unpenalised intercept makes H singular along "add the same constant to every class's
# bias"; the outer gradient has no component there, and this ridge keeps CG well defined.
_BIAS_RIDGE = 1e-8


class LogisticRegressionFit:
    """L2-regularised multinomial logistic regression in float64, warm-started between calls.

    Parameters
    ----------
    n_classes : int
    C : float
        scikit-learn's inverse regularisation strength (the evaluation uses 1.0).
    tol : float
        Gradient tolerance of the inner fit (max-norm).
    max_iter : int
        Newton steps per fit.
    cg_tol : float
        Relative residual at which conjugate gradients stop.
    """

    def __init__(
        self,
        n_classes: int,
        C: float = 1.0,
        tol: float = 1e-8,
        max_iter: int = 100,
        cg_tol: float = 1e-8,
    ) -> None:
        if n_classes < 2:
            raise ValueError(f"need at least 2 classes, got {n_classes}")
        if not C > 0:
            raise ValueError(f"C must be positive, got {C}")
        self.n_classes = int(n_classes)
        # scikit-learn's binomial fit for two classes == the multinomial one with half the C.
        self.c = float(C) / 2.0 if n_classes == 2 else float(C)
        self.tol, self.max_iter, self.cg_tol = float(tol), int(max_iter), float(cg_tol)
        self.weight: torch.Tensor | None = None  # [C, G]
        self.bias: torch.Tensor | None = None  # [C]
        self._v: tuple[torch.Tensor, torch.Tensor] | None = None  # last CG solution
        # The implicit gradient assumes a stationary fit; these say how often it was not.
        self.fits = 0
        self.unconverged = 0
        self.worst_gradient = 0.0

    def objective(
        self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """J(theta; x) in float64."""
        logits = x @ weight.T + bias
        return self.c * F.cross_entropy(logits, y, reduction="sum") + 0.5 * (weight * weight).sum()

    def gradient(
        self, x: torch.Tensor, y_onehot: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """grad_theta J at (weight, bias): (c (P - Y)^T x + W, c sum(P - Y))."""
        residual = (x @ weight.T + bias).softmax(1) - y_onehot  # [n, C]
        return self.c * residual.T @ x + weight, self.c * residual.sum(0)

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights [C, G] and bias [C] minimising J on cells ``x`` [n, G] (no autograd to x).

        Newton-CG (as scikit-learn's ``newton-cg``): each step solves H d = -grad by conjugate
        gradients and backtracks until J falls. Warm-started from the previous fit, so an
        outer iteration's small move of the cells costs one or two Newton steps; L-BFGS from
        the same start took about 400 iterations (the few-cell problem is nearly separable).
        """
        x = x.detach().double()
        y_onehot = F.one_hot(y, self.n_classes).double()
        G = x.shape[1]
        if self.weight is None or self.weight.shape[1] != G:
            self.weight = torch.zeros(self.n_classes, G, dtype=torch.float64)
            self.bias = torch.zeros(self.n_classes, dtype=torch.float64)
        w, b = self.weight, self.bias
        value = self.objective(x, y, w, b)
        for newton_step in range(self.max_iter + 1):
            g_w, g_b = self.gradient(x, y_onehot, w, b)
            largest = max(float(g_w.abs().max()), float(g_b.abs().max()))
            if largest <= self.tol or newton_step == self.max_iter:
                break
            self.weight, self.bias = w, b  # the Hessian is taken at the current point
            d_w, d_b = self._conjugate_gradients(x, -g_w, -g_b, None, 1e-4)
            slope = float((g_w * d_w).sum() + (g_b * d_b).sum())
            step = 1.0
            while True:  # Armijo backtracking
                w_new, b_new = w + step * d_w, b + step * d_b
                value_new = self.objective(x, y, w_new, b_new)
                if value_new <= value + 1e-4 * step * slope or step < 1e-10:
                    break
                step *= 0.5
            if step < 1e-10:  # no decrease left at float64 precision
                break
            w, b, value = w_new, b_new, value_new
        self.weight, self.bias = w, b
        self.fits += 1
        if largest > self.tol:
            self.unconverged += 1
        self.worst_gradient = max(self.worst_gradient, largest)
        return w, b

    def record(self) -> dict[str, float]:
        """Fits so far, how many ended above the gradient tolerance, the largest final gradient
        (max-norm); written into a distilled set's provenance."""
        return {
            "fits": self.fits,
            "unconverged": self.unconverged,
            "worst_gradient": self.worst_gradient,
            "tolerance": self.tol,
        }

    def hessian_product(
        self, x: torch.Tensor, v_w: torch.Tensor, v_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """H (v_w, v_b) at the current fit: dZ = x v_w^T + v_b, dP = softmax Jacobian * dZ."""
        p = (x @ self.weight.T + self.bias).softmax(1)  # [n, C]
        dz = x @ v_w.T + v_b  # [n, C]
        pdz = p * dz
        dp = pdz - p * pdz.sum(1, keepdim=True)
        return v_w + self.c * dp.T @ x, self.c * dp.sum(0) + _BIAS_RIDGE * v_b

    def _conjugate_gradients(
        self,
        x: torch.Tensor,
        g_w: torch.Tensor,
        g_b: torch.Tensor,
        start: tuple[torch.Tensor, torch.Tensor] | None,
        rtol: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_w, v_b) with H v = g at the current fit, to relative residual ``rtol``."""
        if start is not None and start[0].shape == g_w.shape:
            v_w, v_b = start
            h_w, h_b = self.hessian_product(x, v_w, v_b)
            r_w, r_b = g_w - h_w, g_b - h_b
        else:
            v_w, v_b = torch.zeros_like(g_w), torch.zeros_like(g_b)
            r_w, r_b = g_w.clone(), g_b.clone()
        d_w, d_b = r_w.clone(), r_b.clone()
        rr = (r_w * r_w).sum() + (r_b * r_b).sum()
        target = rtol**2 * ((g_w * g_w).sum() + (g_b * g_b).sum())
        limit = 4 * (x.shape[0] + 1) * self.n_classes + 50  # the Krylov space is at most this
        for _ in range(limit):
            if rr <= target:
                break
            h_w, h_b = self.hessian_product(x, d_w, d_b)
            alpha = rr / ((d_w * h_w).sum() + (d_b * h_b).sum())
            v_w, v_b = v_w + alpha * d_w, v_b + alpha * d_b
            r_w, r_b = r_w - alpha * h_w, r_b - alpha * h_b
            rr_new = (r_w * r_w).sum() + (r_b * r_b).sum()
            d_w, d_b = r_w + (rr_new / rr) * d_w, r_b + (rr_new / rr) * d_b
            rr = rr_new
        return v_w, v_b

    def solve_hessian(
        self, x: torch.Tensor, g_w: torch.Tensor, g_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_w, v_b) with H v = g, started from the previous solution."""
        self._v = self._conjugate_gradients(x, g_w, g_b, self._v, self.cg_tol)
        return self._v

    def loss(
        self,
        syn: torch.Tensor,
        syn_labels: torch.Tensor,
        real: torch.Tensor,
        real_labels: torch.Tensor,
    ) -> torch.Tensor:
        """Mean cross-entropy on ``real`` [m, G] of the model fitted on ``syn`` [n, G].

        The value is the outer loss; its gradient with respect to ``syn`` is the implicit one
        (module docstring), carried by a surrogate whose value is zero.
        """
        x = syn.detach().double()
        weight, bias = self.fit(x, syn_labels)
        real64 = real.detach().double()  # no copy when the caller keeps them in float64
        p_real = (real64 @ weight.T + bias).softmax(1)
        value = F.nll_loss(p_real.clamp_min(1e-300).log(), real_labels)
        residual = p_real - F.one_hot(real_labels, self.n_classes).double()  # [m, C]
        g_w = residual.T @ real64 / len(real64)  # dL/dW [C, G]
        g_b = residual.mean(0)  # dL/db [C]
        v_w, v_b = self.solve_hessian(x, g_w, g_b)
        s = syn.double()
        p_syn = (s @ weight.T + bias).softmax(1)
        onehot = F.one_hot(syn_labels, self.n_classes).double()
        coupling = self.c * ((p_syn - onehot) * (s @ v_w.T + v_b)).sum()  # v . grad_theta J
        surrogate = -(coupling - coupling.detach())
        return (value + surrogate).to(syn.dtype)
