r"""Image datasets as in-memory numpy arrays, resumable batch orders and pure-JAX augmentations.

Datasets are chosen by name (`load_dataset`) from a small registry:

* ``digits``: scikit-learn's bundled 8x8 digits (1797 images, 10 classes), ``[N, 8, 8, 1]``.
  The offline default: it never touches the network. It has no official split; a fixed 360
  images (20 %) form the test split, chosen by a permutation with a constant seed, so the split
  never depends on a training seed.
* ``mnist``: the four original IDX files in ``data_dir`` (or ``data_dir/mnist``), gzipped
  (``.gz``, as distributed) or not, parsed with numpy, ``[N, 28, 28, 1]``; without them,
  tensorflow-datasets as below.
* ``cifar10``, ``cifar100`` (fine labels), ``stl10`` (the labelled ``train``/``test`` splits,
  96x96x3): tensorflow-datasets' random-access ``tfds.data_source`` with ``download=False``. It
  works without TensorFlow (``tfds.load`` needs TensorFlow and, with no network, retries for
  minutes). Nothing is ever downloaded: an unprepared dataset raises a `FileNotFoundError` that
  says how to prepare it.

Images are ``uint8`` ``[N, H, W, C]`` and labels ``int32`` ``[N]``; `to_float` maps images to
``float32`` in ``[0, 1]`` on the device.

`batch_indices` gives the example indices of any range of training steps: step ``s`` takes batch
``s % steps_per_epoch`` of the permutation of epoch ``s // steps_per_epoch``, seeded by
``(seed, epoch)``. A run resumed at step ``k`` therefore sees exactly the batches it would have
seen without interruption.

The augmentations (`random_crop`, `random_flip`, `color_jitter`) act on one ``[H, W, C]`` float
image and one key; `augment_image` chains them and `augment_batch` vmaps it over a batch with one
key per image. Their hyperparameters are static Python values, so disabled augmentations cost
nothing under `jax.jit`.
"""

import functools
import gzip
import importlib.util
import math
import os
import warnings
import zlib
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax import _checks
from mi_jax.types import Array, ArrayLike, PRNGKey


class Dataset(NamedTuple):
    """A labelled image dataset held in host memory.

    Attributes:
      name: the registry name it was loaded under.
      train_images: ``[N, H, W, C]`` uint8.
      train_labels: ``[N]`` int32 in ``[0, num_classes)``.
      test_images: ``[M, H, W, C]`` uint8.
      test_labels: ``[M]`` int32 in ``[0, num_classes)``.
      num_classes: the number of classes.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(self.train_images.shape[1:])


DatasetLoader = Callable[..., Dataset]

# ------------------------------------------------------------------------------------------------
# digits (scikit-learn, offline)

# The digits test split: a constant seed, independent of every training seed, so that all runs
# (and all seeds of one run) are evaluated on the same 360 images.
_DIGITS_SPLIT_SEED = 0
_DIGITS_NUM_TEST = 360


def _load_digits(*, data_dir: str | None = None, max_examples: int | None = None) -> Dataset:
    """scikit-learn's 8x8 digits (the data ship with scikit-learn): a ``data_dir`` is refused, as
    it means another dataset was meant (a run given MNIST's folder trained on digits)."""
    if data_dir:
        raise ValueError(
            f"`data_dir` is {data_dir!r}, but the dataset 'digits' ships with scikit-learn and "
            "reads no folder: for the files there choose their dataset (MNIST: the configs' "
            "`:mnist` preset or `--config.dataset=mnist`), or leave `data_dir` empty."
        )
    pixels, target = _digits_table()
    # Grey levels 0..16 -> 0..255, so that `to_float` treats every dataset alike.
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    labels = target.astype(np.int32)
    perm = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(labels))
    # Each split keeps scikit-learn's order (sorted indices), so truncation is reproducible.
    test_idx = np.sort(perm[:_DIGITS_NUM_TEST])
    train_idx = np.sort(perm[_DIGITS_NUM_TEST:])
    # (All of them: `load_dataset` cuts them to `max_examples`.)
    return Dataset(
        "digits", images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], 10
    )


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """``(pixels [1797, 8, 8], labels [1797])`` of scikit-learn's digits (grey levels 0..16),
    read from the table scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixels
    and the label per row) without importing scikit-learn, which cost a run ~1 s of its start;
    through `sklearn.datasets.load_digits` where that file is not there as such."""
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        folder = list(spec.submodule_search_locations)[0]
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    from sklearn.datasets import load_digits  # lazy: only this loader needs scikit-learn

    digits = load_digits()
    return digits.images, digits.target


