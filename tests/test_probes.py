"""Probes on frozen features: against scikit-learn's logistic regression and simple truths."""

import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import probes


def _sklearn_logistic_regression(**kwargs):
    """scikit-learn's `LogisticRegression`, the reference fit; imported here, where a test uses
    it (1.9 s, which every worker would pay collecting this file)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(**kwargs)


def _blobs(n, dim=10, classes=3, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * sep
    labels = rng.integers(0, classes, n)
    return (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def test_linear_probe_matches_scikit_learn():
    # Overlapping classes (accuracy well below 1), so the two must agree on hard cases too.
    x, y = _blobs(1200, sep=0.6, seed=1)
    xt, yt = _blobs(600, sep=0.6, seed=1)  # same centers (same seed), fresh noise below
    xt = xt + np.random.default_rng(7).normal(size=xt.shape).astype(np.float32) * 0.1
    ours = probes.fit_probe(x[:800], y[:800], x[800:], y[800:], l2=1e-4, max_iter=300)
    mu, sd = x[:800].mean(0), x[:800].std(0)
    ref = _sklearn_logistic_regression(C=1.0 / (1e-4 * 800), max_iter=5000)
    ref.fit((x[:800] - mu) / sd, y[:800])
    ref_acc = ref.score((x[800:] - mu) / sd, y[800:])
    assert 0.5 < ref_acc < 0.97
    assert abs(ours.test_accuracy - ref_acc) <= 0.015


def test_linear_probe_reaches_the_optimum_at_its_defaults():
    """Digits' pixels, l2 1e-4: at scikit-learn's default tolerance (1e-4, the probe's default
    before) L-BFGS stopped after 31 iterations 1 % above the optimal objective, test accuracy
    0.970; the optimum (scikit-learn at tol 1e-10, the same objective: C = 1 / (l2 N)) reads
    0.975 (a review's finding, 2026-12-05)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order].astype(np.float32), y[order]
    train, test = slice(0, 1200), slice(1200, None)
    mu, sd = x[train].mean(0), x[train].std(0)
    sd = np.where(sd > 1e-6 * np.abs(mu), sd, 1.0)  # the probe's constant features (edges)
    ref = _sklearn_logistic_regression(C=1.0 / (1e-4 * 1200), tol=1e-10, max_iter=10_000)
    ref.fit((x[train] - mu) / sd, y[train])
    want = ref.score((x[test] - mu) / sd, y[test])
    ours = probes.fit_probe(x[train], y[train], x[test], y[test])
    # Within one of the 597 test images (a borderline one may flip with the float rounding of
    # another backend); tol 1e-4 read three fewer.
    assert ours.test_accuracy == pytest.approx(want, abs=1.5 / 597), (ours, want)


def test_probe_reports_its_iterations_and_whether_the_linear_fit_converged():
    """A fit cut off at ``max_iter`` says so (before, nothing told an unfinished L-BFGS fit
    from a converged one); the MLP reports its optimizer steps (epochs x batches per epoch)."""
    x, y = _blobs(600, sep=0.6, seed=2)
    done = probes.fit_probe(x[:400], y[:400], x[400:], y[400:])
    assert done.converged is True and 1 < done.iterations < 300
    cut = probes.fit_probe(x[:400], y[:400], x[400:], y[400:], max_iter=3)
    assert cut.converged is False and cut.iterations == 3
    mlp = probes.fit_probe(x[:400], y[:400], x[400:], y[400:], kind="mlp", epochs=2, batch_size=64)
    assert mlp.converged is None and mlp.iterations == 2 * (400 // 64)
    train, test, *_ = done  # still unpacks as (train, test, ...)
    assert (train, test) == (done.train_accuracy, done.test_accuracy)


def test_classes_absent_from_training_do_not_hold_the_linear_fit_back():
    """An absent class's optimal bias is -inf: fitted, L-BFGS chased it (digits with
    num_classes = 20: 286 iterations against 99, at the same accuracy). The fit is the
    present classes' alone; a test example of an absent class counts as wrong."""
    x, y = _blobs(600, sep=0.6, seed=2)
    base = probes.fit_probe(x[:400], y[:400], x[400:], y[400:])
    for wide in (
        probes.fit_probe(x[:400], y[:400], x[400:], y[400:], num_classes=8),
        probes.fit_probe(x[:400], 2 * y[:400] + 1, x[400:], 2 * y[400:] + 1),  # labels 1, 3, 5
    ):
        assert wide == base
    keep = y[:400] != 2  # class 2 only in the test split
    without = probes.fit_probe(x[:400][keep], y[:400][keep], x[400:], y[400:])
    assert without.converged
    assert without.test_accuracy <= np.mean(y[400:] != 2) + 1e-6


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_boolean_labels_are_the_classes_0_and_1(kind):
    # Before: a TypeError, "`train_labels` must be integers, got bool".
    x, y = _blobs(300, classes=2, sep=0.8, seed=3)
    split = (x[:200], y[:200], x[200:], y[200:])
    as_bool = (x[:200], y[:200] == 1, x[200:], y[200:] == 1)
    assert probes.fit_probe(*as_bool, kind=kind, epochs=3) == probes.fit_probe(
        *split, kind=kind, epochs=3
    )


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_separable_data_is_learned_and_random_labels_are_not(kind):
    x, y = _blobs(600, sep=4.0)
    good = probes.fit_probe(x[:400], y[:400], x[400:], y[400:], kind=kind, epochs=20)
    assert good.test_accuracy > 0.97
    shuffled = np.random.default_rng(1).permutation(y)
    bad = probes.fit_probe(x[:400], shuffled[:400], x[400:], shuffled[400:], kind=kind, epochs=20)
    assert bad.test_accuracy < 0.5  # chance is 1/3


def test_mlp_probe_solves_xor_which_the_linear_probe_cannot():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(1000, 2)).astype(np.float32)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int32)
    lin = probes.fit_probe(x[:800], y[:800], x[800:], y[800:], kind="linear")
    mlp = probes.fit_probe(
        x[:800], y[:800], x[800:], y[800:], kind="mlp", epochs=60, learning_rate=1e-2
    )
    assert lin.test_accuracy < 0.7
    assert mlp.test_accuracy > 0.9


