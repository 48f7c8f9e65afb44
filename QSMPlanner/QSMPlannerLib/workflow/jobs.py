"""Stages run in a separate Python process, so a GUI's event loop never waits on them.

Slicer's main thread holds the Python GIL (PythonQt never releases it), so a worker *thread* only advances
while the GUI polls it, and numba's parallel kernels started from two threads can abort the process. A
``Job`` instead runs one stage function (``STAGES``) in ``python -m QSMPlannerLib.workflow.worker JOBDIR``.
``step()`` never blocks for long: it writes the inputs a slice at a time, then only reads a small
progress file, then reads the outputs a slice at a time. Inputs and outputs are pickles (protocol 5)
whose large buffers (numpy arrays) are written and read in chunks of ``CHUNK_BYTES``.

``run_stage`` runs the same stage in this process (scripts, tests).
"""
from __future__ import annotations

import inspect
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from ..errors import InputError, ProcessingError
from ..progress import Cancelled

CHUNK_BYTES = 16 << 20          # per step: ~10 ms of memory-to-page-cache copying
CANCEL_GRACE_S = 5.0            # a cancelled worker that has not stopped by then is terminated
_LIB_PARENT = Path(__file__).resolve().parents[2]   # the folder that holds QSMPlannerLib


def stage_function(name: str):
    """The function a stage name stands for (imported on demand: the GUI process stays light)."""
    from . import stages
    table = {
        "digital_patient": ("..phantom", "make_patient"),
        "read_gre": (None, "read_gre"),
        "qsm": (None, "reconstruct_qsm"),
        "register_gre_to_t1": ("..registration", "register_gre_to_t1"),
        "register_ct_to_t1": ("..registration", "register_ct_to_t1"),
        "register_to_t1": ("..registration", "register_to_t1"),
        "normalize_t1": (None, "normalize_t1"),
        "segment": (None, "segment"),
        "prior_and_segment": (None, "prior_and_segment"),
        "risk_map": (None, "risk_map"),
        "register_frame": (None, "register_frame"),
        "plan_side": (None, "plan_side"),
    }
    if name not in table:
        raise InputError(f"unknown stage {name!r}; valid: {', '.join(sorted(table))}")
    module, attr = table[name]
    if module is None:
        return getattr(stages, attr)
    import importlib
    return getattr(importlib.import_module(module, __package__), attr)


def run_stage(stage: str, kwargs: dict, progress=None):
    """Run ``stage`` in this process with ``kwargs`` and ``progress``: ``(result, messages)``, the notes a
    stage with a ``messages`` argument made."""
    fn = stage_function(stage)
    kwargs, messages = dict(kwargs), []
    if "messages" in inspect.signature(fn).parameters:
        kwargs["messages"] = messages
    return fn(**kwargs, progress=progress), messages


# ---- chunked pickles -------------------------------------------------------------------------------
class ChunkedWriter:
    """Writes ``obj`` to ``path`` (pickle protocol 5 with out-of-band buffers) a chunk per ``step``."""

    def __init__(self, obj, path):
        buffers = []
        header = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        self._views = [b.raw() for b in buffers]
        self._file = open(path, "wb")
        self._file.write(struct.pack("<QQ", len(header), len(self._views)))
        self._file.write(struct.pack(f"<{len(self._views)}Q", *[v.nbytes for v in self._views]))
        self._file.write(header)
        self._index, self._offset = 0, 0
        self.done = False

    def step(self, max_bytes: int = CHUNK_BYTES) -> bool:
        budget = max_bytes
        while budget > 0 and self._index < len(self._views):
            view = self._views[self._index]
            n = min(budget, view.nbytes - self._offset)
            self._file.write(view[self._offset:self._offset + n])
            self._offset += n
            budget -= n
            if self._offset >= view.nbytes:
                self._index, self._offset = self._index + 1, 0
        if self._index >= len(self._views):
            self._file.close()
            self._views = []
            self.done = True
        return self.done

    def close(self):
        if not self._file.closed:
            self._file.close()


class ChunkedReader:
    """Reads a ``ChunkedWriter`` file a chunk per ``step``; ``result`` once done."""

    def __init__(self, path):
        self._file = open(path, "rb")
        n_header, n_buffers = struct.unpack("<QQ", self._file.read(16))
        sizes = struct.unpack(f"<{n_buffers}Q", self._file.read(8 * n_buffers)) if n_buffers else ()
        self._header = self._file.read(n_header)
        self._buffers = [np.empty(n, np.uint8) for n in sizes]   # not zeroed: pages come as they are read
        self._index, self._offset = 0, 0
        self.done = False
        self.result = None

    def step(self, max_bytes: int = CHUNK_BYTES) -> bool:
        budget = max_bytes
        while budget > 0 and self._index < len(self._buffers):
            buf = memoryview(self._buffers[self._index]).cast("B")
            n = min(budget, len(buf) - self._offset)
            got = self._file.readinto(buf[self._offset:self._offset + n])
            if not got:
                raise ProcessingError("a stage's output file ended early")
            self._offset += got
            budget -= got
            if self._offset >= len(buf):
                self._index, self._offset = self._index + 1, 0
        if self._index >= len(self._buffers):
            self._file.close()
            self.result = pickle.loads(self._header, buffers=self._buffers)
            self._buffers = []
            self.done = True
        return self.done

    def close(self):
        if not self._file.closed:
            self._file.close()