# ------------------------------------------------------------------------------------------------
# MNIST from the original IDX files

# Each file gzipped (as distributed, ``NAME.gz``) or uncompressed (``NAME``, as some copies keep
# them); a file's own first bytes say which.
_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _read_idx(
    path: str, *, magic: int, ndim: int, count: int | None = None
) -> tuple[np.ndarray, int]:
    """Parses an IDX file of unsigned bytes, gzipped or not: a big-endian int32 magic number,
    ``ndim`` big-endian int32 sizes, then the data. Reads at most ``count`` items (all if
    ``None``); returns them with the number of items the header declares."""
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            header = f.read(4 * (1 + ndim))
            if len(header) < 4 * (1 + ndim):
                raise ValueError(f"IDX file {path} is truncated: no complete header.")
            found, *shape = np.frombuffer(header, dtype=">i4").tolist()
            if found != magic:
                raise ValueError(
                    f"IDX file {path} has magic number {found}, expected {magic} "
                    f"({'images' if magic == _IDX_IMAGES_MAGIC else 'labels'}); the file is "
                    "corrupt or not the one its name says."
                )
            if min(shape) < 0:  # int32 sizes; two negative ones would multiply to a size
                raise ValueError(f"IDX file {path} is corrupt: its header declares sizes {shape}.")
            declared = shape[0]
            if count is not None:
                shape[0] = min(shape[0], count)
            size = math.prod(shape)
            # In bounded chunks: a corrupt header's huge count must not allocate it at once.
            chunks, left = [], size
            while left > 0:
                chunk = f.read(min(left, 1 << 24))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
            # Whenever all the items were read (``count`` None or at least their number), the
            # stream must end there; reading on to its end makes gzip check its CRC.
            if len(data) == size and shape[0] == declared and f.read(1):
                raise ValueError(f"IDX file {path} holds more data than its header declares.")
    except (OSError, EOFError, zlib.error) as e:  # not gzip, truncated, or damaged
        raise ValueError(f"cannot read IDX file {path}: {e}") from e
    if len(data) != size:
        raise ValueError(
            f"IDX file {path} is truncated: its header promises {size} bytes of shape {shape}, "
            f"found {len(data)}."
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape), declared


def _find_mnist_files(data_dir: str | None) -> tuple[str, dict[str, str]] | None:
    """``(directory, {key: path})`` of the four MNIST IDX files in ``data_dir`` or
    ``data_dir/mnist`` (each ``NAME.gz``, else ``NAME``), or ``None`` when neither holds any of
    them. A directory holding only some raises."""
    if data_dir is None:
        return None
    for directory in (data_dir, os.path.join(data_dir, "mnist")):
        paths = {}
        for key, name in _MNIST_FILES.items():
            for file in (f"{name}.gz", name):
                if os.path.isfile(os.path.join(directory, file)):
                    paths[key] = os.path.join(directory, file)
                    break
        if len(paths) == len(_MNIST_FILES):
            return directory, paths
        if paths:
            missing = sorted(f"{_MNIST_FILES[k]}.gz" for k in _MNIST_FILES.keys() - paths)
            raise FileNotFoundError(
                f"MNIST IDX files missing from {directory}: {', '.join(missing)} (found "
                f"{', '.join(sorted(os.path.basename(p) for p in paths.values()))}); all four "
                "are needed (each gzipped, or uncompressed without the .gz)."
            )
    return None


def _load_mnist_idx(directory: str, paths: dict[str, str], max_examples: int | None) -> Dataset:
    arrays = {}
    for split in ("train", "test"):
        images, num_images = _read_idx(
            paths[f"{split}_images"], magic=_IDX_IMAGES_MAGIC, ndim=3, count=max_examples
        )
        labels, num_labels = _read_idx(
            paths[f"{split}_labels"],
            magic=_IDX_LABELS_MAGIC,
            ndim=1,
            count=max_examples,
        )
        # The headers' counts, not the (``max_examples``-cut) arrays': files of two splits
        # would otherwise pair images with the wrong labels.
        if num_images != num_labels:
            raise ValueError(
                f"MNIST {split} files in {directory} disagree: {num_images} images but "
                f"{num_labels} labels."
            )
        if labels.size and labels.max() > 9:
            raise ValueError(f"MNIST {split} labels in {directory} exceed 9: {labels.max()}.")
        arrays[f"{split}_images"] = images[..., None]  # [N, H, W, 1]
        arrays[f"{split}_labels"] = labels.astype(np.int32)
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ValueError(
            f"MNIST image sizes in {directory} disagree: train {arrays['train_images'].shape[1:]}, "
            f"test {arrays['test_images'].shape[1:]}."
        )
    return Dataset("mnist", num_classes=10, **arrays)


