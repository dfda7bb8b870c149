"""Datasets, batch orders and augmentations (`mi_jax.data`)."""

import functools
import gzip
import hashlib
import importlib.util
import pathlib
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mi_jax import data

MNIST_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


# ------------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_and_values():
    ds = data.load_dataset("digits")
    assert ds.name == "digits"
    assert ds.train_images.shape == (1797 - 360, 8, 8, 1)
    assert ds.test_images.shape == (360, 8, 8, 1)
    assert ds.image_shape == (8, 8, 1)
    assert ds.train_images.dtype == np.uint8 and ds.test_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    assert ds.num_classes == 10
    for labels in (ds.train_labels, ds.test_labels):
        assert set(np.unique(labels)) == set(range(10))  # every class in both splits
    assert ds.train_images.min() == 0 and ds.train_images.max() == 255


def test_digits_is_a_partition_of_sklearn_digits():
    from sklearn.datasets import load_digits

    raw = load_digits()
    expected = np.round(raw.images * 255 / 16).astype(np.uint8).reshape(1797, 64)
    ds = data.load_dataset("digits")
    # Rows (label, pixels) of train + test, as a multiset, equal the whole dataset: the splits
    # are disjoint and together complete (duplicate images would be counted correctly too).
    rows = np.concatenate(
        [
            np.concatenate([ds.train_labels[:, None], ds.train_images.reshape(-1, 64)], axis=1),
            np.concatenate([ds.test_labels[:, None], ds.test_images.reshape(-1, 64)], axis=1),
        ]
    )
    full = np.concatenate([raw.target[:, None], expected], axis=1).astype(rows.dtype)
    for got, want in zip(
        np.unique(rows, axis=0, return_counts=True),
        np.unique(full, axis=0, return_counts=True),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
    # 16 -> 255 and 8 -> 128 (round(127.5) = 128 under round-half-even).
    assert {0, 128, 255} <= set(np.unique(expected))
    # Each split keeps scikit-learn's order (`max_examples` keeps its first rows). Catches:
    # the training split left in the shuffled order.
    for images in (ds.train_images, ds.test_images):
        rows = images.reshape(len(images), -1)[:60]
        first = [np.flatnonzero((expected == r).all(axis=1))[0] for r in rows]
        assert np.all(np.diff(first) > 0)


def test_digits_are_read_from_scikit_learns_table_without_load_digits(tmp_path, monkeypatch):
    import sklearn.datasets

    raw = sklearn.datasets.load_digits()
    find_spec = importlib.util.find_spec

    def read_with_sklearn_at(spec):  # `find_spec("sklearn")` gives ``spec``
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: spec if name == "sklearn" else find_spec(name, *a),
        )
        pixels, labels = data._digits_table()
        np.testing.assert_array_equal(pixels, raw.images)
        np.testing.assert_array_equal(labels, raw.target)

    # The table as scikit-learn's loader gives it, found without importing scikit-learn (a
    # run's start was ~1 s longer).
    with monkeypatch.context() as m:
        m.setattr(sklearn.datasets, "load_digits", None)  # not called
        read_with_sklearn_at(find_spec("sklearn"))
    # Through `load_digits` where the file is not found, or is not the table (a future
    # scikit-learn's of another shape).
    read_with_sklearn_at(None)
    folder = tmp_path / "sklearn"
    (folder / "datasets" / "data").mkdir(parents=True)
    wrong = np.arange(10 * 65, dtype=float).reshape(10, 65) % 17
    with gzip.open(folder / "datasets" / "data" / "digits.csv.gz", "wt") as f:
        np.savetxt(f, wrong, delimiter=",", fmt="%d")
    read_with_sklearn_at(types.SimpleNamespace(submodule_search_locations=[str(folder)]))


def test_digits_deterministic_and_truncated():
    a, b = data.load_dataset("digits"), data.load_dataset("digits")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    small = data.load_dataset("digits", max_examples=50)
    assert small.train_images.shape == (50, 8, 8, 1) and small.test_labels.shape == (50,)
    np.testing.assert_array_equal(small.train_images, a.train_images[:50])
    np.testing.assert_array_equal(small.test_labels, a.test_labels[:50])


def test_binarize_draws_each_pixel_white_with_its_grey_level():
    levels = np.array([0, 1, 64, 128, 254, 255], np.uint8)
    images = np.broadcast_to(levels[:, None, None, None], (6, 200, 200, 1))  # 40k pixels each
    dataset = data.Dataset("grey", images, np.arange(6), images[:, :50], np.arange(6), 6)
    out = data.binarize(dataset, seed=3)
    assert out.train_images.dtype == np.uint8 and set(np.unique(out.train_images)) == {0, 255}
    white = (out.train_images == 255).mean(axis=(1, 2, 3))
    # Binomial standard error at 40k pixels: at most 0.0025.
    np.testing.assert_allclose(white, levels / 255.0, atol=0.01)
    assert white[0] == 0.0 and white[-1] == 1.0  # black and white stay
    assert (out.test_images == 255).mean() == pytest.approx(levels.mean() / 255, abs=0.01)
    np.testing.assert_array_equal(out.train_labels, dataset.train_labels)
    again = data.binarize(dataset, seed=3)
    np.testing.assert_array_equal(again.train_images, out.train_images)  # one draw per seed
    assert not np.array_equal(data.binarize(dataset, seed=4).train_images, out.train_images)
    with pytest.raises(ValueError, match="`seed`"):
        data.binarize(dataset, seed=-1)
    # The test images' draw does not depend on the training split's size (`max_examples`).
    fewer = data.binarize(dataset._replace(train_images=images[:3]), seed=3)
    np.testing.assert_array_equal(fewer.test_images, out.test_images)
    # Each split draws from its own stream. Catches: one stream for both (the same grey
    # image in both splits then binarized into the same image).
    grey = np.full((4, 16, 16, 1), 128, np.uint8)
    same = data.binarize(data.Dataset("grey", grey, np.arange(4), grey, np.arange(4), 4), seed=0)
    assert not np.array_equal(same.train_images, same.test_images)
    with pytest.raises(TypeError, match="`dataset.train_images` must be uint8"):  # all black
        data.binarize(dataset._replace(train_images=images / 255.0))


