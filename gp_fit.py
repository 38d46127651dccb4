"""
Which λ is best for a given amount of data repetition? The paper's §5.2 and Figure 4: a Gaussian process
fit to score(repetitions, λ) of many trained models, sampled for the probability that each λ is optimal at
each repetition level. docs/gp_fit.md has the commands, the model (scikit-learn's
GaussianProcessRegressor(normalize_y=True) to rounding error) and what fit.json holds.
"""
import csv
import json
import math
import os
import sys

if __name__ == "__main__":
    # tiny matrices: on busy cores, spinning OpenBLAS threads make the fit 2-3x slower (before numpy's import)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from scipy.linalg import LinAlgError, cho_solve, cholesky, lapack, solve_triangular
from scipy.optimize import minimize

from cli import ArgumentParser, write_atomically

NUS = (0.5, 1.5, 2.5)  # the Matérn smoothness values with a closed form
HYPERPARAMETERS = ("constant_value", "length_scale_log2_repetitions", "length_scale_lambda", "noise_level")
# theta (log-hyper-parameters) in scikit-learn's order, in its default bounds (tighter ones cut fits short)
BOUNDS = np.log([(1e-5, 1e5)] * 4)
START = np.log([1.0, 1.0, 1.0, 0.1])  # the first optimiser start; restarts are random
# scikit-learn's alpha: added to the training covariance's diagonal outside the kernel (no gradient)
ALPHA = 1e-10
# Paper §5.3: counting λ·r as the number of AR repetitions, more than ~32 overfits, fewer than ~8 underfits
RULE_OF_THUMB = (8.0, 32.0)

# -----------------------------------------------------------------------------
# the kernel and its log marginal likelihood (Rasmussen & Williams, "GPML", ch. 2, 4, 5)


def squared_differences(A, B, length_scale):
    """(2, len(A), len(B)) squared differences per input dimension, in units of the length scales."""
    return ((A.T[:, :, None] - B.T[:, None, :]) / length_scale[:, None, None]) ** 2


def matern(d, nu):
    """Matérn correlation at scaled distance d (GPML eq. 4.14 with its closed forms, eq. 4.16-4.17)."""
    if nu == 0.5:
        return np.exp(-d)
    s = math.sqrt(2 * nu) * d
    if nu == 1.5:
        return (1 + s) * np.exp(-s)
    return (1 + s + s * s / 3) * np.exp(-s)


def matern_slope(d, nu):
    """g(d) such that d matern / d log(length_scale_j) = g(d) * D_j, D_j the j-th squared difference."""
    if nu == 0.5:  # exp(-d) / d, defined as 0 on the diagonal where D_j = 0 anyway
        return np.divide(np.exp(-d), d, out=np.zeros_like(d), where=d > 0)
    if nu == 1.5:
        return 3 * np.exp(-math.sqrt(3) * d)
    s = math.sqrt(5) * d
    return 5 / 3 * (1 + s) * np.exp(-s)


def log_marginal_likelihood(theta, X, y, nu, alpha=ALPHA, gradient=False):
    """LML of normalised y at standardised X (GPML Algorithm 2.1), and with gradient=True its gradient in
    theta (GPML eq. 5.9: 0.5 tr((a a^T - K^-1) dK/dtheta), a = K^-1 y); -inf where K is not PD, as sklearn."""
    constant, length_scale, noise = np.exp(theta[0]), np.exp(theta[1:3]), np.exp(theta[3])
    D = squared_differences(X, X, length_scale)
    d = np.sqrt(D[0] + D[1])
    K_signal = constant * matern(d, nu)
    K = K_signal + (noise + alpha) * np.eye(len(X))
    try:
        L = cholesky(K, lower=True, check_finite=False)
    except LinAlgError:
        return (-np.inf, np.zeros(4)) if gradient else -np.inf
    a = cho_solve((L, True), y, check_finite=False)
    lml = -0.5 * y @ a - np.log(np.diag(L)).sum() - 0.5 * len(X) * math.log(2 * math.pi)
    if not gradient:
        return lml
    # K^-1 = L^-T L^-1 through LAPACK's triangular inverse: solving against the identity instead hands
    # this small problem to BLAS threads, which costs milliseconds per call on a busy machine
    L_inv = lapack.dtrtri(L, lower=1)[0]
    inner = np.outer(a, a) - L_inv.T @ L_inv
    grad = np.empty(4)
    grad[0] = 0.5 * np.sum(inner * K_signal)  # dK/dlog(constant) = K_signal
    grad[1:3] = 0.5 * constant * D.reshape(2, -1) @ (inner * matern_slope(d, nu)).ravel()
    grad[3] = 0.5 * noise * np.trace(inner)  # dK/dlog(noise) = noise * I
    return lml, grad