def test_extract_features_pads_the_last_chunk_and_matches_a_direct_call():
    w = jnp.arange(12.0).reshape(4, 3)
    images = np.random.default_rng(0).normal(size=(23, 4)).astype(np.float32)
    apply = lambda p, x: (x @ p, jnp.sum(x, axis=-1))
    a, b = probes.extract_features(apply, w, images, batch_size=10)
    assert a.shape == (23, 3) and b.shape == (23,)
    np.testing.assert_allclose(a, images @ np.asarray(w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b, images.sum(-1), rtol=1e-5, atol=1e-5)
    # A list of images too (before: an AttributeError on `images.shape`, naming nothing).
    listed = probes.extract_features(apply, w, [list(row) for row in images], batch_size=10)
    np.testing.assert_array_equal(listed[0], a)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x, y: probes.fit_probe(x, y, x, y, kind="svm"), KeyError, "probe"),
        (lambda x, y: probes.fit_probe(x, y, x, y, kind="mlp", seed=0.5), ValueError, "`seed`"),
        (lambda x, y: probes.fit_probe(x, y[:-1], x, y), ValueError, "length"),
        (lambda x, y: probes.fit_probe(x, y, x[:, :2], y), ValueError, "widths"),
        (lambda x, y: probes.fit_probe(x * np.nan, y, x, y), ValueError, "train_features"),
        # float64 past float32's range: named as such (before: "NaN or infinite values").
        (
            lambda x, y: probes.fit_probe(x, y, x.astype(np.float64) * 1e39, y),
            ValueError,
            "test_features.*range",
        ),
        (lambda x, y: probes.fit_probe(x, y.astype(float), x, y), TypeError, "train_labels"),
        (lambda x, y: probes.fit_probe(x, y, x, y.astype(float)), TypeError, "test_labels"),
        (lambda x, y: probes.fit_probe(x, y, x, y, num_classes=2), ValueError, "train_labels"),
        (lambda x, y: probes.fit_probe(x, y, x, y - 1), ValueError, "test_labels"),
        (lambda x, y: probes.fit_probe(x, y, x[:0], y[:0]), ValueError, "empty"),
        (lambda x, y: probes.fit_probe(x, y, x, y, kind="mlp", batch_size=0), ValueError, "batch"),
        (lambda x, y: probes.fit_probe(x, y, x, y, kind="mlp", hidden=0), ValueError, "hidden"),
        (lambda x, y: probes.fit_probe(x, y, x, y, l2=-1.0), ValueError, "l2"),
        (lambda x, y: probes.fit_probe(x, y, x, y, learning_rate=np.nan), ValueError, "learning"),
        (lambda x, y: probes.fit_probe(x, y, x, y, max_iter=True), ValueError, "max_iter"),
        # Before: "indices and arr must have the same number of dimensions", naming nothing.
        (lambda x, y: probes.fit_probe(x, y[:, None], x, y), ValueError, "`train_labels`.*shape"),
        (lambda x, y: probes.fit_probe(x, y, x, y[:, None]), ValueError, "`test_labels`.*shape"),
    ],
)
def test_bad_input_is_named(call, error, match):
    x, y = _blobs(20)
    with pytest.raises(error, match=match):
        call(x, y)