def test_binarized_draws_are_pinned():
    # The binarized benchmarks' images are NumPy draws (`binarize`): a NumPy whose
    # `Generator.random` drew otherwise would change their data, and every figure read on it,
    # silently. Digests of the default seed's draws of a grey ramp; the same under NumPy
    # 1.26.4, 2.2.6 and 2.4.6 (2026-12-07).
    ramp = (np.arange(16 * 28 * 28) % 256).astype(np.uint8).reshape(16, 28, 28, 1)
    out = data.binarize(data.Dataset("ramp", ramp, np.arange(16), ramp[:4], np.arange(4), 16))
    digests = [
        hashlib.sha256(images.tobytes()).hexdigest()[:16]
        for images in (out.train_images, out.test_images)
    ]
    assert digests == ["efd80c732cedadb1", "1feba301e6218549"]


def test_registry():
    assert {"digits", "mnist", "cifar10", "cifar100", "stl10"} <= set(data.available_datasets())
    with pytest.raises(KeyError, match="Did you mean 'cifar10'"):
        data.load_dataset("cifar1O")
    with pytest.raises(ValueError, match="already registered"):
        data.register_dataset("digits", lambda **_: None)
    with pytest.raises(ValueError, match="max_examples"):
        data.load_dataset("digits", max_examples=0)


def test_register_dataset_truncates_and_checks(monkeypatch):
    monkeypatch.setattr(data, "_REGISTRY", dict(data._REGISTRY))
    images = np.zeros((5, 4, 4, 3), np.uint8)
    labels = np.arange(5, dtype=np.int32)

    def loader(*, data_dir, max_examples):  # ignores max_examples
        del data_dir, max_examples
        return data.Dataset("toy", images, labels, images, labels, 5)

    data.register_dataset("toy", loader)
    ds = data.load_dataset("toy", max_examples=2)
    assert ds.train_images.shape == (2, 4, 4, 3) and ds.image_shape == (4, 4, 3)

    data.register_dataset(
        "bad", lambda **_: data.Dataset("bad", images, labels[:4], images, labels, 5)
    )
    with pytest.raises(ValueError, match="train_labels"):
        data.load_dataset("bad")
    wrong = np.array([0, 1, 2, 10, -3], np.int32)
    data.register_dataset(
        "range", lambda **_: data.Dataset("range", images, labels, images, wrong, 5)
    )
    with pytest.raises(ValueError, match=r"test_labels must lie in \[0, num_classes = 5\).*-3"):
        data.load_dataset("range")
    none = images[:0], labels[:0]
    data.register_dataset("empty", lambda **_: data.Dataset("empty", *none, images, labels, 5))
    with pytest.raises(ValueError, match="'empty' has an empty train split"):
        data.load_dataset("empty")


# ------------------------------------------------------------------------------------------------
# MNIST from IDX files


