"""
Tests for gp_fit.py. References: scikit-learn's GaussianProcessRegressor (test-only) for the
likelihood, its gradient, the optimiser and the posterior; finite differences for the gradient;
brute-force loops for leave-one-out and for the optimal-λ distribution; a synthetic sweep with a
known optimum; and the CLI run as a subprocess for its outputs and one-line errors.
"""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gp_fit
from gp_fit import (ALPHA, BOUNDS, START, GPFit, analyse, cholesky_with_jitter, features, fit_gp,
                    log_marginal_likelihood, optimal_lambda, r_squared, read_runs, synthetic_optimum, synthetic_runs)

REPO = Path(__file__).resolve().parents[1]
# The matrices here are tiny, so BLAS threads only add overhead; on a machine whose cores are busy,
# idle OpenBLAS threads spinning make L-BFGS-B several times slower. One thread, here and in the CLI.
ONE_THREAD = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        threadpool_limits = None
    with threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext():
        yield


def sweep(n=30, noise=0.3, seed=1):
    runs = synthetic_runs(n=n, noise=noise, seed=seed)
    return np.column_stack([runs["repetitions"], runs["lambda"]]), runs["score"]


def sklearn_gpr(theta, nu, optimizer=None):
    """scikit-learn's GPR with our kernel at exp(theta), our bounds, normalize_y=True and its default
    alpha=1e-10 (which gp_fit.ALPHA copies)."""
    gp = pytest.importorskip("sklearn.gaussian_process")
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    b = np.exp(BOUNDS)
    value = np.exp(theta)
    kernel = (ConstantKernel(value[0], tuple(b[0])) * Matern(value[1:3], [tuple(b[1]), tuple(b[2])], nu=nu)
              + WhiteKernel(value[3], tuple(b[3])))
    return gp.GaussianProcessRegressor(kernel, normalize_y=True, optimizer=optimizer)


# -----------------------------------------------------------------------------
# the likelihood and the fit against scikit-learn


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_lml_and_gradient_match_sklearn(nu):
    X, y = sweep()
    data = GPFit(X, y, START, nu)
    rng = np.random.default_rng(0)
    for theta in [START] + [rng.uniform(BOUNDS[:, 0], BOUNDS[:, 1] - 2) for _ in range(3)]:
        reference = sklearn_gpr(theta, nu).fit(data.X, y)
        assert reference.alpha == ALPHA  # the diagonal nugget both programs add
        ref_lml, ref_grad = reference.log_marginal_likelihood(theta, eval_gradient=True)
        lml, grad = log_marginal_likelihood(theta, data.X, data.y, nu, gradient=True)
        assert lml == pytest.approx(ref_lml, rel=1e-8)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-7, atol=1e-8 * np.abs(ref_grad).max())
        assert GPFit(X, y, theta, nu).log_marginal_likelihood == pytest.approx(ref_lml, rel=1e-8)


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_gradient_matches_finite_differences(nu):
    X, y = sweep()
    data = GPFit(X, y, START, nu)
    theta = np.log([2.0, 0.7, 1.3, 0.05])
    _, grad = log_marginal_likelihood(theta, data.X, data.y, nu, gradient=True)
    h = 1e-6
    numeric = [(log_marginal_likelihood(theta + h * e, data.X, data.y, nu)
                - log_marginal_likelihood(theta - h * e, data.X, data.y, nu)) / (2 * h) for e in np.eye(4)]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


def test_lml_is_minus_infinity_when_covariance_is_not_positive_definite():
    X, y = sweep()
    data = GPFit(X, y, START, 2.5)
    lml, grad = log_marginal_likelihood(START, data.X, data.y, 2.5, alpha=-10.0, gradient=True)
    assert lml == -np.inf and not grad.any()


@pytest.mark.filterwarnings("ignore:The optimal value found")  # ν=0.5 puts the noise at its bound, on both sides
@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_optimised_lml_matches_sklearn_from_the_same_start(nu):
    X, y = sweep(n=40)
    fit = fit_gp(X, y, nu=nu, restarts=0)
    reference = sklearn_gpr(START, nu, optimizer="fmin_l_bfgs_b").fit(fit.X, y)
    assert fit.log_marginal_likelihood == pytest.approx(reference.log_marginal_likelihood_value_, rel=1e-4)
    np.testing.assert_allclose(fit.theta, reference.kernel_.theta, atol=0.05)


