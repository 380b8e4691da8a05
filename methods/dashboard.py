"""TensorBoard event files of a run, written without any framework: ``<workdir>/tb/<stage>/``.

One TensorBoard run (a folder) per training stage (``baseline``, ``search``, ``finetune``,
``distill``, ``train``), plus ``report`` for the method's table. Only scalars:

* every training stage, at step = epoch (1-based): ``train/loss`` and each loss term
  ``train/<term>`` (``ce``, ``wd``, ``kd``, ``feature``; the epoch's mean), ``lr``,
  ``val/accuracy`` (%);
* ``dcff/temperature`` and ``dcff/changed_filters`` (kept indices that changed since the
  previous epoch, summed over the groups) at the epoch that uses them (``train``);
* ``hinge/mac_ratio_at_tau0`` after each search epoch (``search``);
* ``report``: ``compression/macs`` and ``compression/params`` of every row of the method's
  table, at step = the row's position (0: the network before compression).

Records are written with the ``tensorboard`` package's record writer and protocol buffers
(``pip install tensorboard``, which also gives the ``tensorboard --logdir`` viewer);
its ``SummaryWriter`` front ends would import TensorFlow (``tensorboard``) or PyTorch
(``tensorboardX``) into the run, so they are not used. Event files are append-only and
flushed after every write. A resumed stage starts a new file beginning with a
``SessionLog.START`` at its first new epoch, which makes TensorBoard hide what a killed
run wrote for the epochs it did not finish; values the killed run wrote for finished
epochs are kept and not written twice. :func:`read_scalars` reads a folder back the way
TensorBoard shows it.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Mapping

log = logging.getLogger("compress")

#: the history row of :func:`methods.common.fit` -> tag (``train_<term>`` rows map to ``train/<term>``)
EPOCH_TAGS = {"lr": "lr", "val_accuracy": "val/accuracy"}


def available() -> bool:
    """True when the ``tensorboard`` package (the record writer and its protocol buffers) imports."""
    try:
        from tensorboard.compat.proto import event_pb2  # noqa: F401
        from tensorboard.summary.writer.record_writer import RecordWriter  # noqa: F401
    except ImportError:
        return False
    return True


class _EventFile:
    """One append-only event file: the records of ``Event`` protocol buffers, flushed per write."""

    def __init__(self, folder: str):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = event_pb2, summary_pb2
        os.makedirs(folder, exist_ok=True)
        # TensorBoard reads a folder's files in name order: the nanosecond clock keeps a file
        # opened by a resumed run after the killed run's, even within one second
        now = time.time_ns()
        name = f"events.out.tfevents.{now // 10 ** 9:010d}.{socket.gethostname()}.{now:020d}"
        self._file = open(os.path.join(folder, name), "wb")  # noqa: SIM115 - closed by close()
        self._records = RecordWriter(self._file)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())
        self._file.flush()

    def start(self, step: int) -> None:
        """A restart marker: TensorBoard drops every value of the folder's earlier files at ``step`` or later."""
        self._write(self._event.Event(wall_time=time.time(), step=step,
                                      session_log=self._event.SessionLog(status=self._event.SessionLog.START)))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        summary = self._summary.Summary(value=[self._summary.Summary.Value(tag=t, simple_value=float(v))
                                               for t, v in values.items()])
        self._write(self._event.Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        self._file.close()


class Dashboard:
    """The event files of one run under ``root`` (None: switched off, every call does nothing)."""

    def __init__(self, root: str | None = None):
        self.root = root
        self._files: dict[str, _EventFile] = {}
        self._written: dict[str, set[tuple[str, int]]] = {}  # (tag, step) a killed run already wrote

    @classmethod
    def open(cls, root: str, enabled: bool) -> Dashboard:
        """The dashboard of a run (``log.tensorboard``); off, with a warning, without ``tensorboard``."""
        if not enabled:
            return cls()
        if not available():
            log.warning("log.tensorboard is on but the tensorboard package is not installed: no event files "
                        "(pip install tensorboard, or --config.log.tensorboard=false)")
            return cls()
        return cls(root)

    @property
    def on(self) -> bool:
        return self.root is not None

    def begin(self, stage: str, first_step: int) -> None:
        """Start ``stage``'s file of this run: values of earlier runs at ``first_step`` or later are
        hidden (they were not committed), those before it stay and are not written again."""
        if not self.on:
            return
        folder = os.path.join(self.root, stage)
        earlier = read_scalars(folder) if os.path.isdir(folder) else {}
        self._written[stage] = {(t, s) for t, points in earlier.items() for s, _ in points if s < first_step}
        if stage in self._files:
            self._files.pop(stage).close()
        self._files[stage] = _EventFile(folder)
        if earlier:
            self._files[stage].start(first_step)

    def scalars(self, stage: str, step: int, values: Mapping[str, float]) -> None:
        """Write ``{tag: value}`` at ``step`` into ``stage``'s folder (begun with first step 0 if not yet)."""
        if not self.on:
            return
        if stage not in self._files:
            self.begin(stage, 0)
        written = self._written[stage]
        values = {t: v for t, v in values.items() if (t, step) not in written}
        if values:
            self._files[stage].scalars(step, values)

    def epoch(self, stage: str, row: Mapping[str, float]) -> None:
        """The scalars of one history row of :func:`methods.common.fit` (loss terms, lr, val accuracy)."""
        values = {EPOCH_TAGS[k]: v for k, v in row.items() if k in EPOCH_TAGS}
        values.update({f"train/{k[len('train_'):]}": v for k, v in row.items() if k.startswith("train_")})
        self.scalars(stage, int(row["epoch"]), values)

    def table(self, rows: list[Mapping]) -> None:
        """MACs and parameters of every row of a method's table (a rerun replaces the previous table)."""
        if not self.on or not rows:
            return
        self.begin("report", 0)
        for i, row in enumerate(rows):
            self.scalars("report", i, {"compression/macs": row["macs"], "compression/params": row["params"]})

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _records(path: str):
    """The payloads of a TFRecord file; a record cut short by a kill ends the file."""
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            (n,) = struct.unpack("<Q", head[:8])
            data = f.read(n)
            if len(data) < n or len(f.read(4)) < 4:
                return
            yield data


def read_scalars(folder: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of one run folder as TensorBoard shows it: files in name
    order, a ``SessionLog.START`` at step ``s`` dropping the values before it at steps ``>= s``."""
    from tensorboard.compat.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for name in sorted(os.listdir(folder)):
        if "tfevents" not in name:
            continue
        for data in _records(os.path.join(folder, name)):
            event = event_pb2.Event.FromString(data)
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                out = {t: [(s, v) for s, v in points if s < event.step] for t, points in out.items()}
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out
