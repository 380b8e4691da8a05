"""Tests for compress_core.data: loaders, splits, statistics, augmentation, batching."""

import os
import pickle
import tarfile

import numpy as np
import pytest

from compress_core.data import (
    Dataset,
    channel_stats,
    flip_and_crop,
    get_dataset,
    iterate_batches,
    load_cifar,
    load_digits_dataset,
    normalize,
    num_batches,
    random_flip,
    random_pad_crop,
    split,
    synthetic_dataset,
)
from compress_core.errors import UserError

# --------------------------------------------------------------------------- fake CIFAR archives

N_PER_FILE = 4


def _pixels(seed):
    return np.random.default_rng(seed).integers(0, 256, (N_PER_FILE, 3072), dtype=np.uint8)


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar10(root):
    """Real layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}, bytes keys."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(files):
        _dump(folder / name, {b"batch_label": name.encode(), b"data": _pixels(k),
                              b"labels": [(k + j) % 10 for j in range(N_PER_FILE)],
                              b"filenames": [b"f%d.png" % j for j in range(N_PER_FILE)]})
    _dump(folder / "batches.meta", {b"label_names": [b"class%d" % i for i in range(10)],
                                    b"num_cases_per_batch": N_PER_FILE, b"num_vis": 3072})
    return folder


def _write_cifar100(root):
    """Real layout: cifar-100-python/{train,test,meta} with fine and coarse labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for k, name in enumerate(["train", "test"]):
        _dump(folder / name, {b"data": _pixels(100 + k),
                              b"fine_labels": [99 - j - k for j in range(N_PER_FILE)],
                              b"coarse_labels": [19 - j - k for j in range(N_PER_FILE)]})
    _dump(folder / "meta", {b"fine_label_names": [b"fine%d" % i for i in range(100)],
                            b"coarse_label_names": [b"coarse%d" % i for i in range(20)]})
    return folder


def _tar(folder):
    archive = folder.parent / {"cifar-10-batches-py": "cifar-10-python.tar.gz",
                               "cifar-100-python": "cifar-100-python.tar.gz"}[folder.name]
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return archive


def _assert_pixels(ds, raw):
    """x[i, c, h, w] must be raw[i, c*1024 + h*32 + w] / 255 (row-major CHW)."""
    assert ds.x.dtype == np.float32 and ds.x.shape == (len(raw), 3, 32, 32)
    assert ds.x[1, 2, 5, 7] == np.float32(raw[1, 2 * 1024 + 5 * 32 + 7]) / np.float32(255)
    assert ds.x[3, 0, 31, 0] == np.float32(raw[3, 31 * 32]) / np.float32(255)
    np.testing.assert_array_equal(np.rint(ds.x * 255).astype(np.uint8).reshape(len(raw), -1), raw)
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0


@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar10_pixels_labels_and_names(tmp_path, as_tar):
    folder = _write_cifar10(tmp_path)
    train, test = load_cifar(_tar(folder) if as_tar else folder, num_classes=10)
    assert len(train) == 5 * N_PER_FILE and len(test) == N_PER_FILE
    _assert_pixels(train, np.concatenate([_pixels(k) for k in range(5)]))
    _assert_pixels(test, _pixels(5))
    np.testing.assert_array_equal(train.y, [(k + j) % 10 for k in range(5) for j in range(N_PER_FILE)])
    np.testing.assert_array_equal(test.y, [(5 + j) % 10 for j in range(N_PER_FILE)])
    assert train.y.dtype == np.int64 and train.num_classes == 10
    assert train.class_names[3] == "class3" and train.name == "cifar10"


@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar100_fine_and_coarse(tmp_path, as_tar):
    folder = _write_cifar100(tmp_path)
    path = _tar(folder) if as_tar else folder
    train, test = load_cifar(path, num_classes=100)
    _assert_pixels(train, _pixels(100))
    _assert_pixels(test, _pixels(101))
    np.testing.assert_array_equal(train.y, [99, 98, 97, 96])
    np.testing.assert_array_equal(test.y, [98, 97, 96, 95])
    assert train.num_classes == 100 and train.class_names[5] == "fine5"
    ctrain, ctest = load_cifar(path, num_classes=100, label_mode="coarse")
    np.testing.assert_array_equal(ctrain.y, [19, 18, 17, 16])
    np.testing.assert_array_equal(ctest.y, [18, 17, 16, 15])
    assert ctrain.num_classes == 20 and ctrain.class_names[2] == "coarse2"
    np.testing.assert_array_equal(ctrain.x, train.x)


