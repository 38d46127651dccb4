"""
gp_fit.py against scikit-learn on the same work, in one run: fit a GP to 50 synthetic runs with
L-BFGS-B restarts, then draw 10,000 joint posterior samples on a 101-point λ grid at each of 8
repetition levels and take every sample's argmax (the optimal-λ distribution of §5.2).

    python bench_gp.py [--restarts 10] [--samples 10000] [--repeat 3] [--blas_threads 1]

Both sides get the same data, kernel, bounds, first start and number of restarts; the restart
points differ (each library draws its own). scikit-learn's sample_y samples noisy observations
(its covariance includes the white noise) where gp_fit samples the noise-free function; the cost
is the same. Times are the best of --repeat rounds, the two programs taking turns.

BLAS runs on one thread by default (--blas_threads 0: the libraries' own choice). These problems
are far too small to gain from threads, and on a machine whose cores are busy, OpenBLAS threads
that spin while waiting slow both programs down several-fold, L-BFGS-B included.
"""
import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits  # installed with scikit-learn
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.preprocessing import StandardScaler

from gp_fit import BOUNDS, START, features, fit_gp, optimal_lambda, synthetic_runs


def ours(X, y, levels, grid, restarts, samples, seed):
    fit = fit_gp(X, y, nu=2.5, restarts=restarts, seed=seed)
    result = optimal_lambda(fit, levels, grid=grid, samples=samples, seed=seed)
    return fit.log_marginal_likelihood, [level["mean"] for level in result]


def sklearn(X, y, levels, grid, restarts, samples, seed):
    bounds, start = np.exp(BOUNDS), np.exp(START)
    kernel = (ConstantKernel(start[0], tuple(bounds[0]))
              * Matern(start[1:3], [tuple(bounds[1]), tuple(bounds[2])], nu=2.5)
              + WhiteKernel(start[3], tuple(bounds[3])))
    scaler = StandardScaler().fit(features(X))
    gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=restarts, random_state=seed)
    gp.fit(scaler.transform(features(X)), y)
    rng = np.random.RandomState(seed)
    means = []
    for r in levels:
        draws = gp.sample_y(scaler.transform(features(np.column_stack([np.full_like(grid, r), grid]))), samples, rng)
        means.append(grid[np.argmax(draws, axis=0)].mean())
    return gp.log_marginal_likelihood_value_, means


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--blas_threads", type=int, default=1, help="0: leave BLAS threads as the libraries set them")
    args = parser.parse_args()
    if args.blas_threads:
        threadpool_limits(limits=args.blas_threads, user_api="blas")
    runs = synthetic_runs(n=50, noise=0.3, seed=0)
    X, y = np.column_stack([runs["repetitions"], runs["lambda"]]), runs["score"]
    levels, grid = 2.0 ** np.arange(8), np.arange(101) / 100
    work = (X, y, levels, grid, args.restarts, args.samples, 0)
    times = {"gp_fit": [], "sklearn": []}
    for _ in range(args.repeat):
        for name, run in (("gp_fit", ours), ("sklearn", sklearn)):
            t0 = time.perf_counter()
            lml, means = run(*work)
            times[name].append(time.perf_counter() - t0)
            if len(times[name]) == 1:
                print(f"{name:>8}: log marginal likelihood {lml:.4f}, mean optimal λ per level "
                      + " ".join(f"{m:.3f}" for m in means))
    best = {name: min(t) for name, t in times.items()}
    print(f"50 runs, {args.restarts} restarts, {args.samples:,} samples x {len(levels)} levels x {len(grid)} λ "
          f"(best of {args.repeat}, BLAS threads: {args.blas_threads or 'default'}): "
          f"gp_fit {best['gp_fit']:.3f} s, scikit-learn {best['sklearn']:.3f} s, "
          f"scikit-learn / gp_fit = {best['sklearn'] / best['gp_fit']:.1f}x")


if __name__ == "__main__":
    main()
