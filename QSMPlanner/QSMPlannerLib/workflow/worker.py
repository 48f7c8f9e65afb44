"""``python -m QSMPlannerLib.workflow.worker JOBDIR``: run the stage described by JOBDIR/inputs.pkl5 (see
``jobs.Job``), reporting progress in JOBDIR/progress.txt ("fraction<TAB>message") and stopping at the next
progress check once JOBDIR/cancel exists. Writes JOBDIR/outputs.pkl5 and JOBDIR/status.json."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path


def _write_atomic(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv=None) -> int:
    from ..progress import Progress
    from . import jobs
    argv = sys.argv[1:] if argv is None else argv
    job_dir = Path(argv[0])
    cancel = threading.Event()

    def watch():
        while not cancel.is_set():
            if (job_dir / "cancel").exists():
                cancel.set()
            time.sleep(0.2)
    threading.Thread(target=watch, daemon=True).start()
    last = [0.0]

    def report(fraction, message):
        now = time.monotonic()
        if now - last[0] >= 0.1 or fraction >= 1.0:
            last[0] = now
            _write_atomic(job_dir / "progress.txt", f"{fraction:.4f}\t{message}")

    status = {"ok": True}
    try:
        job = jobs.load(job_dir / "inputs.pkl5")
        result = jobs.run_stage(job["stage"], job["kwargs"], Progress(report, cancel))
        jobs.dump(jobs.in_vtk_order(result), job_dir / "outputs.pkl5")
    except BaseException as exc:  # noqa: BLE001 -- every failure goes back to the GUI as a status
        status = {"ok": False, "error_type": type(exc).__name__, "message": str(exc),
                  "trace": traceback.format_exc()}
    _write_atomic(job_dir / "status.json", json.dumps(status))
    cancel.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