def test_a_feature_constant_in_training_does_not_derail_the_mlp_probe():
    # A dead unit: 0 on every training example, 0.01 on the test set. Scaled by its (zero)
    # training std it became a 1e4 outlier on the random first-layer weights, and the MLP
    # probe fell from 0.985 to 0.35 on these blobs. Centred only, its test values still reached
    # the MLP through first-layer weights training never moved: at 10 and 100 times the scale
    # the probe read 0.30 and 0.12 against 0.86. Zeroed, the test values do not matter.
    x, y = _blobs(600, sep=4.0)
    dead = np.zeros((600, 4), np.float32)
    for scale in (0.01, 100.0):
        dead[400:] = scale * np.abs(np.random.default_rng(1).normal(size=(200, 4)))
        with_dead = np.concatenate([x, dead], axis=1)
        result = probes.fit_probe(
            with_dead[:400], y[:400], with_dead[400:], y[400:], kind="mlp", epochs=20
        )
        assert result.test_accuracy > 0.97
        off = with_dead.copy()
        off[400:, -4:] = 0.0  # dead on the test set too
        assert result == probes.fit_probe(
            off[:400], y[:400], off[400:], y[400:], kind="mlp", epochs=20
        )
    # ... while features on a tiny scale are still scaled (a threshold on std alone missed them).
    tiny = x * 1e-7
    result = probes.fit_probe(tiny[:400], y[:400], tiny[400:], y[400:])
    assert result.test_accuracy > 0.97


def test_probes_read_features_of_any_normal_float32_scale_alike():
    # Before: the training variance, in float32, overflowed from ~1e18 (every feature read 0,
    # the probe chance, 0.12 of 0.76) and underflowed at ~1e-20. Scaling a feature by a power of
    # two changes no z-score, so these accuracies are equal, not close.
    x, y = _blobs(400, sep=2.0)
    expected = probes.fit_probe(x[:300], y[:300], x[300:], y[300:])
    for scale in (2.0**70, 2.0**120, 2.0**-70):
        z = (x * np.float32(scale)).astype(np.float32)
        assert probes.fit_probe(z[:300], y[:300], z[300:], y[300:]) == expected, scale
    assert expected.test_accuracy > 0.9
    # A feature of one value is dropped; one varying by less than its float32 rounding noise
    # would suggest, 1e6 + label, is centred and read.
    label_code = (1e6 + y).astype(np.float32)[:, None]
    result = probes.fit_probe(label_code[:300], y[:300], label_code[300:], y[300:])
    assert result.test_accuracy == 1.0


# --------------------------------------------------------------------------------------------
# Reported statistics by hand (a mutation check: each caught a change the tests above missed).


def test_the_test_split_is_standardized_with_the_training_statistics():
    """Catches: test features standardized with their own statistics: a shifted test
    split, scored as scikit-learn scores it through the training split's scaler."""
    x, y = _blobs(1200, sep=0.6, seed=1)
    shifted = x[800:] + 2.0  # every feature moved by ~2 training stds
    ours = probes.fit_probe(x[:800], y[:800], shifted, y[800:], l2=1e-4, max_iter=300)
    mu, sd = x[:800].mean(0), x[:800].std(0)
    ref = _sklearn_logistic_regression(C=1.0 / (1e-4 * 800), max_iter=5000).fit(
        (x[:800] - mu) / sd, y[:800]
    )
    want = ref.score((shifted - mu) / sd, y[800:])
    own_stats = ref.score((shifted - shifted.mean(0)) / shifted.std(0), y[800:])
    assert abs(want - own_stats) > 0.05  # (the case tells the two apart)
    assert abs(ours.test_accuracy - want) <= 0.015