def _load_mnist(*, data_dir: str | None = None, max_examples: int | None = None) -> Dataset:
    """MNIST from the IDX files in ``data_dir`` (or ``data_dir/mnist``), else from tfds."""
    found = _find_mnist_files(data_dir)
    if found is not None:
        return _load_mnist_idx(*found, max_examples)
    try:
        return _load_tfds("mnist", "mnist", 10, data_dir=data_dir, max_examples=max_examples)
    except (FileNotFoundError, ImportError) as e:  # say where the IDX files were looked for
        looked = "" if data_dir is None else f" in {data_dir} or {os.path.join(data_dir, 'mnist')}"
        names = ", ".join(sorted(f"{n}.gz" for n in _MNIST_FILES.values()))
        raise type(e)(
            f"MNIST: the four IDX files ({names}, each gzipped or uncompressed without the .gz) "
            f"are not{looked or ' given (no data_dir)'}; {e}"
        ) from e


# ------------------------------------------------------------------------------------------------
# tensorflow-datasets (random access, no TensorFlow, no download)


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(
            "loading this dataset needs tensorflow-datasets: `pip install 'mi_jax[tfds]'` "
            "(TensorFlow itself is not needed)."
        ) from e
    return tfds


def _tfds_split(tfds, tfds_name: str, split: str, data_dir: str | None, max_examples: int | None):
    """``(images [n, H, W, C] uint8, labels [n] int32)`` of one split, read record by record."""
    try:
        source = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
    except (NotImplementedError, KeyError, ValueError, FileNotFoundError) as e:
        # With download=False an unprepared dataset fails at once, but with a message about file
        # formats (NotImplementedError), empty splits (KeyError) or unset formats (ValueError).
        default = os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
        where = data_dir if data_dir is not None else f"None (tfds's default, {default})"
        dir_flag = f" --data_dir={data_dir}" if data_dir is not None else ""
        raise FileNotFoundError(
            f"dataset {tfds_name!r} is not prepared (in a random-access format) under "
            f"data_dir={where}. With network access run `tfds build {tfds_name} "
            f"--file_format=array_record{dir_flag}`, or pass the data_dir of a prepared copy. "
            f"Nothing is downloaded here. (tfds said: {type(e).__name__}: {e})"
        ) from e
    n = len(source) if max_examples is None else min(len(source), max_examples)
    # One record at a time: neither slicing nor `__getitems__` works on every source (the
    # tfds.testing.mock_data mock supports neither).
    first = source[0] if n else None
    shape = np.shape(first["image"]) if n else (0, 0, 0)
    images = np.empty((n, *shape), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):
        record = first if i == 0 else source[i]
        image = np.asarray(record["image"])
        # (assigned into the preallocated array, a record of another shape would broadcast
        # (one channel into three) and one of another dtype would be cast, silently)
        if image.shape != shape or image.dtype != np.uint8:
            raise ValueError(
                f"dataset {tfds_name!r}, split {split!r}: record {i}'s image is "
                f"{image.dtype}{list(image.shape)}, not uint8{list(shape)}: a split's images "
                "must be uint8 and share record 0's shape."
            )
        images[i] = image
        labels[i] = record["label"]
    return images, labels


def _load_tfds(
    name: str,
    tfds_name: str,
    num_classes: int,
    *,
    data_dir: str | None = None,
    max_examples: int | None = None,
) -> Dataset:
    tfds = _import_tfds()
    train_images, train_labels = _tfds_split(tfds, tfds_name, "train", data_dir, max_examples)
    test_images, test_labels = _tfds_split(tfds, tfds_name, "test", data_dir, max_examples)
    return Dataset(name, train_images, train_labels, test_images, test_labels, num_classes)


# ------------------------------------------------------------------------------------------------
# Registry

_REGISTRY: dict[str, DatasetLoader] = {
    "digits": _load_digits,
    "mnist": _load_mnist,
    "cifar10": functools.partial(_load_tfds, "cifar10", "cifar10", 10),
    "cifar100": functools.partial(_load_tfds, "cifar100", "cifar100", 100),
    "stl10": functools.partial(_load_tfds, "stl10", "stl10", 10),
}


def available_datasets() -> tuple[str, ...]:
    """The registered datasets' names (`load_dataset`, `register_dataset`)."""
    return tuple(_REGISTRY)