def test_cifar_parent_dir_accepted(tmp_path):
    folder = _write_cifar10(tmp_path / "data")
    a, _ = load_cifar(tmp_path / "data", 10)
    b, _ = load_cifar(folder, 10)
    np.testing.assert_array_equal(a.x, b.x)


def test_cifar_parent_dir_with_only_archive(tmp_path):
    folder = _write_cifar100(tmp_path / "build")
    archive = _tar(folder)
    (tmp_path / "dl").mkdir()
    archive.rename(tmp_path / "dl" / archive.name)
    train, _ = load_cifar(tmp_path / "dl", 100)
    _assert_pixels(train, _pixels(100))


def test_cifar_missing_file_names_path_and_file(tmp_path):
    folder = _write_cifar10(tmp_path)
    os.remove(folder / "data_batch_3")
    with pytest.raises(UserError) as exc:
        load_cifar(folder, 10)
    assert str(folder) in str(exc.value) and "data_batch_3" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_cifar_tar_missing_member_and_wrong_kind(tmp_path):
    folder = _write_cifar100(tmp_path)
    os.remove(folder / "meta")
    archive = _tar(folder)
    with pytest.raises(UserError, match="meta") as exc:
        load_cifar(archive, 100)
    assert str(archive) in str(exc.value)
    with pytest.raises(UserError, match="batches.meta"):  # CIFAR-100 folder read as CIFAR-10
        load_cifar(folder, 10)


def test_cifar_bad_paths_and_options(tmp_path):
    with pytest.raises(UserError, match="does not exist") as exc:
        load_cifar(tmp_path / "nope", 10)
    assert str(tmp_path / "nope") in str(exc.value)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar")
    with pytest.raises(UserError, match="junk.tar.gz"):
        load_cifar(junk, 10)
    with pytest.raises(UserError, match="num_classes"):
        load_cifar(tmp_path, 37)
    with pytest.raises(UserError, match="label_mode"):
        load_cifar(tmp_path, 10, label_mode="coarse")


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = _write_cifar10(tmp_path)
    _dump(folder / "batches.meta", {b"label_names": _Evil()})
    with pytest.raises(UserError, match="not allowed"):
        load_cifar(folder, 10)


# --------------------------------------------------------------------------- digits / synthetic / Dataset


def test_digits_shape_range_count():
    ds = load_digits_dataset()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == np.float32
    assert ds.y.shape == (1797,) and ds.y.dtype == np.int64
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    assert ds.num_classes == 10 and set(np.unique(ds.y)) == set(range(10))