def test_mnist_from_idx_files():
    if not MNIST_DIR.is_dir():
        pytest.skip(f"no MNIST files at {MNIST_DIR}")
    ds = data.load_dataset("mnist", data_dir=str(MNIST_DIR))
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 28, 28, 1) and ds.test_labels.dtype == np.int32
    assert ds.train_labels[0] == 5  # the well-known first MNIST label
    counts = np.bincount(ds.train_labels, minlength=10)
    assert np.all((counts >= 5000) & (counts <= 7000))
    # Label counts and mean grey level documented in shared/data/mnist/SOURCE.md.
    np.testing.assert_array_equal(
        counts, [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    )
    np.testing.assert_array_equal(
        np.bincount(ds.test_labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    assert abs(ds.train_images.mean() - 33.318) < 1e-3
    # The parent folder also works (the IDX files are then looked for in data_dir/mnist).
    small = data.load_dataset("mnist", data_dir=str(MNIST_DIR.parent), max_examples=100)
    np.testing.assert_array_equal(small.train_images, ds.train_images[:100])
    np.testing.assert_array_equal(small.test_labels, ds.test_labels[:100])


def _idx_bytes(magic, array):
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    return header + np.asarray(array, np.uint8).tobytes()


def _write_mnist(directory, *, train=3, test=2, size=(2, 3), skip=(), overrides=None):
    """Writes tiny IDX files with pixel value = running index and labels = index % 10."""
    rng_images = {
        "train": np.arange(train * size[0] * size[1]).reshape(train, *size),
        "test": 100 + np.arange(test * size[0] * size[1]).reshape(test, *size),
    }
    contents = {
        "train-images-idx3-ubyte.gz": _idx_bytes(2051, rng_images["train"]),
        "train-labels-idx1-ubyte.gz": _idx_bytes(2049, np.arange(train) % 10),
        "t10k-images-idx3-ubyte.gz": _idx_bytes(2051, rng_images["test"]),
        "t10k-labels-idx1-ubyte.gz": _idx_bytes(2049, (np.arange(test) + 7) % 10),
    }
    contents.update(overrides or {})
    for name, content in contents.items():
        if name not in skip:
            (directory / name).write_bytes(
                content if name in (overrides or {}) else gzip.compress(content)
            )
    return rng_images


def test_mnist_idx_parser_on_a_hand_made_file(tmp_path):
    images = _write_mnist(tmp_path)
    ds = data.load_dataset("mnist", data_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.train_images[..., 0], images["train"])
    np.testing.assert_array_equal(ds.test_images[..., 0], images["test"])
    np.testing.assert_array_equal(ds.train_labels, [0, 1, 2])
    np.testing.assert_array_equal(ds.test_labels, [7, 8])
    assert ds.image_shape == (2, 3, 1)
    truncated = data.load_dataset("mnist", data_dir=str(tmp_path), max_examples=2)
    np.testing.assert_array_equal(truncated.train_images[..., 0], images["train"][:2])
    # One training example is one class: probes on it would read 1.0, and it says so.
    with pytest.warns(UserWarning, match="training split holds one class"):
        data.load_dataset("mnist", data_dir=str(tmp_path), max_examples=1)


def test_mnist_idx_files_may_be_uncompressed_and_under_the_home_directory(tmp_path, monkeypatch):
    (tmp_path / "gz").mkdir()
    images = _write_mnist(tmp_path / "gz")
    unzipped = tmp_path / "home" / "mnist"
    unzipped.mkdir(parents=True)
    for i, path in enumerate(sorted((tmp_path / "gz").iterdir())):  # two of them unzipped
        name = path.name.removesuffix(".gz") if i % 2 else path.name
        content = gzip.decompress(path.read_bytes()) if i % 2 else path.read_bytes()
        (unzipped / name).write_bytes(content)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ds = data.load_dataset("mnist", data_dir="~")  # ~/mnist/
    np.testing.assert_array_equal(ds.train_images[..., 0], images["train"])
    np.testing.assert_array_equal(ds.test_images[..., 0], images["test"])
    np.testing.assert_array_equal(ds.test_labels, [7, 8])
    (unzipped / "t10k-images-idx3-ubyte").unlink(missing_ok=True)
    (unzipped / "t10k-images-idx3-ubyte.gz").unlink(missing_ok=True)
    with pytest.raises(
        FileNotFoundError, match=r"missing from .*mnist: t10k-images-idx3-ubyte.gz \(found"
    ):
        data.load_dataset("mnist", data_dir="~")


def test_mnist_missing_files(tmp_path):
    _write_mnist(tmp_path, skip=("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz") as info:
        data.load_dataset("mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in str(info.value)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"train-images-idx3-ubyte.gz": gzip.compress(b"\0\0\x08\x01" + b"\0" * 20)}, "magic"),
        (
            {"train-labels-idx1-ubyte.gz": gzip.compress(_idx_bytes(2049, np.arange(3))[:-1])},
            "trunc",
        ),
        ({"train-labels-idx1-ubyte.gz": gzip.compress(_idx_bytes(2049, np.arange(4)))}, "disagree"),
        ({"t10k-labels-idx1-ubyte.gz": gzip.compress(_idx_bytes(2049, np.full(2, 12)))}, "exceed"),
        ({"t10k-images-idx3-ubyte.gz": b"not an IDX file at all"}, "t10k-images.*magic number"),
        ({"t10k-images-idx3-ubyte.gz": b"\x1f\x8b gzip's magic, then junk"}, "cannot read"),
    ],
)
def test_mnist_corrupt_files(tmp_path, overrides, match):
    _write_mnist(tmp_path, overrides=overrides)
    with pytest.raises(ValueError, match=match):
        data.load_dataset("mnist", data_dir=str(tmp_path))


def test_one_damaged_byte_anywhere_in_an_idx_file_is_named_or_harmless(tmp_path):
    # Before: pixels changed by a damaged byte loaded silently (the gzip CRC was never
    # checked), others leaked a bare zlib.error, and a damaged count a MemoryError.
    images = _write_mnist(tmp_path, size=(8, 8))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    packed = path.read_bytes()
    for offset in range(len(packed)):
        damaged = bytearray(packed)
        damaged[offset] ^= 0x5A
        path.write_bytes(bytes(damaged))
        # All of the file, and a max_examples that covers all of it (before: CRC unchecked).
        for max_examples in (None, 3, 1000):
            try:
                ds = data.load_dataset("mnist", data_dir=str(tmp_path), max_examples=max_examples)
            except ValueError as e:
                assert "train-images-idx3-ubyte.gz" in str(e) or "disagree" in str(e), (offset, e)
            else:  # a byte gzip does not read (its header's time stamp, say): the same pixels
                np.testing.assert_array_equal(ds.train_images[..., 0], images["train"])
    # A header whose count is absurd: named as truncated, nothing allocated for it.
    huge = np.array([2051, 2**31 - 1, 28, 28], dtype=">i4").tobytes() + b"\0" * 100
    path.write_bytes(gzip.compress(huge))
    with pytest.raises(ValueError, match="truncated"):
        data.load_dataset("mnist", data_dir=str(tmp_path))
    # Negative sizes (before: two of them multiplied to a size, and numpy's reshape failed
    # without the file's name).
    for sizes in ([-1, -1, 784], [-1, 28, 28], [3, -8, -8]):
        header = np.array([2051, *sizes], dtype=">i4").tobytes()
        path.write_bytes(gzip.compress(header + b"\0" * 3000))
        with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz is corrupt.*sizes"):
            data.load_dataset("mnist", data_dir=str(tmp_path))


def test_mnist_files_that_disagree_are_refused_under_max_examples_too(tmp_path):
    # Before: both files were cut to max_examples first, and 3 images loaded with the first 2
    # of 4 labels (images paired with another split's labels).
    labels = {"train-labels-idx1-ubyte.gz": gzip.compress(_idx_bytes(2049, np.arange(4)))}
    _write_mnist(tmp_path, overrides=labels)
    with pytest.raises(ValueError, match="disagree: 3 images but 4 labels"):
        data.load_dataset("mnist", data_dir=str(tmp_path), max_examples=2)


# ------------------------------------------------------------------------------------------------
# tensorflow-datasets (mocked: no TensorFlow, no network)


@pytest.mark.parametrize(
    "name, shape, num_classes",
    [
        ("cifar10", (32, 32, 3), 10),
        ("cifar100", (32, 32, 3), 100),
        ("stl10", (96, 96, 3), 10),
        ("mnist", (28, 28, 1), 10),
    ],
)
def test_tfds_datasets_mocked(tmp_path, tfds, name, shape, num_classes):
    # tmp_path holds no IDX files, so mnist falls back to tfds too.
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load_dataset(name, data_dir=str(tmp_path))
        small = data.load_dataset(name, data_dir=str(tmp_path), max_examples=4)
    assert ds.name == name and ds.num_classes == num_classes and ds.image_shape == shape
    assert ds.train_images.shape == (6, *shape) and ds.test_images.shape == (6, *shape)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    for labels in (ds.train_labels, ds.test_labels):
        assert labels.shape == (6,) and labels.min() >= 0 and labels.max() < num_classes
    # The records as tfds gives them, in order: the pixels unchanged and the dataset's own label
    # (cifar100's fine "label", not its "coarse_label").
    with tfds.testing.mock_data(num_examples=6):
        source = tfds.data_source(name, split="train", data_dir=str(tmp_path), download=False)
        records = [source[i] for i in range(6)]
    np.testing.assert_array_equal(ds.train_images, [r["image"] for r in records])
    np.testing.assert_array_equal(ds.train_labels, [r["label"] for r in records])
    # The mock's records are deterministic, so truncation keeps the first ones.
    np.testing.assert_array_equal(small.train_images, ds.train_images[:4])
    np.testing.assert_array_equal(small.test_labels, ds.test_labels[:4])


class _FakeTfds:
    """A stand-in for tensorflow-datasets whose datasets and splits hold different records
    (tfds's mock gives every split the same ones and ignores `data_dir`): prepared only in
    ``prepared_dir``; it records each `data_source` call and each record read."""

    def __init__(self, prepared_dir):
        self.prepared_dir, self.calls, self.reads = prepared_dir, [], []

    @staticmethod
    def records(name, split):
        """``(images [n, 5, 5, C] uint8, labels [n])`` of one split: 9 train, 7 test."""
        n = {"train": 9, "test": 7}[split]
        rng = np.random.default_rng([sum(map(ord, name)), n])
        channels = 1 if name == "mnist" else 3
        return rng.integers(0, 256, (n, 5, 5, channels), np.uint8), rng.permutation(n) % 10

    def data_source(self, name, *, split, data_dir=None, download=True):
        self.calls.append((name, split, data_dir, download))
        if data_dir != self.prepared_dir:
            raise NotImplementedError(f"no array_record files in {data_dir}")
        images, labels = self.records(name, split)
        fake = self

        class Source:
            def __len__(self):
                return len(labels)

            def __getitem__(self, i):
                fake.reads.append((split, i))
                return {"image": images[i], "label": labels[i], "coarse_label": labels[i] // 5}

        return Source()


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "mnist"])
def test_each_split_is_its_own_tfds_split_read_from_the_data_dir(tmp_path, monkeypatch, name):
    # Catches (a mutation check): the splits read or passed swapped (a probe evaluated on the
    # training images), another dataset's name given to tfds, MNIST's fallback or the
    # experiments' loader without the data_dir or max_examples, every record read for a few.
    fake = _FakeTfds(str(tmp_path))
    monkeypatch.setattr(data, "_import_tfds", lambda: fake)
    from experiments import _common

    config = types.SimpleNamespace(dataset=name, data_dir=str(tmp_path), max_examples=None)
    ds = _common.load_config_dataset(config)  # (no IDX files in tmp_path: mnist from tfds)
    config.max_examples = 4
    small = _common.load_config_dataset(config)
    assert fake.calls == 2 * [(name, s, str(tmp_path), False) for s in ("train", "test")]
    for split in ("train", "test"):
        images, labels = fake.records(name, split)
        np.testing.assert_array_equal(getattr(ds, f"{split}_images"), images)
        np.testing.assert_array_equal(getattr(ds, f"{split}_labels"), labels)
        np.testing.assert_array_equal(getattr(small, f"{split}_labels"), labels[:4])
    assert fake.reads[-8:] == [(s, i) for s in ("train", "test") for i in range(4)]
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset(name, data_dir=str(tmp_path / "elsewhere"))
    assert f"under data_dir={tmp_path / 'elsewhere'}." in str(info.value)
    assert f"--file_format=array_record --data_dir={tmp_path / 'elsewhere'}`" in str(info.value)


@pytest.mark.parametrize(
    "record, expected",
    [
        (
            np.zeros((5, 5, 1), np.uint8),
            r"record 3's image is uint8\[5, 5, 1\], not uint8\[5, 5, 3\]",
        ),
        (np.zeros((5, 5, 3), np.uint16), r"record 3's image is uint16\[5, 5, 3\], not uint8"),
        (None, r"record 0's image is uint16\[5, 5, 3\], not uint8"),  # (a uint16 dataset)
    ],
    ids=["channels", "dtype", "every-record"],
)
def test_a_tfds_record_of_another_shape_or_dtype_is_refused(
    tmp_path, monkeypatch, record, expected
):
    # Before: written into the preallocated uint8 array, a one-channel record broadcast to three
    # channels and a uint16 one was cast (wrapped), silently.
    fake = _FakeTfds(str(tmp_path))
    records = fake.records

    def one_odd_record(name, split):
        images, labels = records(name, split)
        if record is None:
            return images.astype(np.uint16), labels
        images = list(images)
        images[3] = record
        return images, labels

    fake.records = one_odd_record
    monkeypatch.setattr(data, "_import_tfds", lambda: fake)
    with pytest.raises(ValueError, match=r"dataset 'cifar10', split 'train': " + expected):
        data.load_dataset("cifar10", data_dir=str(tmp_path))


def test_tfds_not_prepared_fails_fast_and_clearly(tmp_path, tfds):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="not prepared") as info:
        data.load_dataset("cifar10", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10.0
    assert isinstance(info.value.__cause__, NotImplementedError)
    message = str(info.value)
    assert "'cifar10'" in message and str(tmp_path) in message
    assert "tfds build cifar10 --file_format=array_record" in message
    assert not list(tmp_path.iterdir())  # nothing was written (or downloaded)


def test_mnist_without_idx_files_says_where_it_looked(tmp_path, tfds):
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("mnist", data_dir=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "nowhere") in message
    assert "'mnist' is not prepared" in message  # and the tfds fallback's own message


def test_digits_refuses_a_data_dir():
    """A data_dir meant for another dataset (MNIST's folder with the default `digits` config)
    trained on digits without a word."""
    with pytest.raises(ValueError, match=r"`data_dir` is '/data/mnist'.*'digits'.*`:mnist`"):
        data.load_dataset("digits", data_dir="/data/mnist")
    assert data.load_dataset("digits", data_dir="", max_examples=4).num_classes == 10


def test_tfds_not_prepared_in_the_default_directory(tmp_path, monkeypatch, tfds):
    # With data_dir=None, tfds fails differently (an empty-splits KeyError) than with a data_dir.
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="'stl10' is not prepared") as info:
        data.load_dataset("stl10")
    assert isinstance(info.value.__cause__, KeyError)
    assert "tfds build stl10 --file_format=array_record" in str(info.value)


def test_tfds_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'mi_jax\[tfds\]'"):
        data.load_dataset("stl10")
    # MNIST without its IDX files falls back to tfds: the error says where the files were sought.
    with pytest.raises(ImportError, match=r"IDX files .* not in /nowhere .*pip install"):
        data.load_dataset("mnist", data_dir="/nowhere")


# ------------------------------------------------------------------------------------------------
# batch_indices


def test_batch_indices_deterministic_and_resumable():
    kwargs = dict(seed=3)
    full = data.batch_indices(103, 10, start_step=0, num_steps=35, **kwargs)
    assert full.shape == (35, 10) and full.dtype == np.int32
    np.testing.assert_array_equal(
        full, data.batch_indices(103, 10, start_step=0, num_steps=35, **kwargs)
    )
    for k in (1, 9, 10, 23):  # inside an epoch, at an epoch boundary, in a later epoch
        resumed = data.batch_indices(103, 10, start_step=k, num_steps=35 - k, **kwargs)
        np.testing.assert_array_equal(resumed, full[k:])
    other_seed = data.batch_indices(103, 10, seed=4, start_step=0, num_steps=35)
    assert not np.array_equal(other_seed, full)
    assert data.batch_indices(103, 10, seed=3, start_step=5, num_steps=0).shape == (0, 10)


def test_batch_indices_epochs_are_permutations():
    n, b = 103, 10  # 10 steps per epoch, 3 examples dropped per epoch
    idx = data.batch_indices(n, b, seed=0, start_step=0, num_steps=30)
    assert idx.min() >= 0 and idx.max() < n
    for epoch in range(3):
        flat = idx[10 * epoch : 10 * (epoch + 1)].ravel()
        assert len(np.unique(flat)) == 100  # distinct within an epoch
        expected = np.random.default_rng([0, epoch]).permutation(n)[:100]
        np.testing.assert_array_equal(flat, expected)  # the documented order
    assert not np.array_equal(idx[:10], idx[10:20])  # a new order each epoch
    # batch_size == num_examples: every step is a whole permutation.
    whole = data.batch_indices(7, 7, seed=1, start_step=0, num_steps=3)
    np.testing.assert_array_equal(np.sort(whole, axis=1), np.tile(np.arange(7), (3, 1)))


@pytest.mark.parametrize(
    "args, match",
    [
        ((10, 11), "batch_size"),
        ((10, 0), "batch_size"),
        ((0, 1), "num_examples"),
    ],
)
def test_batch_indices_errors(args, match):
    with pytest.raises(ValueError, match=match):
        data.batch_indices(*args, seed=0, start_step=0, num_steps=1)


def test_batch_indices_rejects_negative_steps():
    with pytest.raises(ValueError, match="start_step"):
        data.batch_indices(10, 2, seed=0, start_step=-1, num_steps=1)
    with pytest.raises(ValueError, match="seed"):
        data.batch_indices(10, 2, seed=-1, start_step=0, num_steps=1)
    # Bools are not counts (before: `batch_size=True` passed the check and failed in numpy,
    # "an integer is required", naming nothing).
    with pytest.raises(ValueError, match="`batch_size` must be an integer"):
        data.batch_indices(10, True, seed=0, start_step=0, num_steps=2)
    with pytest.raises(ValueError, match="`num_steps` must be a non-negative integer"):
        data.batch_indices(10, 2, seed=0, start_step=0, num_steps=True)


# ------------------------------------------------------------------------------------------------
# Augmentations


def _image(h=6, w=5, c=3, seed=0):
    """An image in (0, 1) whose left-right mirror differs from it."""
    return jax.random.uniform(jax.random.key(seed), (h, w, c), minval=0.05, maxval=0.95)


def test_to_float():
    x = np.array([[0, 128, 255]], np.uint8)
    out = jax.jit(data.to_float)(x)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, [[0.0, 128 / 255, 1.0]], rtol=1e-7)
    with pytest.raises(TypeError, match="uint8"):
        data.to_float(np.zeros(3, np.float32))