def cholesky_with_jitter(A, scale):
    """(L, jitter): the Cholesky factor of A + jitter * I, jitter 0 or the smallest of scale x 1e-15, ...,
    1 that works; scale is the prior variance, to which a posterior's rounding errors are relative."""
    for jitter in [0.0] + [scale * 10.0**k for k in range(-15, 1)]:
        try:
            return cholesky(A + jitter * np.eye(len(A)), lower=True, check_finite=False), jitter
        except LinAlgError:
            pass
    raise ValueError("covariance is not positive definite even with jitter equal to the prior variance; "
                     "the fit is degenerate, check the runs for errors")


# -----------------------------------------------------------------------------
# the fitted model


def features(X):
    """Runs (repetitions, λ) -> GP inputs (log2 repetitions, λ), before standardisation."""
    X = np.asarray(X, dtype=float).reshape(-1, 2)
    return np.column_stack([np.log2(X[:, 0]), X[:, 1]])


class GPFit:
    """A Gaussian process conditioned on runs X = [(repetitions, λ), ...] with scores y, at fixed theta."""

    def __init__(self, X, y, theta, nu=2.5):
        y = np.asarray(y, dtype=float)
        F = features(X)
        self.nu, self.alpha, self.theta = nu, ALPHA, np.asarray(theta, dtype=float)
        self.x_mean, self.x_std = F.mean(0), F.std(0)  # population std, like StandardScaler
        self.y_mean, self.y_std = y.mean(), y.std()  # like normalize_y=True
        self.X = (F - self.x_mean) / self.x_std
        self.y = (y - self.y_mean) / self.y_std
        self.constant, self.noise = np.exp(self.theta[0]), np.exp(self.theta[3])
        self.length_scale = np.exp(self.theta[1:3])
        K = self.kernel(self.X, self.X) + (self.noise + self.alpha) * np.eye(len(self.X))
        self.L, self.jitter = cholesky_with_jitter(K, self.constant)  # jitter is 0 unless theta is degenerate
        self.weights = cho_solve((self.L, True), self.y)
        self.log_marginal_likelihood = (-0.5 * self.y @ self.weights - np.log(np.diag(self.L)).sum()
                                        - 0.5 * len(self.y) * math.log(2 * math.pi))

    def standardise(self, X):
        return (features(X) - self.x_mean) / self.x_std

    def kernel(self, A, B):
        """The signal part of the kernel, constant * Matérn, between standardised inputs."""
        D = squared_differences(A, B, self.length_scale)
        d = np.sqrt(D[0] + D[1])
        return self.constant * matern(d, self.nu)

    def hyperparameters(self, standardised=False):
        """The kernel's hyper-parameters by name, in score^2, log2(r) and λ units (standardised: sklearn's)."""
        values = np.array([self.constant, *self.length_scale, self.noise])
        if not standardised:
            values *= [self.y_std**2, *self.x_std, self.y_std**2]
        return {"nu": self.nu, **{name: float(v) for name, v in zip(HYPERPARAMETERS, values)}}

    def predict(self, X, return_std=False):
        """Posterior mean score at runs X; with return_std, also a new run's sd (noise included, as sklearn)."""
        Ks = self.kernel(self.standardise(X), self.X)
        mean = self.y_mean + self.y_std * (Ks @ self.weights)
        if not return_std:
            return mean
        V = solve_triangular(self.L, Ks.T, lower=True, check_finite=False)
        var = self.constant + self.noise - np.einsum("ij,ij->j", V, V)
        return mean, self.y_std * np.sqrt(np.maximum(var, 0.0))

    def posterior(self, X):
        """Mean and covariance of the noise-free score function at runs X, in normalised units."""
        Xs = self.standardise(X)
        Ks = self.kernel(Xs, self.X)
        V = solve_triangular(self.L, Ks.T, lower=True, check_finite=False)
        return Ks @ self.weights, self.kernel(Xs, Xs) - V.T @ V

    def sample_posterior(self, X, n, rng):
        """(n joint samples of the noise-free score at runs X, (n, len(X)) in score units; the jitter its
        covariance needed). The function, not noisy runs: we want the optimum of the expected score."""
        mean, cov = self.posterior(X)
        L, jitter = cholesky_with_jitter(cov, self.constant)
        samples = rng.standard_normal((n, len(mean))) @ (self.y_std * L.T)
        samples += self.y_mean + self.y_std * mean
        return samples, jitter

    def loo_predictions(self):
        """Leave-one-out predictive means at the training runs (GPML eq. 5.12), in score units."""
        K_inv_diag = np.diag(cho_solve((self.L, True), np.eye(len(self.y)), check_finite=False))
        return self.y_mean + self.y_std * (self.y - self.weights / K_inv_diag)