def test_synthetic_deterministic_and_learnable():
    a = synthetic_dataset(400, 4, shape=(3, 8, 8), seed=3)
    b = synthetic_dataset(400, 4, shape=(3, 8, 8), seed=3)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, synthetic_dataset(400, 4, seed=4).x)
    assert a.x.shape == (400, 3, 8, 8) and np.bincount(a.y).tolist() == [100] * 4
    # nearest class mean classifies almost everything: class means really differ
    flat = a.x.reshape(len(a), -1)
    means = np.stack([flat[a.y == k].mean(0) for k in range(4)])
    pred = np.argmin(((flat[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == a.y).mean() > 0.95


def test_dataset_validation():
    x = np.zeros((3, 1, 2, 2))
    with pytest.raises(UserError, match="3 images but 2 labels"):
        Dataset(x, np.array([0, 1]), 2)
    with pytest.raises(UserError, match="labels must be in"):
        Dataset(x, np.array([0, 1, 2]), 2)
    with pytest.raises(UserError, match="N,C,H,W"):
        Dataset(np.zeros((3, 4)), np.array([0, 1, 1]), 2)
    ds = Dataset(x, [0, 1, 1], 2)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64


# --------------------------------------------------------------------------- statistics


def test_channel_stats_and_normalize():
    rng = np.random.default_rng(0)
    scale, shift = np.array([2, 3, 0.5]), np.array([1, -2, 5])
    x = (rng.standard_normal((50, 3, 4, 4)) * scale[:, None, None] + shift[:, None, None]).astype(np.float32)
    x[:, 2] = 7.0  # constant channel must not produce std 0
    mean, std = channel_stats(x)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std[:2], x[:, :2].astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-5)
    assert std[2] == 1.0
    z = normalize(x, mean, std)
    assert z.dtype == np.float32 and z is not x
    np.testing.assert_allclose(z[:, :2].mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, :2].std(axis=(0, 2, 3)), 1, atol=1e-5)
    np.testing.assert_array_equal(z[:, 2], 0)
    with pytest.raises(UserError):
        normalize(x, mean[:2], std[:2])


# --------------------------------------------------------------------------- split


def _indexed(n=300, weights=(0.5, 0.3, 0.2)):
    """Dataset whose x[i, 0, 0, 0] == i, with imbalanced classes."""
    rng = np.random.default_rng(1)
    x = np.zeros((n, 1, 2, 2), np.float32)
    x[:, 0, 0, 0] = np.arange(n)
    return Dataset(x, rng.choice(len(weights), size=n, p=weights), len(weights), "idx")


def _ids(ds):
    return ds.x[:, 0, 0, 0].astype(np.int64)


def test_split_disjoint_covering_stratified_deterministic():
    ds = _indexed()
    s = split(ds, val_fraction=0.2, test_fraction=0.1, seed=5)
    ids = [_ids(p) for p in s]
    all_ids = np.concatenate(ids)
    assert len(all_ids) == len(ds) and len(np.unique(all_ids)) == len(ds)  # disjoint + covering
    for part, frac in ((s.val, 0.2), (s.test, 0.1)):
        for k in range(3):
            n_k = int((ds.y == k).sum())
            assert abs(int((part.y == k).sum()) - n_k * frac) <= 1  # stratified
    for p, i in zip(s, ids):
        np.testing.assert_array_equal(p.y, ds.y[i])  # labels travel with their images
    again = split(ds, val_fraction=0.2, test_fraction=0.1, seed=5)
    for p, q in zip(s, again):
        np.testing.assert_array_equal(_ids(p), _ids(q))
    assert not np.array_equal(_ids(split(ds, 0.2, 0.1, seed=6).val), _ids(s.val))


def test_split_no_test_and_bad_fractions():
    s = split(_indexed(), val_fraction=0.25)
    assert len(s.test) == 0 and s.test.x.shape[1:] == (1, 2, 2)
    with pytest.raises(UserError, match="val_fraction"):
        split(_indexed(), val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(UserError, match="val_fraction"):
        split(_indexed(), val_fraction=-0.1)


# --------------------------------------------------------------------------- augmentation


def test_random_flip_mirrors_known_images():
    x = np.tile(np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4), (64, 2, 1, 1))
    x += np.arange(64, dtype=np.float32)[:, None, None, None] * 100
    out = random_flip(x, np.random.default_rng(0))
    flipped = np.array([np.array_equal(o, xi[:, :, ::-1]) for o, xi in zip(out, x)])
    kept = np.array([np.array_equal(o, xi) for o, xi in zip(out, x)])
    assert np.all(flipped ^ kept) and 16 < flipped.sum() < 48
    i = int(np.argmax(flipped))
    np.testing.assert_array_equal(out[i, 0, 0] - 100 * i, [3, 2, 1, 0])
    np.testing.assert_array_equal(out[i, 1, 2] - 100 * i, [11, 10, 9, 8])
    np.testing.assert_array_equal(x[0, 0, 0], [0, 1, 2, 3])  # input untouched
    np.testing.assert_array_equal(out, random_flip(x, np.random.default_rng(0)))


def test_random_pad_crop_is_shifted_window_of_padded_input():
    pad = 2
    x = np.random.default_rng(0).random((40, 2, 5, 6)).astype(np.float32) + 1  # no zeros
    out = random_pad_crop(x, np.random.default_rng(1), pad=pad)
    assert out.shape == x.shape and out.dtype == np.float32
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    offsets = []
    for o, p in zip(out, padded):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if np.array_equal(o, p[:, dy:dy + 5, dx:dx + 6])]
        assert len(hits) == 1
        offsets.append(hits[0])
    assert len(set(offsets)) > 5  # per-image offsets, not one shift for the batch
    np.testing.assert_array_equal(out, random_pad_crop(x, np.random.default_rng(1), pad=pad))
    np.testing.assert_array_equal(random_pad_crop(x, np.random.default_rng(1), pad=0), x)


def test_flip_and_crop_deterministic():
    x = np.random.default_rng(0).random((8, 3, 32, 32)).astype(np.float32)
    a = flip_and_crop(x, np.random.default_rng(9))
    assert a.shape == x.shape
    np.testing.assert_array_equal(a, flip_and_crop(x, np.random.default_rng(9)))


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize("drop_last", [False, True])
def test_iterate_batches_epoch_coverage(drop_last):
    ds = _indexed(n=103)
    batches = list(iterate_batches(ds, 10, shuffle=True, rng=np.random.default_rng(0), drop_last=drop_last))
    assert len(batches) == num_batches(103, 10, drop_last) == (10 if drop_last else 11)
    ids = np.concatenate([_ids(Dataset(x, y, 3)) for x, y in batches])
    for x, y in batches:
        np.testing.assert_array_equal(y, ds.y[_ids(Dataset(x, y, 3))])
    if drop_last:
        assert len(ids) == 100 and len(np.unique(ids)) == 100
    else:
        np.testing.assert_array_equal(np.sort(ids), np.arange(103))
        assert not np.array_equal(ids, np.arange(103))  # actually shuffled