def test_random_crop():
    image = _image()
    key = jax.random.key(0)
    crop0 = jax.jit(functools.partial(data.random_crop, padding=0))
    np.testing.assert_array_equal(crop0(key, image), image)
    # With padding p, the output is one of the (2p+1)^2 windows of the zero-padded image.
    p = 2
    padded = np.pad(np.asarray(image), ((p, p), (p, p), (0, 0)))
    windows = {
        (i, j): padded[i : i + 6, j : j + 5] for i in range(2 * p + 1) for j in range(2 * p + 1)
    }
    crop = jax.jit(functools.partial(data.random_crop, padding=p))
    seen = set()
    for seed in range(300):
        out = np.asarray(crop(jax.random.key(seed), image))
        assert out.shape == image.shape
        matches = [offset for offset, win in windows.items() if np.array_equal(out, win)]
        assert len(matches) == 1
        seen.add(matches[0])
    # Every offset 0..2p in each direction occurs (each misses 300 draws w.p. 0.96^300 ~ 5e-6).
    assert seen == set(windows)


def test_random_flip():
    image = _image()
    num = 1000
    keys = jax.random.split(jax.random.key(0), num)
    outs = np.asarray(jax.jit(jax.vmap(data.random_flip, in_axes=(0, None)))(keys, image))
    is_flipped = np.all(outs == np.asarray(image)[None, :, ::-1], axis=(1, 2, 3))
    is_same = np.all(outs == np.asarray(image)[None], axis=(1, 2, 3))
    assert np.all(is_flipped ^ is_same)  # each output is the image or its mirror
    # Binomial(1000, 1/2): sd ~ 16; 5 sd either side (a probability of 0.6 would fail).
    assert abs(is_flipped.sum() - num / 2) < 80