def r_squared(y, prediction):
    scale = np.std(y)  # in units of the scores' spread: the squares of huge scores would overflow
    return 1.0 - np.sum(((y - prediction) / scale) ** 2) / np.sum(((y - np.mean(y)) / scale) ** 2)


def check_runs(X, y, nu):
    """One-line ValueError for input the fit cannot use."""
    if nu not in NUS:
        raise ValueError(f"nu must be one of 0.5, 1.5, 2.5 (the Matérn kernels with a closed form), got {nu}")
    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    if X.ndim != 2 or X.shape[1] != 2 or y.shape != (len(X),):
        raise ValueError(f"expected X of shape (n, 2) holding (repetitions, λ) and y of shape (n,), "
                         f"got {X.shape} and {y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("runs contain NaN or infinite values; fix or remove those runs")
    for i, (r, lam) in enumerate(X):
        if r <= 0:  # train.py's repetitions=0 means "all data, no subset": say how many passes that was
            raise ValueError(f"repetitions must be positive, got {r:g} (run {i + 1}, λ={lam:g}); give that run its "
                             "number of passes over its unique data (e.g. 1 for a single pass)")
        if not 0 <= lam <= 1:
            raise ValueError(f"λ must lie in [0, 1], got {lam:g} (run {i + 1}, repetitions={r:g}); fix that run")
    if len(X) < len(HYPERPARAMETERS):
        raise ValueError(f"{len(X)} runs are fewer than the {len(HYPERPARAMETERS)} hyper-parameters; train more models")
    if np.ptp(X[:, 1]) == 0:
        raise ValueError(f"single λ value ({X[0, 1]:g}): the fit needs runs at two or more λ values")
    if np.ptp(X[:, 0]) == 0:
        raise ValueError(f"single repetitions value ({X[0, 0]:g}): the fit needs runs at two or more repetition levels")
    if np.ptp(y) == 0:
        raise ValueError(f"all {len(y)} scores equal {y[0]:g}: nothing to interpolate; check the score column")
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        variance = np.var(y)
    if not 0 < variance < math.inf:  # standardising divides by the spread, and the kernel reports score^2
        raise ValueError(f"scores from {y.min():g} to {y.max():g} cannot be standardised in float64 (their variance "
                         f"{'underflows to 0' if variance == 0 else 'overflows'}); rescale the score column to "
                         "moderate units")
    return X, y


def fit_gp(X, y, nu=2.5, restarts=10, seed=0):
    """Fit the GP by maximising the LML with L-BFGS-B from START and `restarts` random starts in BOUNDS."""
    X, y = check_runs(X, y, nu)
    rng = np.random.default_rng(seed)
    starts = [START] + [rng.uniform(BOUNDS[:, 0], BOUNDS[:, 1]) for _ in range(restarts)]
    data = GPFit(X, y, START, nu)  # only for its standardised inputs and normalised outputs

    def negative_lml(theta):
        lml, grad = log_marginal_likelihood(theta, data.X, data.y, nu, gradient=True)
        return -lml, -grad

    optima = [minimize(negative_lml, start, jac=True, method="L-BFGS-B", bounds=BOUNDS) for start in starts]
    return GPFit(X, y, min(optima, key=lambda o: o.fun).x, nu)


# -----------------------------------------------------------------------------
# the optimal λ per repetition level (§5.2, "The optimal autoregressive-diffusion ratios")


def optimal_lambda(fit, repetitions, grid=None, samples=10000, seed=0, lower_is_better=False):
    """For each repetition level r, the distribution of the best λ on the grid (argmax, or argmin with
    lower_is_better) over `samples` joint posterior samples: fit.json's optimal_lambda (docs/gp_fit.md)."""
    grid = np.arange(101) / 100 if grid is None else np.asarray(grid, dtype=float)
    best_of = np.argmin if lower_is_better else np.argmax
    bad = sorted({float(r) for r in repetitions if not 0 < r < math.inf})
    if bad:
        raise ValueError(f"repetition levels must be positive finite numbers, got {', '.join(map(str, bad))}; "
                         f"check --at")
    levels = []
    for r in sorted(set(float(r) for r in repetitions)):
        X = np.column_stack([np.full_like(grid, r), grid])
        # the same normal draws at every level, so a level's result depends on the seed and r only,
        # not on which other levels were asked for
        scores, jitter = fit.sample_posterior(X, samples, np.random.default_rng(seed))
        if not np.isfinite(scores).all():  # an argmax over NaN would quietly pick λ = 0
            raise ValueError(f"posterior samples at repetitions {r:g} are not finite numbers; "
                             f"{rescale_hint(fit)}")
        index = best_of(scores, axis=1)
        best = grid[index]
        probability = np.bincount(index, minlength=len(grid)) / samples
        low, high = RULE_OF_THUMB[0] / r, min(RULE_OF_THUMB[1] / r, 1.0)
        in_band = probability[(grid >= low - 1e-12) & (grid <= high + 1e-12)].sum() if low <= 1 else 0.0
        levels.append({
            "repetitions": r,
            "lambda_grid": grid.tolist(),
            "probability": probability.tolist(),
            "mean": float(best.mean()),
            "argmax_of_mean": float(grid[best_of(fit.predict(X))]),
            "interval": np.quantile(best, [0.05, 0.95], method="inverted_cdf").tolist(),
            "rule_of_thumb": {"band": [low, high] if low <= 1 else None, "probability": float(in_band)},
            "jitter": jitter,
        })
    return levels


# -----------------------------------------------------------------------------
# reading runs: CSV tables and eval.py result files


def parse_number(value, column, where):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {column} is {value!r}, not a number; fix or remove that run") from None
    if not math.isfinite(number):
        raise ValueError(f"{where}: {column} is {value!r}; every value must be a finite number")
    return number


def parse_flag(value, where):
    text = ("" if value is None else str(value)).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):  # an empty cell means "not overfitted"
        return False
    raise ValueError(f"{where}: overfit is {value!r}; use true/false, 1/0 or yes/no")


