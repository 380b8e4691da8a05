"""ImageNet-style folders: scanning, labels, lazy decoding, the two transforms, bad folders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from compress_core import data
from compress_core.data import imagefolder
from compress_core.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, FolderImages
from compress_core.errors import UserError

CLASSES = ("n01_cat", "n02_dog", "n03_eel")
SIZES = ((40, 50), (64, 48), (37, 37))  # (w, h): portrait, landscape, square


def _write(path, w, h, seed, fmt="JPEG"):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, fmt)
    return pixels


@pytest.fixture()
def root(tmp_path):
    seed = 0
    for split, per_class in (("train", 3), ("val", 2)):
        for c in CLASSES:
            for i in range(per_class):
                ext, fmt = ((".JPEG", "JPEG"), (".jpg", "JPEG"), (".png", "PNG"))[i]
                _write(tmp_path / split / c / f"img{i}{ext}", *SIZES[i], seed, fmt)
                seed += 1
    (tmp_path / "train" / CLASSES[0] / "notes.txt").write_text("not an image")
    return tmp_path


def test_labels_shapes_and_class_order(root):
    train, val = imagefolder.load_image_folder(root, size=32, workers=1)
    assert train.class_names == CLASSES and train.num_classes == 3
    assert train.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and val.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert train.x.shape == (9, 3, 32, 32) and len(train) == 9
    assert train.x.files[0].endswith("n01_cat/img0.JPEG")  # the .txt file is not an image
    batch = train.x[[0, 4, 8]]
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == np.float32
    assert train.x[2:5].shape == (3, 3, 32, 32) and train.x[3].shape == (3, 32, 32)
    np.testing.assert_array_equal(train.x[4], batch[1])
    sub = train.subset(np.array([8, 0]))
    assert sub.y.tolist() == [2, 0] and sub.x.files == (train.x.files[8], train.x.files[0])


def test_eval_transform_by_hand_on_a_lossless_image(tmp_path):
    # size 28: the short side is resized to round(28 / 0.875) = 32, which a 32x40 image already has,
    # so the transform is the centre crop rows 6..33, columns 2..29, then (p/255 - mean) / std
    pixels = _write(tmp_path / "a.png", 32, 40, seed=5, fmt="PNG")
    got = FolderImages([tmp_path / "a.png"], size=28).decode([0])[0]
    want = (pixels[6:34, 2:30].transpose(2, 0, 1) / 255.0 - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # 224-crop recipe: resize to 256, crop 224
    assert imagefolder.eval_resize(224) == 256 and imagefolder.center_crop_box(341, 256, 224) == (58, 16, 282, 240)


def test_eval_is_deterministic_and_train_follows_the_generator(root):
    train, _ = imagefolder.load_image_folder(root, size=32, workers=1)
    idx = np.arange(9)
    np.testing.assert_array_equal(train.take(idx), train.take(idx))
    np.testing.assert_array_equal(train.take(idx), train.x[idx])  # no augment: evaluation transform
    a = train.take(idx, np.random.default_rng(7), data.flip_and_crop)
    threaded, _ = imagefolder.load_image_folder(root, size=32, workers=3)
    b = threaded.take(idx, np.random.default_rng(7), data.flip_and_crop)
    np.testing.assert_array_equal(a, b)  # same numbers whatever the thread count
    # a data-parallel share decodes only its rows, with the random numbers of the whole batch
    np.testing.assert_array_equal(train.take(idx, np.random.default_rng(7), data.flip_and_crop, slice(4, 7)), a[4:7])
    c = train.take(idx, np.random.default_rng(8), data.flip_and_crop)
    assert a.shape == (9, 3, 32, 32) and not np.array_equal(a, c) and not np.array_equal(a, train.x[idx])
    # iterate_batches reads through take: shuffled, augmented, identical for identical seeds
    epochs = [list(data.iterate_batches(train, 4, True, np.random.default_rng(1), data.flip_and_crop))
              for _ in range(2)]
    assert [len(y) for _, y in epochs[0]] == [4, 4, 1]
    for (x1, y1), (x2, y2) in zip(*epochs):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_random_resized_crop_parameters():
    u = np.zeros((10, 4))
    # area 0.08 * 100 * 80 = 640 at ratio 3/4: 21.9 x 29.2 -> 22 x 29 at the top-left corner
    assert imagefolder.random_crop_box(100, 80, u) == (0, 0, 22, 29)
    u[0, 2:] = 0.999  # offsets floor(0.999 * (80 - 29 + 1)) = 51 and floor(0.999 * (100 - 22 + 1)) = 78
    assert imagefolder.random_crop_box(100, 80, u) == (78, 51, 100, 80)
    # a crop of the whole area at ratio 4/3 never fits a square image: central fallback, the whole image
    assert imagefolder.random_crop_box(50, 50, np.full((10, 4), 0.999)) == (0, 0, 50, 50)
    # fallback of a very wide image: aspect clamped to 4/3
    assert imagefolder.random_crop_box(300, 30, np.full((10, 4), 0.999)) == (130, 0, 170, 30)


def test_get_dataset_imagenet_splits(root):
    s = data.get_dataset("imagenet", root, val_fraction=1 / 3, seed=0, image_size=32, workers=1)
    assert len(s.train) == 6 and len(s.val) == 3 and len(s.test) == 6 and s.num_classes == 3
    assert sorted(s.val.y.tolist()) == [0, 1, 2]  # stratified
    assert set(s.train.x.files).isdisjoint(s.val.x.files)
    np.testing.assert_array_equal(s.mean, IMAGENET_MEAN)
    batches = list(data.iterate_batches(s.test, 4, False))
    assert [b[0].shape for b in batches] == [(4, 3, 32, 32), (2, 3, 32, 32)]


def test_bad_folders(root, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        imagefolder.load_image_folder(tmp_path / "nowhere")
    with pytest.raises(UserError, match="needs path"):
        data.get_dataset("imagenet")
    (root / "val" / CLASSES[2] / "img0.JPEG").unlink()
    (root / "val" / CLASSES[2] / "img1.jpg").unlink()
    with pytest.raises(UserError, match=f"{CLASSES[2]}.* holds no image"):
        imagefolder.load_image_folder(root)
    (root / "val" / CLASSES[2]).rmdir()
    with pytest.raises(UserError, match=f"class '{CLASSES[2]}' of .*train is missing from .*val"):
        imagefolder.load_image_folder(root)
    _write(root / "val" / "n09_extra" / "a.JPEG", 8, 8, seed=0)
    _write(root / "val" / CLASSES[2] / "a.JPEG", 8, 8, seed=0)
    with pytest.raises(UserError, match="class 'n09_extra' of .*val is missing from .*train"):
        imagefolder.load_image_folder(root)
    no_val = tmp_path / "no_val"
    _write(no_val / "train" / "a" / "x.JPEG", 8, 8, seed=0)
    with pytest.raises(UserError, match="no 'val' directory"):
        imagefolder.load_image_folder(no_val)
    broken = tmp_path / "broken"
    for split in ("train", "val"):
        (broken / split / "a").mkdir(parents=True)
        (broken / split / "a" / "x.JPEG").write_bytes(b"not a jpeg")
    train, _ = imagefolder.load_image_folder(broken, size=8)
    with pytest.raises(UserError, match="cannot decode image .*x.JPEG"):
        train.x[0]
    with pytest.raises(UserError, match="image size"):
        FolderImages([], size=0)


def test_worker_processes_give_the_in_process_batches(root):
    """Decoding in 2 processes, 1 batch ahead, yields the batches (order, crops, flips) of the calling process."""
    inline, _ = imagefolder.load_image_folder(root, size=32, workers=0)
    pooled, _ = imagefolder.load_image_folder(root, size=32, workers=2)
    pooled = dataclasses.replace(pooled, x=FolderImages(pooled.x.files, 32, workers=2, prefetch=1))
    for shuffle, augment in ((True, data.flip_and_crop), (False, None)):
        want = list(data.iterate_batches(inline, 2, shuffle, np.random.default_rng(3), augment))
        got = list(data.iterate_batches(pooled, 2, shuffle, np.random.default_rng(3), augment))
        assert len(got) == len(want) == 5
        for (x1, y1), (x2, y2) in zip(want, got):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)
    # a consumer that stops early leaves nothing running; a broken file fails in the worker with its name
    next(iter(data.iterate_batches(pooled, 2, True, np.random.default_rng(3), data.flip_and_crop)))
    (root / "train" / CLASSES[1] / "img0.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="cannot decode image .*img0.JPEG"):
        list(data.iterate_batches(pooled, 4, False))
    with pytest.raises(UserError, match="decoding workers"):
        FolderImages([], workers=-2)