def test_color_jitter_identity_and_range():
    image = _image()
    key = jax.random.key(1)
    zero = jax.jit(
        functools.partial(data.color_jitter, brightness=0.0, contrast=0.0, saturation=0.0)
    )
    np.testing.assert_array_equal(zero(key, image), image)
    strong = jax.jit(
        functools.partial(data.color_jitter, brightness=0.8, contrast=0.8, saturation=0.8)
    )
    outs = jnp.stack([strong(jax.random.key(s), image) for s in range(20)])
    assert outs.shape == (20, *image.shape)
    assert float(outs.min()) >= 0.0 and float(outs.max()) <= 1.0
    assert float(jnp.max(jnp.abs(outs - image[None]))) > 0.1  # it does change the image


def test_color_jitter_brightness_is_a_scaling():
    image = _image() * 0.5  # in (0, 0.5): a factor <= 1.5 never clips
    b = 0.4
    fn = jax.jit(functools.partial(data.color_jitter, brightness=b, contrast=0.0, saturation=0.0))
    factors = []
    for seed in range(20):
        ratio = np.asarray(fn(jax.random.key(seed), image)) / np.asarray(image)
        np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
        factors.append(ratio.flat[0])
    assert min(factors) >= 1 - b - 1e-6 and max(factors) <= 1 + b + 1e-6
    assert max(factors) - min(factors) > 0.2