def read_csv(path, score):
    """Rows (repetitions, λ, score, overfit) of one CSV table with a header line."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets often start with a BOM
        try:
            reader = csv.DictReader(f)
            header = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = header
            missing = [name for name in ("repetitions", "lambda", score) if name not in header]
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'}); "
                                 "the table needs repetitions, lambda and a score column (pick it with --score)")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                rows.append((parse_number(row["repetitions"], "repetitions", where),
                             parse_number(row["lambda"], "lambda", where),
                             parse_number(row[score], score, where),
                             parse_flag(row.get("overfit"), where)))
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text; give a CSV table") from None
    return rows


def read_result(path, score):
    """One run of an eval.py result file: {"run": {"lam", "repetitions", ...}, "average": {mode: score}}."""
    with open(path, encoding="utf-8") as f:
        try:
            result = json.load(f)
        except ValueError as e:  # UnicodeDecodeError included
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    run, average = (result.get("run"), result.get("average")) if isinstance(result, dict) else (None, None)
    if not isinstance(run, dict) or run.get("lam") is None or run.get("repetitions") is None:
        raise ValueError(f"{path}: no \"run\" with \"lam\" and \"repetitions\" (an eval.py result file of a "
                         "checkpoint that records them); put such runs in a CSV instead")
    if not isinstance(average, dict) or score not in average:
        have = ", ".join(average) if isinstance(average, dict) else "none"
        raise ValueError(f"{path}: no average score {score!r} (have: {have}); pick one with --score")
    repetitions = parse_number(run["repetitions"], "repetitions", path)
    if repetitions == 0:
        raise ValueError(f"{path}: the run trained with repetitions=0 (all data, no repeated subset), so its number "
                         "of passes is not recorded; put it in a CSV with its repetitions")
    # eval.py cannot tell whether a run overfitted: mark such runs in a CSV
    return [(repetitions, parse_number(run["lam"], "lam", path), parse_number(average[score], score, path), False)]


def read_runs(csv_paths=(), results_paths=(), score=None):
    """All runs of CSV tables and eval.py result files, as a dict of arrays (repetitions, lambda, score,
    overfit). The score column defaults to `score` for CSV files and `causal` for result files."""
    # a single path is a common slip from Python: read it rather than its characters
    csv_paths = [csv_paths] if isinstance(csv_paths, (str, os.PathLike)) else csv_paths
    results_paths = [results_paths] if isinstance(results_paths, (str, os.PathLike)) else results_paths
    rows = []
    for path in csv_paths:
        rows += read_csv(path, score or "score")
    for path in results_paths:
        rows += read_result(path, score or "causal")
    if not rows:
        raise ValueError("no runs to fit: give CSV files with rows, --results files, or --synthetic")
    r, lam, s, overfit = map(np.array, zip(*rows))
    return {"repetitions": r, "lambda": lam, "score": s, "overfit": overfit.astype(bool)}


def synthetic_optimum(repetitions):
    """The synthetic sweep's optimal λ: near 1 at little repetition, λ·r = 8 at r=16, about 14 at r=128."""
    return 1.0 / (1.0 + np.asarray(repetitions) / 16.0)