def test_iterate_batches_reproducible_with_augment():
    ds = synthetic_dataset(50, 3, shape=(3, 8, 8))

    def epochs(seed):
        rng = np.random.default_rng(seed)
        return [[(x.tobytes(), y.tobytes()) for x, y in
                 iterate_batches(ds, 16, True, rng, augment=flip_and_crop)] for _ in range(2)]

    a, b = epochs(0), epochs(0)
    assert a == b  # byte-identical across runs
    assert a[0] != a[1]  # the generator advances between epochs
    assert epochs(1) != a


def test_iterate_batches_shares_of_processes_put_together_are_the_batches():
    ds = synthetic_dataset(50, 3, shape=(3, 8, 8))

    def epoch(**share):
        return list(iterate_batches(ds, 16, True, np.random.default_rng(4), flip_and_crop, **share))

    whole = epoch()
    parts = [epoch(part=(k, 3)) for k in range(3)]  # rows of every batch, augmented as in the whole batch
    for b, (x, y) in enumerate(whole):
        assert [len(p[b][1]) for p in parts] == [len(y) * (k + 1) // 3 - len(y) * k // 3 for k in range(3)]
        np.testing.assert_array_equal(np.concatenate([p[b][0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[b][1] for p in parts]), y)
    plain = list(iterate_batches(ds, 16, False))
    strided = [list(iterate_batches(ds, 16, False, stride=(k, 2))) for k in range(2)]
    assert [len(s) for s in strided] == [2, 2]
    for b, (x, _) in enumerate(plain):  # every other batch, each the unshared one
        np.testing.assert_array_equal(strided[b % 2][b // 2][0], x)
    with pytest.raises(UserError, match="stride"):
        iterate_batches(ds, 16, True, np.random.default_rng(0), stride=(0, 2))
    with pytest.raises(UserError, match="part"):
        iterate_batches(ds, 16, False, part=(2, 2))


def test_iterate_batches_in_order_and_errors():
    ds = _indexed(n=7)
    xs = [x for x, _ in iterate_batches(ds, 3, shuffle=False)]
    assert [len(x) for x in xs] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(xs)[:, 0, 0, 0], np.arange(7))
    with pytest.raises(UserError, match="rng"):
        iterate_batches(ds, 3, shuffle=True)
    with pytest.raises(UserError, match="batch_size"):
        iterate_batches(ds, 0, shuffle=False)


# --------------------------------------------------------------------------- get_dataset


def test_get_dataset_digits():
    s = get_dataset("digits", val_fraction=0.15, test_fraction=0.15, seed=0)
    assert len(s.train) + len(s.val) + len(s.test) == 1797 and s.num_classes == 10
    assert 250 <= len(s.val) <= 290 and 250 <= len(s.test) <= 290
    np.testing.assert_allclose(s.train.x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(s.train.x.std(axis=(0, 2, 3)), 1, atol=1e-4)
    # stats are those of the raw train split, not of the whole set
    raw = split(load_digits_dataset(), 0.15, 0.15, seed=0)
    mean, std = channel_stats(raw.train.x)
    np.testing.assert_array_equal(s.mean, mean)
    np.testing.assert_allclose(s.test.x, normalize(raw.test.x, mean, std), atol=1e-6)


def test_get_dataset_cifar_uses_test_archive(tmp_path):
    _write_cifar10(tmp_path)
    s = get_dataset("cifar10", tmp_path, val_fraction=0.2, seed=0)
    raw_train, raw_test = load_cifar(tmp_path, 10)
    assert len(s.train) + len(s.val) == len(raw_train) and len(s.val) > 0
    np.testing.assert_array_equal(s.test.y, raw_test.y)
    np.testing.assert_allclose(s.test.x * s.std[None, :, None, None] + s.mean[None, :, None, None],
                               raw_test.x, atol=1e-5)
    assert s.mean.shape == (3,) and s.num_classes == 10


def test_get_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="digits, cifar10, cifar100, synthetic"):
        get_dataset("mnist")
    with pytest.raises(UserError, match="path"):
        get_dataset("cifar100")
    with pytest.raises(UserError, match="path"):
        get_dataset("digits", tmp_path)


def test_get_dataset_synthetic():
    s = get_dataset("synthetic", synthetic_n=120, synthetic_classes=3, val_fraction=0.25, test_fraction=0.25)
    assert (len(s.train), len(s.val), len(s.test)) == (60, 30, 30) and s.num_classes == 3