def test_color_jitter_contrast_keeps_mean_grey():
    # A blend with the mean grey level keeps a grey image's mean (no clipping in (0.25, 0.75)).
    image = 0.25 + 0.5 * _image(c=1)
    fn = jax.jit(functools.partial(data.color_jitter, brightness=0.0, contrast=0.4, saturation=0.0))
    out = fn(jax.random.key(2), image)
    np.testing.assert_allclose(jnp.mean(out), jnp.mean(image), rtol=1e-5)
    assert not np.allclose(out, image)


def test_saturation_no_op_on_grey():
    fn = jax.jit(functools.partial(data.color_jitter, brightness=0.0, contrast=0.0, saturation=0.9))
    grey1 = _image(c=1)
    np.testing.assert_array_equal(fn(jax.random.key(3), grey1), grey1)
    # Three equal channels are grey too: blending with the luma changes nothing.
    grey3 = jnp.tile(grey1, (1, 1, 3))
    np.testing.assert_allclose(fn(jax.random.key(3), grey3), grey3, atol=1e-6)
    colour = _image(c=3)
    assert not np.allclose(fn(jax.random.key(3), colour), colour)


def test_augment_batch_matches_a_per_image_loop():
    images = jax.random.uniform(jax.random.key(5), (4, 8, 8, 3))
    hparams = dict(crop_padding=2, flip=True, brightness=0.3, contrast=0.3, saturation=0.3)
    key = jax.random.key(9)
    out = data.augment_batch(key, images, **hparams)
    assert out.shape == images.shape and out.dtype == images.dtype

    @jax.jit
    def reference(k, image):  # the documented chain, op by op, with the documented key split
        k_crop, k_flip, k_color = jax.random.split(k, 3)
        image = data.random_crop(k_crop, image, padding=2)
        image = data.random_flip(k_flip, image)
        return data.color_jitter(k_color, image, brightness=0.3, contrast=0.3, saturation=0.3)

    for i, k in enumerate(jax.random.split(key, 4)):
        np.testing.assert_allclose(out[i], reference(k, images[i]), atol=1e-6)
    # Inside a user's jit too, and the identity when nothing is enabled.
    jitted = jax.jit(functools.partial(data.augment_batch, **hparams))
    np.testing.assert_allclose(jitted(key, images), out, atol=1e-6)
    np.testing.assert_array_equal(data.augment_batch(key, images), images)


def test_augmentations_vmap_over_keys():
    image = _image()
    keys = jax.random.split(jax.random.key(0), 8)
    crop = functools.partial(data.random_crop, padding=1)
    crops = jax.jit(jax.vmap(crop, in_axes=(0, None)))(keys, image)
    flips = jax.jit(jax.vmap(data.random_flip, in_axes=(0, None)))(keys, image)
    jitter = functools.partial(data.color_jitter, brightness=0.5, contrast=0.5, saturation=0.5)
    jitters = jax.jit(jax.vmap(jitter, in_axes=(0, None)))(keys, image)
    for out in (crops, flips, jitters):
        assert out.shape == (8, *image.shape)
        assert not np.allclose(out[0], out[1:])  # different keys, different outputs


def test_augmentation_argument_errors():
    with pytest.raises(ValueError, match=r"\[H, W, C\]"):
        data.random_flip(jax.random.key(0), jnp.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match="padding"):
        data.random_crop(jax.random.key(0), _image(), padding=-1)
    with pytest.raises(ValueError, match="contrast"):
        data.color_jitter(jax.random.key(0), _image(), brightness=0.0, contrast=-0.1, saturation=0)
    with pytest.raises(TypeError, match="floating"):
        data.random_flip(jax.random.key(0), jnp.zeros((4, 4, 3), jnp.uint8))


def test_augmentations_keep_the_images_dtype():
    # color_jitter returned float32 for a bfloat16 image (its factors are float32 draws).
    image = jax.random.uniform(jax.random.key(5), (8, 8, 3)).astype(jnp.bfloat16)
    key = jax.random.key(0)
    for out in (
        data.random_crop(key, image, padding=2),
        data.random_resized_crop(key, image),
        data.random_flip(key, image),
        data.random_grayscale(key, image, p=0.5),
        data.color_jitter(key, image, brightness=0.4, contrast=0.4, saturation=0.4),
    ):
        assert out.dtype == jnp.bfloat16 and out.shape == image.shape