def synthetic_runs(n=50, noise=0.3, seed=0):
    """A made-up sweep with a known answer: n runs cycling through r = 1, 2, ..., 128 at uniformly
    random λ; the score falls with log2(r) and quadratically away from synthetic_optimum(r), more
    steeply the more repetition. Runs with λ·r > 32 are marked overfitted."""
    rng = np.random.default_rng(seed)
    r = 2.0 ** (np.arange(n) % 8)
    lam = rng.uniform(0.0, 1.0, n)
    score = 27 - 0.8 * np.log2(r) - (8 + 2 * np.log2(r)) * (lam - synthetic_optimum(r)) ** 2
    return {"repetitions": r, "lambda": lam, "score": score + noise * rng.standard_normal(n), "overfit": lam * r > 32}


# -----------------------------------------------------------------------------
# the analysis: fit.json, a printed summary, the figure


def analyse(runs, out_dir, nu=2.5, samples=10000, seed=0, restarts=10, at=(), grid_size=101, figure=None,
            lower_is_better=False, score_name="score"):
    """Fit, summarise and plot runs (as read_runs returns them); writes OUT_DIR/fit.json and the figure
    and returns what fit.json holds. lower_is_better: the score is a loss, the optimal λ minimises it."""
    if samples < 1 or grid_size < 2 or restarts < 0:
        raise ValueError(f"need samples >= 1, grid >= 2 and restarts >= 0, got {samples}, {grid_size}, {restarts}")
    runs = {"overfit": np.zeros(len(runs["score"]), dtype=bool), **{k: np.asarray(v) for k, v in runs.items()}}
    X = np.column_stack([runs["repetitions"], runs["lambda"]])
    y = np.asarray(runs["score"], dtype=float)
    fit = fit_gp(X, y, nu=nu, restarts=restarts, seed=seed)
    # a hyper-parameter stuck at a bound deserves a look (e.g. noise at 1e-6: the fit interpolates)
    at_bound = [name for name, t, (low, high) in zip(HYPERPARAMETERS, fit.theta, BOUNDS)
                if min(t - low, high - t) < 1e-3]
    grid = np.arange(grid_size) / (grid_size - 1)
    levels = optimal_lambda(fit, list(runs["repetitions"]) + list(at), grid, samples, seed, lower_is_better)
    result = {
        "n_runs": len(y), "lower_is_better": lower_is_better,
        "kernel": fit.hyperparameters(), "kernel_standardised": fit.hyperparameters(standardised=True),
        "standardisation": {"log2_repetitions_mean": fit.x_mean[0], "log2_repetitions_std": fit.x_std[0],
                            "lambda_mean": fit.x_mean[1], "lambda_std": fit.x_std[1],
                            "score_mean": fit.y_mean, "score_std": fit.y_std},
        "at_bound": at_bound, "alpha": fit.alpha, "jitter": fit.jitter,
        "log_marginal_likelihood": fit.log_marginal_likelihood,
        "r2": r_squared(y, fit.predict(X)), "r2_loo": r_squared(y, fit.loo_predictions()),
        "restarts": restarts, "samples": samples, "seed": seed, "optimal_lambda": levels,
    }
    result = json.loads(json.dumps(result, default=float))  # numpy scalars -> plain floats
    bad = first_non_finite(result)
    if bad:  # never written: Infinity and NaN are not JSON, and they would be garbage anyway
        raise ValueError(f"the fit is not finite ({bad}); {rescale_hint(fit)}")
    os.makedirs(out_dir, exist_ok=True)
    write_atomically("--out_dir", os.path.join(out_dir, "fit.json"),
                     lambda f: json.dump(result, f, indent=1, allow_nan=False))
    print_summary(result)
    plot_figure(fit, runs, levels, figure or os.path.join(out_dir, "gp_fit.png"), lower_is_better, score_name)
    return result