def test_bounds_are_sklearns_defaults_and_a_smooth_sweep_reaches_its_optimum():
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
    defaults = [ConstantKernel().constant_value_bounds, Matern().length_scale_bounds, Matern().length_scale_bounds,
                WhiteKernel().noise_level_bounds]
    np.testing.assert_allclose(np.exp(BOUNDS), defaults)
    # a smooth sweep wants a large amplitude: tighter bounds (1e3) stopped short of scikit-learn's optimum
    runs = synthetic_runs(n=50, noise=0.02, seed=0)
    X, y = np.column_stack([runs["repetitions"], runs["lambda"]]), runs["score"]
    fit = fit_gp(X, y, restarts=10)
    reference = sklearn_gpr(START, 2.5, optimizer="fmin_l_bfgs_b")
    reference.n_restarts_optimizer = 10
    reference.random_state = 0
    reference.fit(fit.X, y)
    assert fit.log_marginal_likelihood >= reference.log_marginal_likelihood_value_ - 1e-3


def test_restarts_never_do_worse_and_are_deterministic():
    X, y = sweep()
    single = fit_gp(X, y, restarts=0)
    a, b = fit_gp(X, y, restarts=4, seed=3), fit_gp(X, y, restarts=4, seed=3)
    assert a.log_marginal_likelihood >= single.log_marginal_likelihood - 1e-9
    np.testing.assert_array_equal(a.theta, b.theta)


def test_predictions_and_posterior_match_sklearn():
    X, y = sweep()
    fit = fit_gp(X, y, restarts=2)
    reference = sklearn_gpr(fit.theta, 2.5).fit(fit.X, y)
    rng = np.random.default_rng(1)
    X_new = np.column_stack([2.0 ** rng.uniform(-1, 8, 25), rng.uniform(0, 1, 25)])
    mean, std = fit.predict(X_new, return_std=True)
    ref_mean, ref_std = reference.predict(fit.standardise(X_new), return_std=True)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-9)
    np.testing.assert_allclose(std, ref_std, rtol=1e-7)
    # the sampled function is noise-free: scikit-learn's covariance minus the white noise
    f_mean, f_cov = fit.posterior(X_new)
    _, ref_cov = reference.predict(fit.standardise(X_new), return_cov=True)
    ref_cov -= fit.noise * fit.y_std**2 * np.eye(len(X_new))
    np.testing.assert_allclose(fit.y_mean + fit.y_std * f_mean, ref_mean, rtol=1e-9)
    np.testing.assert_allclose(fit.y_std**2 * f_cov, ref_cov, atol=1e-9 * np.abs(ref_cov).max())
    # hyper-parameters by name: standardised as scikit-learn reports them, original units rescaled
    assert list(fit.hyperparameters(standardised=True).values())[1:] == pytest.approx(np.exp(reference.kernel_.theta))
    original = fit.hyperparameters()
    assert original["length_scale_lambda"] == pytest.approx(np.exp(fit.theta[2]) * np.std(X[:, 1]))
    assert original["noise_level"] == pytest.approx(np.exp(fit.theta[3]) * np.var(y))


def test_kernel_in_original_units_reproduces_the_fit_on_raw_inputs():
    """fit.json's kernel claims to be in original units: scikit-learn with exactly those values on
    the raw inputs (log2 r, λ) and centred raw scores must predict what the standardised fit does."""
    gp = pytest.importorskip("sklearn.gaussian_process")
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
    X, y = sweep()
    fit = fit_gp(X, y, restarts=1)
    k = fit.hyperparameters()
    kernel = (ConstantKernel(k["constant_value"], "fixed")
              * Matern([k["length_scale_log2_repetitions"], k["length_scale_lambda"]], "fixed", nu=k["nu"])
              + WhiteKernel(k["noise_level"], "fixed"))
    # the nugget is added in normalised units, so in score units it is alpha * std(y)^2
    raw = gp.GaussianProcessRegressor(kernel, alpha=ALPHA * np.var(y), optimizer=None).fit(features(X), y - y.mean())
    X_new = np.column_stack([2.0 ** np.linspace(-1, 8, 15), np.linspace(0, 1, 15)])
    mean, std = fit.predict(X_new, return_std=True)
    ref_mean, ref_std = raw.predict(features(X_new), return_std=True)
    np.testing.assert_allclose(mean, y.mean() + ref_mean, rtol=1e-8)
    np.testing.assert_allclose(std, ref_std, rtol=1e-6)
    # the reported LML is that of the normalised scores: the raw one differs by the Jacobian n log std(y)
    assert raw.log_marginal_likelihood_value_ == pytest.approx(
        fit.log_marginal_likelihood - len(y) * np.log(np.std(y)), rel=1e-8)