def in_vtk_order(obj, _seen=None):
    """``obj`` with its arrays of 3 or more dimensions in Fortran order (i fastest), the memory order of VTK
    images, changed in place through dataclasses, objects, dicts, lists and tuples: the GUI process then
    adds them to the scene without a transpose. Returns ``obj`` (a new tuple for a tuple)."""
    seen = set() if _seen is None else _seen
    if isinstance(obj, np.ndarray):
        return np.asfortranarray(obj) if obj.ndim >= 3 and not obj.flags.f_contiguous else obj
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return obj
    seen.add(id(obj))
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = in_vtk_order(v, seen)
    elif isinstance(obj, list):
        obj[:] = [in_vtk_order(v, seen) for v in obj]
    elif isinstance(obj, tuple):
        items = [in_vtk_order(v, seen) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for k, v in list(vars(obj).items()):
            new = in_vtk_order(v, seen)
            if new is not v:
                object.__setattr__(obj, k, new)
    return obj


def dump(obj, path) -> None:
    w = ChunkedWriter(obj, path)
    while not w.step(1 << 62):
        pass


def load(path):
    r = ChunkedReader(path)
    while not r.step(1 << 62):
        pass
    return r.result


# ---- the job ---------------------------------------------------------------------------------------
def _error_from_status(status: dict) -> BaseException:
    kind, message = status.get("error_type"), status.get("message", "")
    if kind == "InputError":
        return InputError(message)
    if kind == "Cancelled":
        return Cancelled(message or "cancelled by the user")
    if kind == "ProcessingError":
        return ProcessingError(message)
    return ProcessingError(f"{kind}: {message}")


class Job:
    """One stage in a worker process. Call ``step()`` from a timer until it returns True; then ``result``
    (``run_stage``'s (result, messages)) or ``error``. ``fraction`` / ``message`` report progress; ``cancel()`` asks the worker to stop."""

    def __init__(self, stage: str, kwargs: dict, python=None, launcher=None, workdir=None):
        stage_function(stage)  # an unknown stage fails here, not in the worker
        self.stage, self._kwargs = stage, kwargs
        self._python = list(python) if isinstance(python, (list, tuple)) else [python or sys.executable]
        self._launcher = launcher
        self.dir = Path(tempfile.mkdtemp(prefix="qsmplanner-job-", dir=workdir))
        self.fraction, self.message = 0.0, "starting"
        self.result, self.error, self.trace = None, None, ""
        self.done = False
        self._state = "writing"
        self._writer = None
        self._reader = None
        self._proc = None
        self._cancel_time = None
        self.started_s = time.monotonic()
        self.elapsed_s = 0.0

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)

    def _command(self):
        return self._python + ["-m", "QSMPlannerLib.workflow.worker", str(self.dir)]

    def _environment(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(_LIB_PARENT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        return env

    def _spawn(self):
        log = open(self.dir / "worker.log", "wb")
        try:
            if self._launcher is not None:
                self._proc = self._launcher(self._command(), self._environment(), log)
            else:
                self._proc = subprocess.Popen(self._command(), env=self._environment(), stdout=log,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def step(self) -> bool:
        """Advance by one bounded piece of work; True once finished (result or error set)."""
        if self.done:
            return True
        try:
            if self._state == "writing":
                if self._writer is None:
                    self._writer = ChunkedWriter({"stage": self.stage, "kwargs": self._kwargs},
                                                 self.dir / "inputs.pkl5")
                    self._kwargs = None
                if self._writer.step():
                    self._writer = None
                    self._spawn()
                    self._state = "running"
            elif self._state == "running":
                self._read_progress()
                if self._cancel_time is not None and time.monotonic() - self._cancel_time > CANCEL_GRACE_S:
                    self._proc.kill()
                code = self._proc.poll()
                if code is not None:
                    self._finish_run(code)
            elif self._state == "reading":
                if self._reader.step():
                    self.result = self._reader.result
                    self._reader = None
                    self._finish()
        except (OSError, pickle.PickleError, EOFError, struct.error) as exc:
            self.error = ProcessingError(f"the {self.stage} worker failed: {exc}")
            self.trace = traceback.format_exc()
            self._finish()
        return self.done

    def _read_progress(self):
        try:
            text = (self.dir / "progress.txt").read_text(encoding="utf-8")
        except OSError:
            return
        fraction, _, message = text.partition("\t")
        try:
            self.fraction = float(fraction)
        except ValueError:
            return
        if message.strip():
            self.message = message.strip()

    def _finish_run(self, code: int):
        self._read_progress()
        try:
            status = json.loads((self.dir / "status.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            status = None
        if self._cancel_time is not None and (status is None or not status.get("ok")):
            self.error = Cancelled("cancelled by the user")
            self._finish()
        elif status is None:
            log = (self.dir / "worker.log").read_text(encoding="utf-8", errors="replace")[-2000:]
            self.error = ProcessingError(f"the {self.stage} worker stopped (exit {code}) without a result")
            self.trace = log
            self._finish()
        elif not status.get("ok"):
            self.error = _error_from_status(status)
            self.trace = status.get("trace", "")
            self._finish()
        else:
            self._reader = ChunkedReader(self.dir / "outputs.pkl5")
            self._state = "reading"

    def _finish(self):
        self.done = True
        self.elapsed_s = time.monotonic() - self.started_s
        for part in (self._writer, self._reader):
            if part is not None:
                part.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def cancel(self):
        """Ask the stage to stop at its next progress check (then kill it after ``CANCEL_GRACE_S``)."""
        if self.done:
            return
        if self._state == "writing" or self._proc is None:
            self.error = Cancelled("cancelled by the user")
            self._finish()
            return
        if self._cancel_time is None:
            self._cancel_time = time.monotonic()
            (self.dir / "cancel").touch()

    def wait(self, poll_s: float = 0.05):
        """Step until finished (scripts and tests); returns self."""
        while not self.step():
            if self._state == "running":
                time.sleep(poll_s)
        return self