def rescale_hint(fit):
    return (f"nothing was written. The scores (mean {fit.y_mean:g}, standard deviation {fit.y_std:g}) may be too "
            "extreme for float64 once squared: rescale the score column to moderate units")


def first_non_finite(value, name=""):
    """'name = value' of the first NaN or infinite number in nested dicts and lists, or None."""
    if isinstance(value, dict):
        return next(filter(None, (first_non_finite(v, f"{name}.{k}" if name else k) for k, v in value.items())), None)
    if isinstance(value, list):
        return next(filter(None, (first_non_finite(v, f"{name}[{i}]") for i, v in enumerate(value))), None)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} = {value}"
    return None


def print_summary(result):
    k = result["kernel"]
    print(f"{result['n_runs']} runs, Matérn nu={k['nu']}: "
          f"log marginal likelihood {result['log_marginal_likelihood']:.3f}, "
          f"R2 {result['r2']:.4f}, leave-one-out R2 {result['r2_loo']:.4f}")
    print(f"kernel: constant {k['constant_value']:.4g} score^2, length scales {k['length_scale_log2_repetitions']:.3g} "
          f"log2(r) and {k['length_scale_lambda']:.3g} λ, noise {k['noise_level']:.3g} score^2")
    jitter = max([result["jitter"]] + [level["jitter"] for level in result["optimal_lambda"]])
    if jitter:
        print(f"note: a covariance needed jitter {jitter:.2g} on its diagonal to factorise (see fit.json)")
    if result["at_bound"]:
        print(f"note: {', '.join(result['at_bound'])} at the bound of its range (gp_fit.BOUNDS); check the data")
    print(f"{'repetitions':>11} {'E[best λ]':>9} {'90% interval':>13} {'best of mean':>12} {'λ·r':>6} "
          f"{'λ·r in [8,32]':>14} {'P(in band)':>10}")
    for level in result["optimal_lambda"]:
        band = level["rule_of_thumb"]["band"]
        band = f"{band[0]:.3f}-{band[1]:.3f}" if band else "empty"
        low, high = level["interval"]
        print(f"{level['repetitions']:>11g} {level['mean']:>9.3f} {low:>6.2f}-{high:<6.2f} "
              f"{level['argmax_of_mean']:>12.2f} {level['mean'] * level['repetitions']:>6.1f} {band:>14} "
              f"{level['rule_of_thumb']['probability']:>10.3f}")