def test_r_squared_and_closed_form_leave_one_out():
    sk_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(size=20)
    assert r_squared(a, b) == pytest.approx(sk_metrics.r2_score(a, b))
    X, y = sweep()
    fit = fit_gp(X, y, restarts=1)
    brute = []  # drop each run, condition on the others with the same hyper-parameters, predict it
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        K = fit.kernel(fit.X[keep], fit.X[keep]) + (fit.noise + fit.alpha) * np.eye(keep.sum())
        k = fit.kernel(fit.X[i:i + 1], fit.X[keep])[0]
        brute.append(fit.y_mean + fit.y_std * k @ np.linalg.solve(K, fit.y[keep]))
    np.testing.assert_allclose(fit.loo_predictions(), brute, rtol=1e-8)


def test_cholesky_with_jitter():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(5, 5))
    A = A @ A.T + np.eye(5)
    L, jitter = cholesky_with_jitter(A, 1.0)
    assert jitter == 0.0
    np.testing.assert_allclose(L @ L.T, A)
    v = rng.normal(size=6)
    singular = np.outer(v, v)  # rank one: needs jitter
    L, jitter = cholesky_with_jitter(singular, 1.0)
    assert jitter > 0
    np.testing.assert_allclose(L @ L.T, singular + jitter * np.eye(6), atol=1e-12)
    # an eigenvalue of -2e-9 (rounding, relative to a prior variance of 10) beside posterior variances of 1e-6:
    # the jitter is relative to the prior and grows until the factorisation works
    Q = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    posterior = Q @ np.diag([-2e-9, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6]) @ Q.T
    L, jitter = cholesky_with_jitter(posterior, 10.0)
    assert jitter == pytest.approx(10.0 * 1e-9)
    with pytest.raises(ValueError, match="not positive definite even with jitter equal to the prior variance"):
        cholesky_with_jitter(-np.eye(3), 1.0)


def test_sample_posterior_has_the_posterior_mean_and_covariance():
    X, y = sweep()
    fit = fit_gp(X, y, restarts=1)
    X_new = np.column_stack([np.full(5, 8.0), np.linspace(0, 1, 5)])
    samples, jitter = fit.sample_posterior(X_new, 40000, np.random.default_rng(0))
    mean, cov = fit.posterior(X_new)
    mean, cov = fit.y_mean + fit.y_std * mean, fit.y_std**2 * cov
    sd = np.sqrt(np.diag(cov))
    assert jitter == 0.0
    assert samples.shape == (40000, 5)
    assert np.all(np.abs(samples.mean(0) - mean) < 5 * sd / np.sqrt(40000))
    np.testing.assert_allclose(np.cov(samples.T), cov, atol=0.03 * sd.max() ** 2)


# -----------------------------------------------------------------------------
# the optimal λ


def test_optimal_lambda_summaries_against_brute_force_sampling():
    X, y = sweep(n=40)
    fit = fit_gp(X, y, restarts=1)
    grid = np.linspace(0, 1, 21)
    levels = optimal_lambda(fit, [4, 16, 16, 2], grid=grid, samples=20000, seed=0)
    assert [level["repetitions"] for level in levels] == [2, 4, 16]
    for level in levels:
        r, p = level["repetitions"], np.array(level["probability"])
        # reference: numpy's multivariate_normal on the noise-free posterior, one argmax per sample
        mean, cov = fit.posterior(np.column_stack([np.full_like(grid, r), grid]))
        draws = np.random.default_rng(1).multivariate_normal(mean, cov, 20000)
        reference = np.bincount(np.argmax(draws, axis=1), minlength=len(grid)) / len(draws)
        assert 0.5 * np.abs(p - reference).sum() < 0.03
        assert p.sum() == pytest.approx(1.0)
        assert level["mean"] == pytest.approx(p @ grid)
        cdf = np.cumsum(p)
        assert level["interval"] == [grid[np.argmax(cdf >= 0.05 - 1e-12)], grid[np.argmax(cdf >= 0.95 - 1e-12)]]
        assert level["argmax_of_mean"] == grid[np.argmax(mean)]
    # rule of thumb λ·r in [8, 32]: empty at r=2 and 4, [0.5, 1] at r=16
    assert levels[0]["rule_of_thumb"] == {"band": None, "probability": 0.0}
    assert levels[2]["rule_of_thumb"]["band"] == [0.5, 1.0]
    assert levels[2]["rule_of_thumb"]["probability"] == pytest.approx(np.array(levels[2]["probability"])[10:].sum())


