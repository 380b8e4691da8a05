"""Images per second (and per core) of the ImageNet folder loader, torchvision's DataLoader and tf.data.

    python benchmarks/loader_speed.py [--images 512] [--workers 2] [--batch 64] [--repeats 3]

Writes a folder of JPEGs (``--images`` of 256x256, smooth random pictures with noise, in
``--classes`` class folders) to a temporary directory, then reads it for training with the
same transform in each contestant: random-resized-crop to 224 (scale 0.08-1, ratio 3/4-4/3),
horizontal flip, ``(x / 255 - mean) / std``, shuffled batches of ``--batch``:

* ``ours``: :func:`compress_core.data.iterate_batches` over the folder dataset, decoding in
  ``--workers`` processes (``ours-inline``: in the calling process);
* ``torchvision``: ``DataLoader(ImageFolder(...), num_workers=--workers)``;
* ``tf.data``: ``list_files -> shuffle -> map(decode_jpeg, sample_distorted_bounding_box,
  resize, flip, normalise) -> batch -> prefetch`` with a private thread pool of ``--workers``.

The contestants run in turns, ``--repeats`` rounds: in each round every contestant runs in a
fresh process, one warm-up epoch (worker start-up, a warm file cache) then one timed epoch. The
table gives the median images per second and that divided by the cores it decodes on (its
workers, or 1 for the in-process loader).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTESTANTS = ("ours", "ours-inline", "torchvision", "tf.data")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_folder(root: str, images: int, classes: int, side: int = 256) -> None:
    """``root/{train,val}/cNN/*.JPEG``: smooth colour fields plus noise (JPEG's usual work), seeded."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    for split, n in (("train", images), ("val", classes)):
        for i in range(n):
            folder = os.path.join(root, split, f"c{i % classes:02d}")
            os.makedirs(folder, exist_ok=True)
            a = rng.uniform(0, 1, (3, 3))
            img = np.stack([a[c, 0] * xx + a[c, 1] * yy + a[c, 2] * np.sin(6 * xx * yy) for c in range(3)], -1)
            img = np.clip(255 * img / max(img.max(), 1e-6) + rng.normal(0, 12, img.shape), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(os.path.join(folder, f"{i:05d}.JPEG"), quality=90)


def epoch_ours(root: str, batch: int, workers: int):
    from compress_core import data
    from compress_core.data import imagefolder

    train, _ = imagefolder.load_image_folder(root, 224, workers)
    epoch = [0]

    def run() -> int:
        epoch[0] += 1
        rng = np.random.default_rng([0, epoch[0]])
        return sum(len(y) for _, y in data.iterate_batches(train, batch, True, rng, data.flip_and_crop))
    return run


def epoch_torchvision(root: str, batch: int, workers: int):
    import torch

    from backends.torch.compat import torchvision_models

    torchvision_models()  # makes torchvision importable beside this torch whatever its build
    from torchvision import datasets, transforms

    t = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                            transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(os.path.join(root, "train"), t), batch_size=batch,
                                         shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    return lambda: sum(len(y) for _, y in loader)


def epoch_tfdata(root: str, batch: int, workers: int):
    import tensorflow as tf

    names = sorted(os.listdir(os.path.join(root, "train")))
    files = sorted(os.path.join(root, "train", c, f) for c in names for f in os.listdir(os.path.join(root, "train", c)))
    labels = [names.index(os.path.basename(os.path.dirname(f))) for f in files]
    mean, std = tf.constant(MEAN) * 255.0, tf.constant(STD) * 255.0

    def load(path, label):
        img = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(img), tf.zeros([0, 0, 4]), area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
            max_attempts=10, use_image_if_no_bounding_boxes=True)
        img = tf.image.resize(tf.slice(img, begin, size), (224, 224))
        img = tf.image.random_flip_left_right(img)
        return tf.transpose((img - mean) / std, (2, 0, 1)), label

    options = tf.data.Options()
    options.threading.private_threadpool_size = max(1, workers)
    ds = (tf.data.Dataset.from_tensor_slices((files, labels)).shuffle(len(files), seed=0)
          .map(load, num_parallel_calls=max(1, workers)).batch(batch).prefetch(2).with_options(options))
    return lambda: sum(int(y.shape[0]) for _, y in ds)


def child(name: str, root: str, batch: int, workers: int, repeats: int) -> None:
    """One contestant: a warm-up epoch, then ``repeats`` timed ones; prints the image count and times as JSON."""
    make = {"ours": epoch_ours, "ours-inline": epoch_ours, "torchvision": epoch_torchvision,
            "tf.data": epoch_tfdata}[name]
    run = make(root, batch, 0 if name == "ours-inline" else workers)
    images = run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    print(json.dumps({"images": images, "times": times}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--contestants", default=",".join(CONTESTANTS))
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--root", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.root, args.batch, args.workers, 1)
        return
    names = args.contestants.split(",")
    bad = [n for n in names if n not in CONTESTANTS]
    if bad:
        raise SystemExit(f"error: unknown contestant {bad[0]!r} (choose from: {', '.join(CONTESTANTS)})")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    with tempfile.TemporaryDirectory() as root:
        write_folder(root, args.images, args.classes)
        rates: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(args.repeats):  # in turns: one timed epoch of each contestant per round
            for n in names:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", n, "--root", root,
                       "--batch", str(args.batch), "--workers", str(args.workers)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rates[n] += [r["images"] / t for t in r["times"]]
    print(f"{args.images} JPEGs 256x256 -> random-resized-crop 224 + flip + normalise, batch {args.batch}, "
          f"{args.workers} workers, {os.cpu_count()} CPU cores; median of {args.repeats} epochs, each after a "
          f"warm-up epoch in a fresh process")
    print(f"{'loader':<14}{'images/s':>10}{'cores':>7}{'images/s/core':>15}")
    for n in names:
        cores = 1 if n == "ours-inline" else max(1, args.workers)
        rate = float(np.median(rates[n]))
        print(f"{n:<14}{rate:>10.0f}{cores:>7}{rate / cores:>15.0f}")


if __name__ == "__main__":
    main()