def plot_figure(fit, runs, levels, path, lower_is_better=False, score_name="score"):
    """The paper's Figure 4: the posterior mean score over (log2 r, λ) with the runs, and under it the
    distribution of the optimal λ at each r; both with the rule of thumb 8 <= λ·r <= 32 (§5.3)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import patheffects
    except ImportError:
        print(f"matplotlib is not installed: no figure (fit.json is written); pip install matplotlib for {path}")
        return
    log_r = np.log2([level["repetitions"] for level in levels])
    x = np.linspace(log_r.min() - 0.5, log_r.max() + 0.5, 120)
    lam = np.linspace(0, 1, 101)
    xx, ll = np.meshgrid(x, lam)
    mean = fit.predict(np.column_stack([2.0 ** xx.ravel(), ll.ravel()])).reshape(xx.shape)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 8), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    fig.subplots_adjust(left=0.1, right=0.86, top=0.89, bottom=0.07, hspace=0.15)
    image = top.pcolormesh(x, lam, mean, cmap="viridis", shading="auto")
    fig.colorbar(image, cax=top.inset_axes([1.02, 0, 0.03, 1]),
                 label=f"posterior mean {score_name} ({'lower' if lower_is_better else 'higher'} is better)")
    best_of = np.argmin if lower_is_better else np.argmax
    outline = [patheffects.withStroke(linewidth=3, foreground="white")]  # visible on dark and light cells
    top.plot(x, lam[best_of(mean, axis=0)], color="black", lw=1.5, path_effects=outline, label="best λ of the mean")
    overfit = np.asarray(runs["overfit"], dtype=bool)
    run_x = np.log2(runs["repetitions"])
    # clip_on=False: runs at λ = 0 and λ = 1 sit on the frame and would otherwise be cut in half
    top.scatter(run_x[~overfit], runs["lambda"][~overfit], s=22, c="white", edgecolors="black", label="run",
                clip_on=False, zorder=3)
    top.scatter(run_x[overfit], runs["lambda"][overfit], s=40, c="red", marker="X", edgecolors="black",
                label="overfitted run", clip_on=False, zorder=3)
    band = [np.minimum(product / 2.0**x, 1.0) for product in RULE_OF_THUMB]  # the rule of thumb: 8 <= λ·r <= 32
    bottom.fill_between(x, *band, color="0.88", lw=0)
    for ax, color in ((top, "white"), (bottom, "gray")):
        for product, curve, style in zip(RULE_OF_THUMB, band, ("--", ":")):
            ax.plot(x, curve, style, color=color, lw=1.5, label=f"λ·r = {product:g}")
        ax.set_ylim(0, 1)
        ax.set_ylabel("λ (share of autoregressive training)")
    # the legend above the map, not on it, where it would hide runs; dark, for the white curves
    top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.02), ncol=3, fontsize=8, facecolor="0.35",
               labelcolor="white", framealpha=1)
    fig.suptitle(f"Gaussian-process interpolation of {score_name}", y=0.985)

    for xr, level in zip(log_r, levels):  # one violin per level: P(λ is optimal), scaled to its own peak
        p = np.asarray(level["probability"])
        width = 0.42 * p / p.max()
        bottom.fill_betweenx(level["lambda_grid"], xr - width, xr + width, color="tab:blue", alpha=0.6, lw=0)
        bottom.plot([xr, xr], level["interval"], color="black", lw=1)
        bottom.plot(xr, level["mean"], "o", color="white", markeredgecolor="black", ms=4)
    bottom.set_title("optimal λ (dot: mean, bar: 90% interval; shaded: 8 ≤ λ·r ≤ 32)", fontsize=10)
    bottom.set_xlim(x[0], x[-1])
    ticks = np.arange(math.ceil(x[0]), math.floor(x[-1]) + 1)
    bottom.set_xticks(ticks, [f"{2.0 ** t:g}" for t in ticks])
    bottom.set_xlabel("data repetitions r (log scale)")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    image_format = os.path.splitext(path)[1][1:] or "png"  # from the extension, as savefig(path) chooses it
    try:
        # f.buffer: the binary file under the text one
        write_atomically("--figure", path, lambda f: fig.savefig(f.buffer, dpi=90, format=image_format))
    finally:
        plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    parser = ArgumentParser(allow_abbrev=False,
                            description="Gaussian-process analysis of a λ x repetitions sweep (§5.2, Figure 4)")
    parser.add_argument("csv", nargs="*", help="CSV files: columns repetitions, lambda, score [, overfit]; a row per model")
    parser.add_argument("--results", nargs="+", default=[], metavar="FILE", help="eval.py result JSON files")
    parser.add_argument("--score", default=None, help="score column (default: score for CSV, causal for --results)")
    parser.add_argument("--lower_is_better", action="store_true",
                        help="the score is a loss: the optimal λ minimises it")
    parser.add_argument("--synthetic", action="store_true",
                        help="fit a made-up 50-run sweep with a known optimum instead (made from --seed)")
    parser.add_argument("--out_dir", default="out-gp", help="where fit.json and the figure go")
    parser.add_argument("--figure", default=None, help="figure path (default: OUT_DIR/gp_fit.png)")
    parser.add_argument("--nu", type=float, default=2.5, help="Matérn smoothness: 0.5, 1.5 or 2.5")
    parser.add_argument("--samples", type=int, default=10000, help="posterior samples per repetition level")
    parser.add_argument("--seed", type=int, default=0, help="seeds the optimiser restarts and the samples")
    parser.add_argument("--restarts", type=int, default=10, help="extra L-BFGS-B starts, log-uniform within the bounds")
    parser.add_argument("--at", type=float, nargs="+", default=[], metavar="R",
                        help="extra repetition levels to report")
    parser.add_argument("--grid", type=int, default=101, help="number of λ grid points in [0, 1]")
    args = parser.parse_args(argv)
    if args.synthetic:
        if args.csv or args.results:
            raise ValueError("--synthetic replaces the input files; give one or the other")
        runs = synthetic_runs(seed=args.seed)
        os.makedirs(args.out_dir, exist_ok=True)
        columns = ("repetitions", "lambda", "score", "overfit")
        rows = [columns, *zip(*(runs[c] for c in columns))]  # the sweep as a table, to refit it from one
        write_atomically("--out_dir", os.path.join(args.out_dir, "synthetic_runs.csv"),
                         lambda f: csv.writer(f, lineterminator="\n").writerows(rows))
    else:
        runs = read_runs(args.csv, args.results, args.score)
    analyse(runs, args.out_dir, nu=args.nu, samples=args.samples, seed=args.seed, restarts=args.restarts,
            at=args.at, grid_size=args.grid, figure=args.figure, lower_is_better=args.lower_is_better,
            score_name=args.score or "score")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:
        sys.exit(f"gp_fit.py: error: {e}")