def test_lower_is_better_is_the_optimum_of_the_negated_score():
    X, y = sweep()
    fit, negated = fit_gp(X, y, restarts=1), fit_gp(X, -y, restarts=1)
    np.testing.assert_allclose(negated.theta, fit.theta, atol=1e-4)  # the fit does not care about the sign
    kwargs = dict(grid=np.linspace(0, 1, 21), samples=20000, seed=0)
    a, b = optimal_lambda(fit, [2, 32], **kwargs), optimal_lambda(negated, [2, 32], lower_is_better=True, **kwargs)
    for level, loss_level in zip(a, b):
        assert 0.5 * np.abs(np.subtract(level["probability"], loss_level["probability"])).sum() < 0.02
        assert loss_level["argmax_of_mean"] == level["argmax_of_mean"]
    assert a[0]["argmax_of_mean"] != a[1]["argmax_of_mean"]  # so that a sign slip would show


def test_synthetic_optimum_is_recovered_and_concentrates_as_noise_falls():
    widths = []
    for noise in (1.0, 0.3, 0.05):
        X, y = sweep(n=80, noise=noise, seed=2)
        levels = optimal_lambda(fit_gp(X, y, restarts=2), 2.0 ** np.arange(8), samples=3000, seed=0)
        widths.append(np.mean([level["interval"][1] - level["interval"][0] for level in levels]))
        if noise == 0.05:
            for level in levels:
                truth = synthetic_optimum(level["repetitions"])
                assert level["mean"] == pytest.approx(truth, abs=0.03)
                assert level["argmax_of_mean"] == pytest.approx(truth, abs=0.03)
                assert level["interval"][0] - 0.02 <= truth <= level["interval"][1] + 0.02
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.1


# -----------------------------------------------------------------------------
# reading runs, the analysis, the CLI


def write(path, text):
    path.write_text(text)
    return str(path)


def result_file(path, lam, r, **extra):
    scores = {"causal": 20 + lam, "prefix": 21 + lam, "pll": 18 - lam, "mc": 17.0}
    return write(path, json.dumps({"run": {"lam": lam, "repetitions": r, "seed": 0}, "average": scores,
                                   "tasks": {"arc_easy": {}}, **extra}))


def test_read_runs_concatenates_csv_and_result_files(tmp_path):
    a = write(tmp_path / "a.csv", " repetitions , lambda,score,pll,overfit\n1,0.5,20.5,18,false\n4,0.25,19,17.5,YES\n")
    b = write(tmp_path / "b.csv", "lambda,repetitions,score,pll\n1.0,32,15,10\n")
    j = [result_file(tmp_path / "r1.json", 0.75, 8), result_file(tmp_path / "r2.json", 0.5, 2)]
    runs = read_runs([a, b], j)
    np.testing.assert_array_equal(runs["repetitions"], [1, 4, 32, 8, 2])
    np.testing.assert_array_equal(runs["lambda"], [0.5, 0.25, 1.0, 0.75, 0.5])
    np.testing.assert_array_equal(runs["score"], [20.5, 19, 15, 20.75, 20.5])  # csv: score, json: causal
    np.testing.assert_array_equal(runs["overfit"], [False, True, False, False, False])
    np.testing.assert_array_equal(read_runs([a, b], j, score="pll")["score"], [18, 17.5, 10, 17.25, 17.5])