@pytest.mark.slow  # float64 variant of the draws tested above
def test_augmentations_prior_and_amdim_draw_the_same_numbers_under_x64():
    # Before: under `jax_enable_x64` these drew 64-bit numbers from the same keys, so an
    # InfoMax or AMDIM run under JAX_ENABLE_X64=1 drew other noise (InfoMax's loss at step 8
    # 1.3551 against 1.3311; now 1.331076 against 1.331077), and a run resumed across the mode
    # went on silently with it. (Over hundreds of steps runs still drift apart: optax's Adam
    # computes its bias correction in float64 under x64.) (random_crop's int32 offsets need a
    # 32-bit zero beside them under x64.)
    from mi_jax import amdim, dim, vae

    key, rng = jax.random.key(4), np.random.default_rng(0)
    image = rng.uniform(size=(8, 8, 3)).astype(np.float32)
    encoder = amdim.MultiScaleEncoder(stem_width=4, widths=(6, 5, 3))
    objective = amdim.AMDIMObjective(encoder=encoder, critic_hidden=8, embed_dim=4)
    images = rng.uniform(size=(4, 8, 8, 1)).astype(np.float32)
    params, states = objective.init(jax.random.key(1), images)
    model = vae.InfoMaxVAE(latent_dim=3, encoder_hparams=(("hidden", (8,)),), decoder_hidden=(8,))
    vae_params = model.init(jax.random.key(2), images)[0]
    view = dict(crop_scale=(0.35, 1.0), crop_ratio=(0.75, 4 / 3), flip=True, grayscale=0.25)
    view.update(brightness=0.4, contrast=0.4, saturation=0.4)
    draws = {
        "crop": lambda: data.random_crop(key, image, padding=2),
        "resized_crop": lambda: data.random_resized_crop(key, image),
        "grayscale": lambda: data.random_grayscale(key, image, p=0.5),
        "flip": lambda: data.random_flip(key, image),
        "jitter": lambda: data.color_jitter(
            key, image, brightness=0.4, contrast=0.4, saturation=0.4
        ),
        "augment_batch": lambda: data.augment_batch(
            key, image[None].repeat(3, 0), crop_padding=2, flip=True, brightness=0.4
        ),
        "uniform_prior": lambda: dim.sample_prior(key, (5, 3), "uniform"),
        "gaussian_prior": lambda: dim.sample_prior(key, (5, 3), "gaussian"),
        "amdim_views": lambda: jnp.stack(
            amdim.augment_views(key, image[None].repeat(3, 0), **view)
        ),
        "amdim_loss": lambda: jax.jit(objective.loss)(params, states, images, key)[0],
        "vae_samples": lambda: model.generate(vae_params, key, 4),
    }
    float32_mode = {name: np.asarray(draw()) for name, draw in draws.items()}
    with jax.enable_x64(True):
        x64_mode = {name: np.asarray(draw()) for name, draw in draws.items()}
    for name, value in float32_mode.items():
        assert x64_mode[name].dtype == value.dtype, name
        np.testing.assert_allclose(x64_mode[name], value, rtol=1e-6, atol=1e-6, err_msg=name)


def test_a_loaders_misread_images_are_named_with_the_fix(monkeypatch):
    # Before: channel-first arrays loaded as images 3 rows high (or 13 x 64 with 64 channels),
    # 0/1 pixels trained as near-black images, a num_classes of 3.0 failed after training.
    monkeypatch.setattr(data, "_REGISTRY", dict(data._REGISTRY))
    rng = np.random.default_rng(0)
    labels = np.arange(6, dtype=np.int32) % 3
    good = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    cases = {
        "channel-first": (np.moveaxis(good, -1, 1), 3, "look channel-first.*np.moveaxis"),
        "binary": ((good > 127).astype(np.uint8), 3, "only the values 0 and 1.*0 and 255"),
        "float": (good / 255.0, 3, r"floats in \[0, 1\]: np.round"),
        "no channel axis": (good[..., 0], 3, r"channel axis: images\[..., None\]"),
        "float classes": (good, 3.0, "num_classes must be an integer >= 1, got 3.0"),
    }
    # Features stored as images one pixel high and wide ([N, 1, 1, D]) or non-square load.
    for shape in ((6, 1, 1, 16), (6, 1, 12, 8)):
        flat = rng.integers(0, 256, shape, dtype=np.uint8)
        data.register_dataset(
            f"flat{shape}", lambda flat=flat, **_: data.Dataset("f", flat, labels, flat, labels, 3)
        )
        data.load_dataset(f"flat{shape}")
    for name, (images, classes, match) in cases.items():
        data.register_dataset(
            name,
            lambda images=images, classes=classes, **_: data.Dataset(
                "x", images, labels, images, labels, classes
            ),
        )
        with pytest.raises(ValueError, match=match):
            data.load_dataset(name)
    # Four channels (RGBA, multispectral) load, and take brightness, flips and crops; the
    # luma-based colour settings are named.
    four = rng.integers(0, 256, (6, 8, 8, 4), dtype=np.uint8)
    image = jnp.asarray(four[0]) / 255.0
    jittered = data.color_jitter(
        jax.random.key(0), image, brightness=0.5, contrast=0.0, saturation=0.0
    )
    assert jittered.shape == (8, 8, 4)
    assert data.random_grayscale(jax.random.key(0), image, p=0.0) is not None
    data.check_augment({"brightness": 0.5, "flip": True}, "config.augment.", channels=4)
    with pytest.raises(ValueError, match="`config.augment.contrast` needs images of 1 or 3"):
        data.check_augment({"contrast": 0.5}, "config.augment.", channels=4)
    for name in ("saturation", "grayscale"):
        with pytest.raises(ValueError, match=f"`views.{name}` needs images of 1 or 3"):
            data.check_colour_channels({name: 0.5}, 2, "views.")
    data.check_colour_channels({"grayscale": 0.5, "contrast": 0.5}, 3, "views.")