def test_a_strong_l2_moves_the_linear_probe_as_it_moves_scikit_learn():
    """Catches the penalty l2 |W|^2 (the 1/2 dropped) and the standard deviation taken over both
    splits (which rescales the penalty): at l2 1e-4 neither moves an accuracy. Three classes on
    a line, the test split a dense grid that reads off the decision boundaries. (With two
    classes scikit-learn fits one weight vector, the difference of the probe's two: the same
    fit at C = 2 / (l2 N).)"""
    rng = np.random.default_rng(0)
    n, l2 = 600, 0.3
    y = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    x = (2.0 * (y - 1) + rng.normal(size=n)).astype(np.float32)[:, None]
    grid = np.linspace(-8, 8, 3201, dtype=np.float32)[:, None]  # spread wider than x
    grid_y = np.digitize(grid[:, 0], [-1.0, 1.0])
    ours = probes.fit_probe(x, y, grid, grid_y, l2=l2, max_iter=1000)
    mu, sd = x.mean(0), x.std(0)
    ref = _sklearn_logistic_regression(C=1.0 / (l2 * n), tol=1e-10, max_iter=10_000)
    want = ref.fit((x - mu) / sd, y).score((grid - mu) / sd, grid_y)
    assert ours.converged and abs(ours.test_accuracy - want) <= 4.5 / 3201, (ours, want)