def test_reads_the_result_file_eval_py_writes(tmp_path, tiny_checkpoint, shared_data, one_thread):
    """The contract with eval.py, on its real output: a train.py-style checkpoint (run config lam=0.5,
    repetitions=1) evaluated on two CommonsenseQA items, written as eval.py --out writes it."""
    import data
    import eval as evaluation
    from model import load_checkpoint

    model = load_checkpoint(str(tiny_checkpoint))
    tokenizer = data.Tokenizer.from_spec(model.meta["tokenizer"])
    results = evaluation.evaluate(model, tokenizer, ["csqa"], ["causal", "prefix"], data_dir=str(shared_data),
                                  limit=2, progress=False)
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(results, indent=2))
    runs = read_runs(results_paths=[str(path)])
    assert (runs["repetitions"][0], runs["lambda"][0]) == (1.0, 0.5)
    assert runs["score"][0] == results["average"]["causal"]
    assert read_runs(results_paths=str(path), score="prefix")["score"][0] == results["average"]["prefix"]  # one path
    model.meta["config"]["repetitions"] = 0.0  # train.py's "all data": the number of passes is unknown
    path.write_text(json.dumps({**results, "run": evaluation.run_info(model)}))
    with pytest.raises(ValueError, match="repetitions=0"):
        read_runs(results_paths=[str(path)])


@pytest.mark.filterwarnings("ignore:The optimal value found")  # the noise goes to its lower bound, on both sides
def test_a_noise_free_grid_is_fitted_as_scikit_learn_fits_it_and_the_jitter_is_reported(tmp_path, capsys):
    """A smooth, noise-free 4 x 5 grid (issue 20): the posterior covariance on the λ grid has tiny
    variances and rounding errors below zero, relative to the prior; sampling it needs jitter."""
    R, L = (a.ravel() for a in np.meshgrid([1.0, 4.0, 16.0, 64.0], np.linspace(0, 1, 5), indexing="ij"))
    y = np.sin(np.log2(R)) + L**2  # the best λ is 1 at every r
    fit = fit_gp(np.column_stack([R, L]), y, restarts=0)
    reference = sklearn_gpr(START, 2.5, optimizer="fmin_l_bfgs_b").fit(fit.X, y)
    assert fit.log_marginal_likelihood >= reference.log_marginal_likelihood_value_ - 1e-3
    grid = np.column_stack([np.full(101, 16.0), np.linspace(0, 1, 101)])
    samples, jitter = fit.sample_posterior(grid, 4000, np.random.default_rng(0))
    assert jitter > 0
    at_fit = sklearn_gpr(fit.theta, 2.5).fit(fit.X, y)
    mean, std = at_fit.predict(fit.standardise(grid), return_std=True)
    assert np.all(np.abs(samples.mean(0) - mean) < 5 * std / np.sqrt(4000))
    result = analyse({"repetitions": R, "lambda": L, "score": y}, tmp_path, samples=500, restarts=0)
    assert f"needed jitter {jitter:.2g} on its diagonal" in capsys.readouterr().out
    assert json.loads((tmp_path / "fit.json").read_text())["optimal_lambda"][2]["jitter"] == jitter
    assert [level["mean"] for level in result["optimal_lambda"]] == [1.0] * 4


def test_analysis_is_deterministic_and_works_without_matplotlib(tmp_path, monkeypatch, capsys):
    runs = synthetic_runs(n=30, seed=4)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    kwargs = dict(samples=500, restarts=2, at=[256])
    first = analyse(runs, tmp_path / "a", seed=5, **kwargs)
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert (tmp_path / "a" / "fit.json").exists() and not (tmp_path / "a" / "gp_fit.png").exists()
    assert json.loads((tmp_path / "a" / "fit.json").read_text()) == first
    assert analyse(runs, tmp_path / "b", seed=5, **kwargs) == first
    assert analyse(runs, tmp_path / "c", seed=6, **kwargs)["optimal_lambda"] != first["optimal_lambda"]
    assert [level["repetitions"] for level in first["optimal_lambda"]] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert first["at_bound"] == []
    noiseless = analyse(synthetic_runs(n=30, noise=0.0, seed=4), tmp_path / "d", samples=10, restarts=2)
    assert "noise_level" in noiseless["at_bound"]  # a noise-free sweep pushes the noise to its lower bound


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "gp_fit.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=ONE_THREAD)