def register_dataset(name: str, loader: DatasetLoader, *, override: bool = False) -> None:
    """Registers ``loader(*, data_dir, max_examples) -> Dataset`` under ``name`` (``override``:
    in place of a dataset of that name).

    The loader may ignore ``max_examples``; `load_dataset` truncates its result anyway.
    """
    _checks.register("dataset", name, loader, _REGISTRY, override=override)


def _truncate(dataset: Dataset, max_examples: int | None) -> Dataset:
    if max_examples is None:
        return dataset
    return dataset._replace(
        train_images=dataset.train_images[:max_examples],
        train_labels=dataset.train_labels[:max_examples],
        test_images=dataset.test_images[:max_examples],
        test_labels=dataset.test_labels[:max_examples],
    )


def _check_dataset(dataset: Dataset, name: str) -> None:
    """Checks a loader's result, so that registered loaders fail here, not inside training."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"the loader of {name!r} returned {type(dataset).__name__}, not Dataset.")
    if not (_checks.is_int(dataset.num_classes) and dataset.num_classes >= 1):
        raise ValueError(
            f"{name!r} num_classes must be an integer >= 1, got {dataset.num_classes!r}."
        )
    for split in ("train", "test"):
        images = getattr(dataset, f"{split}_images")
        labels = getattr(dataset, f"{split}_labels")
        if images.dtype != np.uint8 or images.ndim != 4:
            hint = ""
            if images.ndim == 3:
                hint = " (grey images need their channel axis: images[..., None])"
            elif images.dtype.kind == "f":
                hint = " (floats in [0, 1]: np.round(255 * images).astype(np.uint8))"
            raise ValueError(
                f"{name!r} {split}_images must be uint8 [N, H, W, C], got {images.dtype} "
                f"{images.shape}{hint}."
            )
        # [N, C, H, W] of square images (PyTorch's layout) read as images 1 or 3 rows high.
        if images.shape[1] in (1, 3) and images.shape[2] == images.shape[3] > 4:
            raise ValueError(
                f"{name!r} {split}_images of shape {images.shape} look channel-first "
                "([N, C, H, W], PyTorch's layout); mi_jax's images are [N, H, W, C]: "
                "np.moveaxis(images, 1, -1)."
            )
        if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"{name!r} {split}_labels must be int32 [{images.shape[0]}], got {labels.dtype} "
                f"{labels.shape}."
            )
        if not len(labels):
            raise ValueError(f"{name!r} has an empty {split} split.")
        if labels.min() < 0 or labels.max() >= dataset.num_classes:
            raise ValueError(
                f"{name!r} {split}_labels must lie in [0, num_classes = {dataset.num_classes}), "
                f"got values from {labels.min()} to {labels.max()}."
            )
    if dataset.train_images.max(initial=0) == 1:  # read as 1/255: near black
        raise ValueError(
            f"{name!r} train_images hold only the values 0 and 1; uint8 pixels are read as "
            "0..255 (1 is near black): store binary images as 0 and 255."
        )
    if len(classes := np.unique(dataset.train_labels)) < 2:
        warnings.warn(
            f"{name!r}'s training split holds one class (label {classes[0]}): a probe on it "
            "reads 1.0 whatever the representation (`max_examples` keeps the first examples: "
            "of a split sorted by class, one class).",
            stacklevel=3,
        )
    if dataset.train_images.shape[1:] != dataset.test_images.shape[1:]:
        raise ValueError(
            f"{name!r} train and test images differ in shape: {dataset.train_images.shape[1:]} "
            f"vs {dataset.test_images.shape[1:]}."
        )


def load_dataset(
    name: str, *, data_dir: str | None = None, max_examples: int | None = None
) -> Dataset:
    """Loads a registered dataset into host memory.

    Args:
      name: one of `available_datasets` (``digits``, ``mnist``, ``cifar10``, ``cifar100``,
        ``stl10``).
      data_dir: where the data lie: the MNIST IDX files, or a tensorflow-datasets data
        directory (a leading ``~`` is the home directory). ``None``: MNIST and the tfds
        datasets look in tfds's default directory (so does an empty path);
        ``digits`` takes none (its data ship with scikit-learn; a ``data_dir`` is refused).
      max_examples: keep only the first ``max_examples`` of each split (in the dataset's fixed
        order); for tests and tiny configs.

    Returns:
      A `Dataset` with uint8 ``[N, H, W, C]`` images and int32 ``[N]`` labels.

    Raises:
      KeyError: unknown ``name``.
      FileNotFoundError: the data are not there (nothing is ever downloaded).
      ImportError: tensorflow-datasets is needed but not installed.
      ValueError: a corrupt MNIST file, a ``data_dir`` for ``digits`` or one that is not a
        path, a ``max_examples`` that is not a positive integer.
    """
    if not _checks.is_known(name, _REGISTRY):
        raise _checks.unknown_name_error("dataset", name, _REGISTRY)
    if max_examples is not None and not (_checks.is_int(max_examples) and max_examples >= 1):
        raise ValueError(
            f"`max_examples` must be a positive integer or None, got {max_examples!r}."
        )
    if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
        raise ValueError(f"`data_dir` must be a path or None, got {data_dir!r}.")
    # An empty path is none, for every dataset alike (as the configs' default ""): MNIST's
    # loader read the current directory.
    data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir else None
    dataset = _truncate(_REGISTRY[name](data_dir=data_dir, max_examples=max_examples), max_examples)
    _check_dataset(dataset, name)
    return dataset


# The binarization's seed: one draw of the binary images for every run and seed, as the digits
# split is one (a training seed changes the training, not the data).
BINARIZE_SEED = 0


def binarize(dataset: Dataset, seed: int = BINARIZE_SEED) -> Dataset:
    """``dataset`` with every pixel drawn once as black or white (uint8 0 or 255), white with
    probability its grey level ``x / 255``: static binarization, the data of the binarized-MNIST
    likelihood benchmarks. A Bernoulli likelihood is normalized over binary pixels only: on grey
    levels its "ELBO" bounds no ``log p(x)``. Each split draws from its own stream of ``seed``
    (NumPy; the test images' draw does not depend on how many training images there are);
    labels are unchanged."""
    if not (_checks.is_int(seed) and seed >= 0):
        raise ValueError(f"`seed` must be an integer >= 0, got {seed!r}.")

    def draw(images, split):
        if images.dtype != np.uint8:  # float images in [0, 1] came out all black
            raise TypeError(f"`dataset.{split}_images` must be uint8 (0..255), got {images.dtype}.")
        rng = np.random.default_rng([int(seed), 0xB1, 0 if split == "train" else 1])
        white = rng.random(images.shape, dtype=np.float32) * 255.0 < images
        return np.where(white, np.uint8(255), np.uint8(0))

    return dataset._replace(
        train_images=draw(dataset.train_images, "train"),
        test_images=draw(dataset.test_images, "test"),
    )


# ------------------------------------------------------------------------------------------------
# Batches


def batch_indices(
    num_examples: int, batch_size: int, *, seed: int, start_step: int, num_steps: int
) -> np.ndarray:
    """Example indices of training steps ``start_step, ..., start_step + num_steps - 1``.

    Each epoch is a fresh permutation, ``np.random.default_rng([seed, epoch])
    .permutation(num_examples)``, cut into ``steps_per_epoch = num_examples // batch_size``
    batches (the remainder is dropped). Step ``s`` takes batch ``s % steps_per_epoch`` of epoch
    ``s // steps_per_epoch``, so the rows for steps ``k..`` are the same whether or not the run
    started at step 0, and a resumed run sees identical batches. Only the epochs that the steps
    touch are permuted.

    Args:
      num_examples: the size of the split ``N``.
      batch_size: ``B``, with ``1 <= B <= N``.
      seed: a non-negative integer, the data-order seed.
      start_step: the first step, ``>= 0``.
      num_steps: how many steps, ``>= 0``.

    Returns:
      ``[num_steps, batch_size]`` int32 indices into the split.
    """
    if not (_checks.is_int(num_examples) and num_examples >= 1):
        raise ValueError(f"`num_examples` must be a positive integer, got {num_examples!r}.")
    if not (_checks.is_int(batch_size) and 1 <= batch_size <= num_examples):
        raise ValueError(
            f"`batch_size` must be an integer in [1, num_examples = {num_examples}], got "
            f"{batch_size!r}."
        )
    for arg, value in (("seed", seed), ("start_step", start_step), ("num_steps", num_steps)):
        if not (_checks.is_int(value) and value >= 0):  # (bools are not counts)
            raise ValueError(f"`{arg}` must be a non-negative integer, got {value!r}.")
    steps_per_epoch = num_examples // batch_size
    out = np.empty((num_steps, batch_size), np.int32)
    step = start_step
    while step < start_step + num_steps:  # an epoch's steps at a time (consecutive rows)
        epoch, position = divmod(step, steps_per_epoch)
        count = min(steps_per_epoch - position, start_step + num_steps - step)
        perm = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
        batches = perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
        out[step - start_step : step - start_step + count] = batches[position : position + count]
        step += count
    return out


# ------------------------------------------------------------------------------------------------
# Augmentations (per image; vmapped by `augment_batch`)


def to_float(images: ArrayLike) -> Array:
    """uint8 images (any shape) -> float32 in ``[0, 1]`` (``x / 255``)."""
    dtype = jnp.result_type(images)
    if dtype != jnp.uint8:
        # A float input would be divided by 255 a second time without any visible error.
        raise TypeError(f"`images` must be uint8 (0..255), got {dtype}.")
    return jnp.asarray(images, jnp.float32) / 255.0


def _check_image(image, name: str = "image") -> Array:
    if jnp.ndim(image) != 3:
        raise ValueError(
            f"`{name}` must be one [H, W, C] image (vmap over batches), got shape "
            f"{jnp.shape(image)}."
        )
    _checks.check_float(image, name)
    return jnp.asarray(image)


def random_crop(key: PRNGKey, image: ArrayLike, *, padding: int) -> Array:
    """Zero-pads ``padding`` pixels on every side, then crops a uniformly placed ``[H, W]``
    window: a translation by up to ``padding`` pixels in each direction, filled with zeros.

    Zero padding as in the standard CIFAR recipe (He et al., 2016: "4 pixels are padded on each
    side"); for MNIST-like data, zero is also the background.

    Args:
      key: a PRNG key.
      image: ``[H, W, C]`` float image.
      padding: pixels added on each side (``>= 0``, static); 0 is the identity.

    Returns:
      ``[H, W, C]`` the cropped image.
    """
    _checks.check_key(key, "key")
    image = _check_image(image)
    if not (_checks.is_int(padding) and padding >= 0):
        raise ValueError(f"`padding` must be a non-negative integer, got {padding!r}.")
    if padding == 0:
        return image
    h, w, c = image.shape
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    top, left = jax.random.randint(key, (2,), 0, 2 * padding + 1, jnp.int32)
    return jax.lax.dynamic_slice(padded, (top, left, jnp.int32(0)), (h, w, c))


def random_resized_crop(
    key: PRNGKey,
    image: ArrayLike,
    *,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Array:
    """Crops a random window and resizes it back to ``[H, W]`` (bilinear): the "random resized
    crop" of Szegedy et al. 2015 used by AMDIM and most multi-view methods.

    The window covers a fraction ``a ~ U[scale]`` of the image area with aspect ratio
    ``r = exp(U[log ratio])`` (width over height, relative to the image's); its height and width
    fractions ``sqrt(a / r)`` and ``sqrt(a r)`` are capped at 1, and its position is uniform
    over the places it fits. Always one draw, no rejection loop, so it traces to a fixed program.

    Args:
      key: a PRNG key.
      image: ``[H, W, C]`` float image.
      scale: ``(low, high)`` range of the area fraction, ``0 < low <= high <= 1``.
      ratio: ``(low, high)`` range of the aspect ratio, ``0 < low <= high``.

    Returns:
      ``[H, W, C]`` the resized crop.
    """
    _checks.check_key(key, "key")
    image = _check_image(image)
    lo, hi = _check_range(scale, "scale", upper=1.0)
    rlo, rhi = _check_range(ratio, "ratio")
    h, w, _ = image.shape
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    area = jax.random.uniform(k_area, (), jnp.float32, minval=lo, maxval=hi)
    log_r = jax.random.uniform(k_ratio, (), jnp.float32, math.log(rlo), math.log(rhi))
    frac_h = jnp.minimum(jnp.sqrt(area / jnp.exp(log_r)), 1.0)
    frac_w = jnp.minimum(jnp.sqrt(area * jnp.exp(log_r)), 1.0)
    top = jax.random.uniform(k_top, (), jnp.float32) * (1.0 - frac_h) * h
    left = jax.random.uniform(k_left, (), jnp.float32) * (1.0 - frac_w) * w
    # Output pixel x samples input pixel (x - translation) / scale: the window [top, top +
    # frac_h h) stretched over [0, h).
    scale_hw = jnp.stack([1.0 / frac_h, 1.0 / frac_w])
    return jax.image.scale_and_translate(
        image,
        image.shape,
        spatial_dims=(0, 1),
        scale=scale_hw,
        translation=-jnp.stack([top, left]) * scale_hw,
        method="linear",
    )


def random_grayscale(key: PRNGKey, image: ArrayLike, *, p: float) -> Array:
    """Replaces a 3-channel ``image`` ``[H, W, 3]`` by its BT.601 luma (repeated on the three
    channels) with probability ``p``; a 1-channel image is returned unchanged."""
    _checks.check_key(key, "key")
    image = _check_image(image)
    if not (_checks.is_number(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"`p` must be a probability in [0, 1], got {p!r}.")
    if p == 0:  # (any channels: a view of 4-channel data with grayscale off was refused)
        return image
    _check_channels(image)
    if image.shape[-1] == 1:
        return image
    gray = jnp.broadcast_to(_grayscale(image), image.shape)
    return jnp.where(jax.random.bernoulli(key, jnp.float32(p)), gray, image)


def _check_range(pair, name: str, upper: float | None = None) -> tuple[float, float]:
    """A ``(low, high)`` pair with ``0 < low <= high`` (``<= upper``), as floats."""
    try:
        lo, hi = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a (low, high) pair of numbers, got {pair!r}.") from None
    if not (0 < lo <= hi and (upper is None or hi <= upper)):
        bound = f" <= {upper}" if upper is not None else ""
        raise ValueError(f"`{name}` must satisfy 0 < low <= high{bound}, got {pair!r}.")
    return lo, hi


def random_flip(key: PRNGKey, image: ArrayLike) -> Array:
    """Flips ``image`` ``[H, W, C]`` left-right with probability 1/2; returns ``[H, W, C]``."""
    _checks.check_key(key, "key")
    image = _check_image(image)
    return jnp.where(jax.random.bernoulli(key, jnp.float32(0.5)), image[:, ::-1, :], image)


# ITU-R BT.601 luma weights, as in torchvision's and TensorFlow's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


def _check_channels(image: Array) -> None:
    if image.shape[-1] not in (1, 3):
        raise ValueError(f"`image` must have 1 or 3 channels, got shape {image.shape}.")


def _check_strength(value, name: str) -> None:
    """A jitter strength: finite and ``>= 0`` (``inf`` drew factors of inf: a white image)."""
    if not (_checks.is_number(value) and 0 <= _checks.host_float(value) < np.inf):
        raise ValueError(f"`{name}` must be finite and >= 0, got {value!r}.")


def _grayscale(image: Array) -> Array:
    """``[H, W, 1]`` luma of a 1- or 3-channel image."""
    if image.shape[-1] == 1:
        return image
    luma = jnp.asarray(_LUMA, image.dtype).reshape(1, 1, 3)
    return jnp.sum(image * luma, axis=-1, keepdims=True)


def _factor(key: PRNGKey, strength: float) -> Array:
    """A blend factor uniform in ``[max(0, 1 - strength), 1 + strength]``."""
    return jax.random.uniform(key, (), jnp.float32, max(0.0, 1.0 - strength), 1.0 + strength)


def color_jitter(
    key: PRNGKey, image: ArrayLike, *, brightness: float, contrast: float, saturation: float
) -> Array:
    r"""Random brightness, contrast and saturation, in that fixed order (each as torchvision
    defines it; torchvision's ColorJitter also shuffles their order).

    Each factor ``f`` is uniform in ``[max(0, 1 - s), 1 + s]`` for its strength ``s``; with gray
    ``g`` (the BT.601 luma) and the result clipped to ``[0, 1]`` after each step:

    * brightness: ``f x``;
    * contrast: ``f x + (1 - f) mean(g(x))`` (blend with the mean grey level);
    * saturation: ``f x + (1 - f) g(x)`` (blend with the grey image); a no-op for one channel.

    A strength of 0 skips its step (statically), so all-zero strengths return ``image``. The key
    is always split in three, so enabling one step does not change another's randomness.

    Args:
      key: a PRNG key.
      image: ``[H, W, C]`` float image in ``[0, 1]`` (``C`` in ``{1, 3}`` for contrast and
        saturation; brightness alone takes any).
      brightness: strength ``>= 0``.
      contrast: strength ``>= 0``.
      saturation: strength ``>= 0``.

    Returns:
      ``[H, W, C]`` the jittered image, in ``[0, 1]``, in the image's dtype (the blends are
      computed in float32 at least).
    """
    _checks.check_key(key, "key")
    image = _check_image(image)
    dtype = image.dtype
    strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
    for arg, value in strengths.items():
        _check_strength(value, arg)
    if contrast > 0 or saturation > 0:  # their grey level is the luma of 1 or 3 channels
        _check_channels(image)
    k_brightness, k_contrast, k_saturation = jax.random.split(key, 3)
    if brightness > 0:
        image = jnp.clip(_factor(k_brightness, brightness) * image, 0.0, 1.0)
    if contrast > 0:
        f = _factor(k_contrast, contrast)
        image = jnp.clip(f * image + (1.0 - f) * jnp.mean(_grayscale(image)), 0.0, 1.0)
    if saturation > 0 and image.shape[-1] == 3:
        f = _factor(k_saturation, saturation)
        image = jnp.clip(f * image + (1.0 - f) * _grayscale(image), 0.0, 1.0)
    return image.astype(dtype)


# `augment_image`'s settings: (name, default).
AUGMENT_SETTINGS = (
    ("crop_padding", 0),
    ("flip", False),
    ("brightness", 0.0),
    ("contrast", 0.0),
    ("saturation", 0.0),
)


def check_colour_channels(settings: dict, channels: int, prefix: str = "") -> None:
    """A `ValueError` naming the first of ``settings``' ``contrast``, ``saturation`` and
    ``grayscale`` that is on for images of ``channels`` other than 1 or 3: their grey level is
    the BT.601 luma of an RGB (or grey) image."""
    if channels in (1, 3):
        return
    for name in ("contrast", "saturation", "grayscale"):
        if _checks.is_number(settings.get(name)) and settings[name] > 0:
            raise ValueError(
                f"`{prefix}{name}` needs images of 1 or 3 channels (its grey level is the "
                f"BT.601 luma); these have {channels}: set it to 0."
            )


def check_augment(settings: dict, prefix: str = "", channels: int | None = None) -> None:
    """A `ValueError` naming the first of `augment_image`'s ``settings`` that is unknown or out
    of range (a padding and strengths ``>= 0``, finite; ``flip`` a bool), ``prefix`` before the
    name (``"config.augment."``): a config is checked before anything runs, not at the first
    compiled step. With the images' ``channels``, also `check_colour_channels`."""
    known = dict(AUGMENT_SETTINGS)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        where = f" ({prefix})" if prefix else ""
        raise ValueError(f"unknown augmentation settings {unknown}{where}; known: {list(known)}.")
    settings = {**known, **settings}
    padding = settings["crop_padding"]
    if not (_checks.is_int(padding) and padding >= 0):
        raise ValueError(f"`{prefix}crop_padding` must be an integer >= 0, got {padding!r}.")
    if not isinstance(settings["flip"], bool | np.bool_):
        raise ValueError(f"`{prefix}flip` must be True or False, got {settings['flip']!r}.")
    for name in ("brightness", "contrast", "saturation"):
        _check_strength(settings[name], prefix + name)
    if channels is not None:
        check_colour_channels(settings, channels, prefix)


def augment_image(
    key: PRNGKey,
    image: ArrayLike,
    *,
    crop_padding: int = 0,
    flip: bool = False,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
) -> Array:
    """`random_crop`, `random_flip`, then `color_jitter` of one ``[H, W, C]`` image in ``[0, 1]``.

    The key is split as ``k_crop, k_flip, k_color = jax.random.split(key, 3)``; disabled steps
    (``crop_padding=0``, ``flip=False``, all strengths 0) are skipped.

    Returns:
      ``[H, W, C]`` the augmented image.
    """
    check_augment(
        dict(
            crop_padding=crop_padding,
            flip=flip,
            brightness=brightness,
            contrast=contrast,
            saturation=saturation,
        )
    )  # ("False" for flip flipped; inf a strength whitened the image)
    image = _check_image(image)
    k_crop, k_flip, k_color = jax.random.split(key, 3)
    if crop_padding:
        image = random_crop(k_crop, image, padding=crop_padding)
    if flip:
        image = random_flip(k_flip, image)
    if brightness or contrast or saturation:
        image = color_jitter(
            k_color, image, brightness=brightness, contrast=contrast, saturation=saturation
        )
    return image


@functools.partial(
    jax.jit, static_argnames=("crop_padding", "flip", "brightness", "contrast", "saturation")
)
def augment_batch(
    key: PRNGKey,
    images: ArrayLike,
    *,
    crop_padding: int = 0,
    flip: bool = False,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
) -> Array:
    """`augment_image` vmapped over a batch, image ``i`` with key ``jax.random.split(key, B)[i]``.

    Jitted, with the hyperparameters static (each setting compiles once).

    Args:
      key: a PRNG key.
      images: ``[B, H, W, C]`` float images in ``[0, 1]``.
      crop_padding: `random_crop` padding (0: no crop).
      flip: whether to apply `random_flip`.
      brightness: `color_jitter` strength.
      contrast: `color_jitter` strength.
      saturation: `color_jitter` strength.

    Returns:
      ``[B, H, W, C]`` augmented images.
    """
    if jnp.ndim(images) != 4:
        raise ValueError(f"`images` must have shape [B, H, W, C], got {jnp.shape(images)}.")
    keys = jax.random.split(key, jnp.shape(images)[0])
    augment = functools.partial(
        augment_image,
        crop_padding=crop_padding,
        flip=flip,
        brightness=brightness,
        contrast=contrast,
        saturation=saturation,
    )
    return jax.vmap(augment)(keys, images)