def test_the_mlp_probe_reports_train_and_test_accuracy_in_their_places():
    """Catches: the MLP probe's train and test accuracies swapped: random labels are memorized on
    the training split and read at chance on the test split."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    fit = probes.fit_probe(
        x[:100], y[:100], x[100:], y[100:], kind="mlp", epochs=300, batch_size=50,
        learning_rate=1e-2, weight_decay=0.0,
    )  # fmt: skip
    assert fit.train_accuracy > 0.9 and fit.test_accuracy < 0.5


def test_a_fit_that_converges_on_its_last_allowed_iteration_says_so():
    """Catches: ``converged`` read as ``iterations < max_iter`` (a fit whose gradient met ``tol``
    on the last allowed iteration reported unfinished)."""
    x, y = _blobs(600, sep=0.6, seed=2)
    done = probes.fit_probe(x[:400], y[:400], x[400:], y[400:])
    assert done.converged
    exact = probes.fit_probe(x[:400], y[:400], x[400:], y[400:], max_iter=done.iterations)
    assert exact == done  # the same iterates, the same stop
    short = probes.fit_probe(x[:400], y[:400], x[400:], y[400:], max_iter=done.iterations - 1)
    assert short.converged is False and short.iterations == done.iterations - 1


def test_a_test_example_of_a_class_absent_from_training_is_always_wrong():
    """Catches: absent classes' test labels mapped onto the first present class (index 0), so a
    test example of an unseen class read right wherever the probe predicted that class."""
    x, y = _blobs(400, classes=2, sep=4.0, seed=4)
    # Test split: class-0 points relabelled 2 (absent from training) and the class-1 points.
    xt, yt = _blobs(200, classes=2, sep=4.0, seed=4)
    yt = np.where(yt == 0, 2, yt)
    fit = probes.fit_probe(x, y, xt, yt)
    want_max = np.mean(yt == 1)  # only class-1 examples can be right
    assert fit.train_accuracy > 0.97
    assert fit.test_accuracy <= want_max + 1e-6
    assert fit.test_accuracy > want_max - 0.03  # and those are (separable blobs)


def test_a_feature_constant_up_to_rounding_is_centred_not_scaled():
    """Catches: the centring threshold dropped (``std > 0`` alone): a training column of 1000
    and the next float32 (std ~3e-5, rounding noise) divided by that std made the test split's
    1000.5 a ~1e4 outlier on the weight the noise earned, and the probe fell to chance.
    Centred in its own units it moves the logits by |w| / 2, with |w| held down by l2."""
    x, y = _blobs(600, sep=4.0)
    rng = np.random.default_rng(5)
    up = np.nextafter(np.float32(1000.0), np.float32(np.inf))
    col = np.where(rng.random(600) < 0.5, np.float32(1000.0), up).astype(np.float32)
    col[400:] = 1000.5
    z = np.concatenate([x, col[:, None]], axis=1)
    base = probes.fit_probe(x[:400], y[:400], x[400:], y[400:])
    fit = probes.fit_probe(z[:400], y[:400], z[400:], y[400:])
    assert base.test_accuracy > 0.97
    assert fit.test_accuracy >= base.test_accuracy - 0.01, (fit, base)


def test_features_near_float32s_largest_read_as_the_same_features_halved():
    """Powers of two change no z-score: the fits are equal. Catches: a column divided by 2^127,
    whose reciprocal is subnormal (flushed to 0 on XLA:CPU: the column read 0, dropped): at
    peaks of 2^127 and more before (train accuracy 0.38), or with a scale of 2^e, not 2^(e-1),
    from 2^126."""
    x, y = _blobs(400, sep=2.0)
    unit = (x / np.abs(x).max(0) * np.float32(1.5)).astype(np.float32)  # every peak 1.5
    expected = probes.fit_probe(unit[:300], y[:300], unit[300:], y[300:])
    for power in (126, 127):  # peaks 1.5 * 2^126 ~ 1.3e38, 1.5 * 2^127 ~ 2.6e38
        big = (unit * np.float32(2.0**power)).astype(np.float32)
        assert np.all(np.isfinite(big))
        assert probes.fit_probe(big[:300], y[:300], big[300:], y[300:]) == expected, power
    assert expected.test_accuracy > 0.9


def test_one_epoch_of_the_mlp_probe_trains_all_its_steps():
    """Catches: a scan over ``epochs - 1`` epochs (one epoch: untrained, chance) and a cosine
    schedule spanning ``epochs`` steps instead of ``epochs x batches`` (one epoch: one step at a
    nonzero rate). 12 Adam steps at 3e-2 separate these blobs; an untrained MLP reads ~1/3."""
    x, y = _blobs(600, sep=4.0)
    fit = probes.fit_probe(
        x[:400], y[:400], x[400:], y[400:], kind="mlp", epochs=1, batch_size=32,
        learning_rate=3e-2, hidden=32,
    )  # fmt: skip
    assert fit.iterations == 400 // 32
    assert fit.test_accuracy > 0.9, fit


def test_the_mlp_probes_weight_decay_reaches_its_optimizer():
    """Catches: ``weight_decay`` not passed to AdamW (plain Adam): a strong decoupled decay
    (lr x wd = 0.5 per step) changes the fit of random labels the undecayed MLP memorizes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 10)).astype(np.float32)
    y = rng.integers(0, 3, 150)
    common = dict(kind="mlp", epochs=40, batch_size=50, learning_rate=1e-2, hidden=64)
    free = probes.fit_probe(x[:100], y[:100], x[100:], y[100:], weight_decay=0.0, **common)
    decayed = probes.fit_probe(x[:100], y[:100], x[100:], y[100:], weight_decay=50.0, **common)
    assert free.train_accuracy > 0.8, free  # memorized
    assert decayed.train_accuracy < free.train_accuracy - 0.2, (decayed, free)


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"tol": 0.0}, "tol"),
        ({"tol": -1e-6}, "tol"),
        ({"l2": np.inf}, "l2"),
        ({"max_iter": 0}, "max_iter"),
        ({"weight_decay": np.inf, "kind": "mlp"}, "weight_decay"),
    ],
)
def test_out_of_range_settings_are_named(settings, match):
    """Catches: ``tol`` left out of the range check (tol <= 0: L-BFGS runs to max_iter and says
    "not converged") and the finiteness check dropped (l2 = inf: NaN weights, chance)."""
    x, y = _blobs(20)
    with pytest.raises(ValueError, match=f"`{match}`"):
        probes.fit_probe(x, y, x, y, **settings)


def test_complex_features_are_refused_by_name():
    """Catches: the complex check dropped (the float32 cast keeps the real part, warning only)."""
    x, y = _blobs(20)
    with pytest.raises(TypeError, match="`test_features` must be real"):
        probes.fit_probe(x, y, x + 1j, y)


def test_an_unpenalized_linear_probe_is_allowed_and_matches_scikit_learn():
    """Catches: l2 = 0 refused (the docstring and check_hparams allow l2 >= 0)."""
    x, y = _blobs(900, sep=0.5, seed=6)
    fit = probes.fit_probe(x[:600], y[:600], x[600:], y[600:], l2=0.0, max_iter=1000)
    mu, sd = x[:600].mean(0), x[:600].std(0)
    ref = _sklearn_logistic_regression(C=np.inf, tol=1e-10, max_iter=10_000)
    want = ref.fit((x[:600] - mu) / sd, y[:600]).score((x[600:] - mu) / sd, y[600:])
    assert 0.4 < want < 0.95
    assert abs(fit.test_accuracy - want) <= 2.5 / 300, (fit, want)