def test_cli_writes_fit_json_and_figure(tmp_path):
    pytest.importorskip("matplotlib")
    runs = synthetic_runs(n=40, seed=0)
    lines = ["repetitions,lambda,score,overfit"] + [f"{r},{lam},{s},{o}" for r, lam, s, o in zip(*runs.values())]
    csv_path = write(tmp_path / "runs.csv", "\n".join(lines[:-2]) + "\n")
    json_paths = [result_file(tmp_path / f"{i}.json", lam, r) for i, (r, lam) in enumerate([(64, 0.3), (128, 0.1)])]
    out = run_cli(csv_path, "--results", *json_paths, "--score", "score", "--out_dir", tmp_path / "out",
                  "--samples", 300, "--restarts", 1, "--at", 3)
    assert out.returncode != 0 and "no average score 'score'" in out.stderr  # JSON files have no 'score' mode
    out = run_cli(csv_path, "--out_dir", tmp_path / "out", "--samples", 300, "--restarts", 1, "--at", 3)
    assert out.returncode == 0, out.stderr
    fit = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert {"kernel", "log_marginal_likelihood", "r2", "r2_loo", "optimal_lambda"} <= set(fit)
    assert set(fit["kernel"]) == {"nu", "constant_value", "length_scale_log2_repetitions", "length_scale_lambda",
                                  "noise_level"}
    assert fit["n_runs"] == 38 and fit["r2"] > 0.95 and fit["r2_loo"] > 0.9
    assert [level["repetitions"] for level in fit["optimal_lambda"]] == [1, 2, 3, 4, 8, 16, 32, 64, 128]
    for level in fit["optimal_lambda"]:
        assert {"repetitions", "lambda_grid", "probability", "mean", "interval"} <= set(level)
        assert len(level["lambda_grid"]) == len(level["probability"]) == 101
    figure = tmp_path / "out" / "gp_fit.png"
    assert figure.read_bytes()[:4] == b"\x89PNG" and figure.stat().st_size < 300_000
    # the same seed, the same output, bit for bit
    again = run_cli(csv_path, "--out_dir", tmp_path / "again", "--samples", 300, "--restarts", 1, "--at", 3)
    assert again.stdout.replace("again", "out") == out.stdout
    assert (tmp_path / "again" / "fit.json").read_bytes() == (tmp_path / "out" / "fit.json").read_bytes()


BAD_CSV = {
    "missing column": ("repetitions,lambda,loss\n1,0.5,3\n", "missing column(s) score"),
    "NaN": ("repetitions,lambda,score\n1,0.5,nan\n", "every value must be a finite number"),
    "non-numeric": ("repetitions,lambda,score\n1,half,3\n", "not a number"),
    "bad overfit": ("repetitions,lambda,score,overfit\n1,0.5,3,maybe\n", "overfit is 'maybe'"),
    "lambda range": ("repetitions,lambda,score\n1,0.5,3\n2,1.5,4\n4,0,5\n8,1,2\n", "λ must lie in [0, 1]"),
    "repetitions": ("repetitions,lambda,score\n1,0.5,3\n0,1,4\n4,0,5\n8,1,2\n", "repetitions must be positive"),
    "negative repetitions": ("repetitions,lambda,score\n1,0.5,3\n-2,1,4\n4,0,5\n8,1,2\n", "got -2 (run 2"),
    "empty cell": ("repetitions,lambda,score\n1,0.5,3\n2,1\n4,0,5\n8,1,2\n", "score is None, not a number"),
    "too few": ("repetitions,lambda,score\n1,0.5,3\n2,1,4\n4,0,5\n", "fewer than the 4 hyper-parameters"),
    "single lambda": ("repetitions,lambda,score\n1,0.5,3\n2,0.5,4\n4,0.5,5\n8,0.5,2\n", "single λ value"),
    "single repetitions": ("repetitions,lambda,score\n4,0.5,3\n4,1,4\n4,0,5\n4,0.2,2\n", "single repetitions value"),
    "huge scores": ("repetitions,lambda,score\n1,0.5,1e300\n2,1,-1e300\n4,0,1e300\n8,0.25,-1e300\n",
                    "scores from -1e+300 to 1e+300 cannot be standardised in float64 (their variance overflows)"),
    "tiny scores": ("repetitions,lambda,score\n1,0.5,1e-320\n2,1,-1e-320\n4,0,0\n8,0.25,1e-320\n",
                    "(their variance underflows to 0); rescale the score column"),
}


@pytest.mark.parametrize("case", list(BAD_CSV) + ["missing file", "bad nu", "bad at", "bad flag", "bad json",
                                  "abbreviated flag", "infinite at"])