# --------------------------------------------------------------------------------------------
# Hand recomputations (a mutation check: each of these caught a change the tests above let through).


def test_contrast_blends_with_the_mean_luma_of_a_colour_image():
    """Catches: the blend target the mean over channels, not torchvision's mean luma."""
    base = 0.45 + 0.1 * jax.random.uniform(jax.random.key(0), (6, 5, 1))
    image = jnp.concatenate([base - 0.2, base + 0.2, base - 0.2], -1)  # green: luma != mean
    luma_mean = float(jnp.mean(image @ jnp.array([0.299, 0.587, 0.114])))
    assert abs(luma_mean - float(jnp.mean(image))) > 0.05
    x = np.asarray(image, np.float64)
    for seed in range(8):
        out = np.asarray(
            data.color_jitter(
                jax.random.key(seed), image, brightness=0.0, contrast=0.5, saturation=0.0
            ),
            np.float64,
        )
        assert out.min() > 0 and out.max() < 1  # no clipping at these levels
        f = np.sum((out - luma_mean) * (x - luma_mean)) / np.sum((x - luma_mean) ** 2)
        np.testing.assert_allclose(out, f * x + (1 - f) * luma_mean, atol=2e-6)


def test_random_resized_crop_ratio_is_width_over_height():
    """Catches: aspect ratio read as height over width. Area 1/2, ratio 2: the window is
    half the height and the full width, so an image constant down each column is unchanged,
    and one constant along each row is not."""
    h, w = 8, 8
    ramp = jnp.linspace(0.0, 1.0, w)
    across = jnp.broadcast_to(ramp[None, :, None], (h, w, 1))  # varies along the width
    down = jnp.broadcast_to(ramp[:, None, None], (h, w, 1))  # varies along the height
    for seed in range(5):
        key = jax.random.key(seed)
        kw = dict(scale=(0.5, 0.5), ratio=(2.0, 2.0))
        np.testing.assert_allclose(data.random_resized_crop(key, across, **kw), across, atol=1e-5)
        assert float(jnp.max(jnp.abs(data.random_resized_crop(key, down, **kw) - down))) > 0.05


def test_max_examples_must_be_an_integer_not_a_bool_float_or_string():
    """Catches: the `is_int` part of `load_dataset`'s check dropped (True then kept one example
    per split without a word; 2.5 and "3" failed inside numpy without naming the argument)."""
    for bad in (True, 2.5, np.float64(3.0), "3"):
        with pytest.raises(ValueError, match=r"`max_examples` must be a positive integer"):
            data.load_dataset("digits", max_examples=bad)
    # numpy integers are integers.
    assert data.load_dataset("digits", max_examples=np.int64(7)).train_labels.shape == (7,)


def test_data_dir_must_be_a_path_and_an_empty_one_is_none(tmp_path, monkeypatch):
    # Before: `data_dir=123` failed in `os.path.expanduser` naming no argument, and MNIST's
    # loader read an empty `data_dir` as the current directory (digits' as none).
    for bad in (123, ["/data"]):
        with pytest.raises(ValueError, match=r"`data_dir` must be a path or None, got"):
            data.load_dataset("mnist", data_dir=bad)
    images = _write_mnist(tmp_path)
    monkeypatch.chdir(tmp_path)  # MNIST's files in the current directory: not read for ""
    asked = []

    def not_prepared(*args, data_dir=None, **kwargs):
        asked.append(data_dir)
        raise FileNotFoundError("not prepared")

    monkeypatch.setattr(data, "_load_tfds", not_prepared)
    with pytest.raises(FileNotFoundError, match="not prepared"):
        data.load_dataset("mnist", data_dir="")
    assert asked == [None]
    ds = data.load_dataset("mnist", data_dir=tmp_path)  # a pathlib.Path is a path
    np.testing.assert_array_equal(ds.train_images[..., 0], images["train"])


def test_digits_test_split_is_the_seed_0_permutations_first_360():
    """The digits split is fixed across versions (results stay comparable): the test split is
    the sorted first 360 indices of `default_rng(0).permutation(1797)`, the rest is training.
    Recomputed from scikit-learn's own loader. Catches: another split seed or rule."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    perm = np.random.default_rng(0).permutation(1797)
    test_idx, train_idx = np.sort(perm[:360]), np.sort(perm[360:])
    expected = np.round(raw.images * (255 / 16)).astype(np.uint8)[..., None]
    ds = data.load_dataset("digits")
    np.testing.assert_array_equal(ds.test_images, expected[test_idx])
    np.testing.assert_array_equal(ds.test_labels, raw.target[test_idx])
    np.testing.assert_array_equal(ds.train_images, expected[train_idx])
    np.testing.assert_array_equal(ds.train_labels, raw.target[train_idx])


@pytest.mark.parametrize(
    "content",
    [b"", gzip.compress(b""), gzip.compress(b"\0\0\x08\x03\0\0\0\x03")],
    ids=["empty", "empty-gzip", "half-header"],
)
def test_an_idx_file_without_a_complete_header_is_named(tmp_path, content):
    """An empty file (an interrupted download) or a cut header. Catches: the header-length
    check dropped (numpy's unpack or reshape errors then named no file)."""
    _write_mnist(tmp_path, overrides={"train-images-idx3-ubyte.gz": content})
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz is truncated: no complete"):
        data.load_dataset("mnist", data_dir=str(tmp_path))


def test_mnist_prefers_the_gzipped_file_when_both_are_there(tmp_path):
    """Documented: each ``NAME.gz``, else ``NAME``. Catches: the uncompressed copy read first
    (a stale or partial decompression then replaced the distributed file)."""
    images = _write_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(2051, np.zeros((3, 2, 3))))
    ds = data.load_dataset("mnist", data_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.train_images[..., 0], images["train"])