def test_bad_input_is_a_one_line_error(tmp_path, case):
    good = "repetitions,lambda,score\n1,0.5,3\n2,1,4\n4,0,5\n8,0.25,2\n16,0.75,1\n"
    args, expected = [write(tmp_path / "runs.csv", good)], None
    if case in BAD_CSV:
        text, expected = BAD_CSV[case]
        args = [write(tmp_path / "runs.csv", text)]
    elif case == "missing file":
        args, expected = [tmp_path / "nope.csv"], "No such file"
    elif case == "bad nu":
        args, expected = args + ["--nu", "2"], "nu must be one of 0.5, 1.5, 2.5"
    elif case == "bad flag":
        args, expected = args + ["--samples", "many"], "argument --samples: invalid int value"
    elif case == "abbreviated flag":  # argparse would take it for --lower_is_better
        args, expected = args + ["--lower"], "unrecognized arguments: --lower"
    elif case == "bad at":
        args, expected = args + ["--at", "0"], "repetition levels must be positive finite numbers, got 0.0;"
    elif case == "infinite at":
        args, expected = args + ["--at", "inf"], "positive finite numbers, got inf; check --at"
    elif case == "bad json":
        args, expected = ["--results", write(tmp_path / "r.json", '{"run": {"lam": 0.5}}')], 'no "run" with'
    out = run_cli(*args, "--out_dir", tmp_path / "out", "--samples", 10, "--restarts", 0)
    assert out.returncode != 0
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("gp_fit.py: error:"), out.stderr
    assert "Traceback" not in out.stderr and expected in out.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_fit_that_is_not_finite_is_never_written(tmp_path, monkeypatch):
    runs = synthetic_runs(n=20, seed=1)
    real = GPFit.hyperparameters
    monkeypatch.setattr(GPFit, "hyperparameters", lambda self, standardised=False: (
        {**real(self, standardised), "noise_level": float("inf")}))
    with pytest.raises(ValueError, match=r"the fit is not finite \(kernel.noise_level = inf\); nothing was written"):
        analyse(runs, tmp_path, samples=50, restarts=0)
    monkeypatch.undo()
    # NaN posterior samples would make every argmax 0, i.e. "the best λ is 0" with certainty
    monkeypatch.setattr(GPFit, "sample_posterior", lambda self, X, n, rng: (np.full((n, len(X)), np.nan), 0.0))
    with pytest.raises(ValueError, match="posterior samples at repetitions 1 are not finite numbers"):
        analyse(runs, tmp_path, samples=50, restarts=0)
    assert not (tmp_path / "fit.json").exists()
    monkeypatch.undo()
    analyse(runs, tmp_path, samples=50, restarts=0)
    json.loads((tmp_path / "fit.json").read_text(), parse_constant=lambda c: pytest.fail(f"fit.json holds {c}"))


def test_a_failed_write_names_the_file_and_leaves_no_temporary(tmp_path):
    """A write that fails as on a full disk (here a file size limit: EFBIG where a full disk gives ENOSPC)."""
    pytest.importorskip("matplotlib")
    import resource
    import signal
    runs = synthetic_runs(n=20, seed=1)
    lines = ["repetitions,lambda,score"] + [f"{r},{lam},{s}" for r, lam, s in zip(*list(runs.values())[:3])]
    csv_path = write(tmp_path / "runs.csv", "\n".join(lines) + "\n")

    def run_with_file_limit(limit, out_dir):
        def limit_files():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails instead of killing
        return subprocess.run([sys.executable, str(REPO / "gp_fit.py"), str(csv_path), "--out_dir", str(out_dir),
                               "--samples", "10", "--restarts", "0", "--grid", "11"], capture_output=True,
                              text=True, env=ONE_THREAD, preexec_fn=limit_files)

    for limit, name, kept in ((1_000, "fit.json", []), (20_000, "gp_fit.png", ["fit.json"])):
        out_dir = tmp_path / name
        run = run_with_file_limit(limit, out_dir)
        assert run.returncode != 0 and "Traceback" not in run.stderr
        flag = "--out_dir" if name == "fit.json" else "--figure"
        assert run.stderr == (f"gp_fit.py: error: cannot write {flag} {out_dir / name} (File too large); free some "
                              f"space or give another {flag}\n")
        assert sorted(os.listdir(out_dir)) == kept  # no temporary file
