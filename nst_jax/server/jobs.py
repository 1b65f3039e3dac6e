"""The job store: one SQLite database (WAL mode) plus one folder of files per job under `data_dir`.

Statuses: queued -> running -> done | failed | cancelled (running -> queued again when the worker stops
or the server restarts; the job then continues from its last checkpoint). Each thread gets its own
connection; WAL lets the web handlers read while the worker writes.

Files of job `id` live in `data_dir/jobs/<id>/`: `content.npy`, `style.npy`, `style2.npy`... and the masks
(the prepared float32 inputs the job runs from: `worker.input_name`), `content.png`, `style.png`... (8-bit
copies for the page; the uploaded bytes and file names are never written), `preview.jpg`, `result.png`,
`checkpoints/` (the engine's orbax checkpoints; removed when the job is done or cancelled). A video job
(`kind` 'video') has instead of a photo `frames/frame_00001.png`... (the decoded clip; `content.png` is its
first frame), `clip.json` (frame rate), `audio.m4a` (its sound re-encoded, if any), `run/` (the `run_video`
workdir: flow, per-frame checkpoints and finished frames; removed when done or cancelled) and `result.mp4`.
Job ids come from `secrets.token_urlsafe`, never from user input.

Progress: `step` / `steps` count the steps of the running job (for a video: of the frame being stylised);
`frame` / `frames` count a video's finished frames over all passes; `progress` is the share of the whole job
done (a video: finished frames plus the running frames' shares of their steps, over all passes), and
`progress_figures` turns it into the page's bar and ETA. Every change of status is logged as one line
(`log_line`) on the `nst_jax.server` logger.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time

ACTIVE = ("queued", "running")
TERMINAL = ("done", "failed", "cancelled")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
log = logging.getLogger("nst_jax.server")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT UNIQUE NOT NULL,
  owner TEXT NOT NULL,
  status TEXT NOT NULL,
  options TEXT NOT NULL,
  label TEXT NOT NULL DEFAULT '',
  height INTEGER NOT NULL,
  width INTEGER NOT NULL,
  steps INTEGER NOT NULL,
  step INTEGER NOT NULL DEFAULT 0,
  checkpoint_step INTEGER NOT NULL DEFAULT 0,
  resumed_from INTEGER NOT NULL DEFAULT 0,
  steps_per_second REAL,
  preview_version INTEGER NOT NULL DEFAULT 0,
  batch_size INTEGER NOT NULL DEFAULT 0,
  error TEXT,
  created REAL NOT NULL,
  started REAL,
  finished REAL,
  kind TEXT NOT NULL DEFAULT 'image',
  frames INTEGER NOT NULL DEFAULT 0,
  frame INTEGER NOT NULL DEFAULT 0,
  temporal_error REAL,
  progress REAL NOT NULL DEFAULT 0,
  progress_at REAL,
  rate_since REAL,
  rate_progress0 REAL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS losses (
  job_id TEXT NOT NULL,
  step INTEGER NOT NULL,
  total REAL, content REAL, style REAL, tv REAL,
  PRIMARY KEY (job_id, step)
);
"""


# Columns added after the first release, with their declarations (added to older databases on open).
_ADDED_COLUMNS = {"kind": "TEXT NOT NULL DEFAULT 'image'", "frames": "INTEGER NOT NULL DEFAULT 0",
                  "frame": "INTEGER NOT NULL DEFAULT 0", "temporal_error": "REAL",
                  "progress": "REAL NOT NULL DEFAULT 0", "progress_at": "REAL", "rate_since": "REAL",
                  "rate_progress0": "REAL"}


def new_job_id() -> str:
  """An unguessable id (about 160 random bits)."""
  return secrets.token_urlsafe(20)


def valid_job_id(job_id: str) -> bool:
  return bool(_ID_RE.match(job_id or ""))


class JobStore:
  """Jobs in SQLite plus their files on disk. Thread-safe (one connection per thread)."""

  def __init__(self, data_dir: str):
    self.data_dir = os.path.abspath(data_dir)
    os.makedirs(os.path.join(self.data_dir, "jobs"), exist_ok=True)
    self.db_path = os.path.join(self.data_dir, "jobs.sqlite3")
    self._local = threading.local()
    with self._db() as db:
      db.execute("PRAGMA journal_mode=WAL")
      db.executescript(_SCHEMA)
      columns = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
      for column, declaration in _ADDED_COLUMNS.items():  # A database made before video jobs existed.
        if column not in columns:
          db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")

  @contextlib.contextmanager
  def _db(self):
    conn = getattr(self._local, "conn", None)
    if conn is None:
      conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
      conn.row_factory = sqlite3.Row
      conn.execute("PRAGMA synchronous=NORMAL")
      conn.execute("PRAGMA busy_timeout=30000")
      self._local.conn = conn
    yield conn

  # ---- files ------------------------------------------------------------------------------------------------

  def job_dir(self, job_id: str) -> str:
    if not valid_job_id(job_id):
      raise ValueError(f"bad job id {job_id!r}")
    return os.path.join(self.data_dir, "jobs", job_id)

  def path(self, job_id: str, name: str) -> str:
    return os.path.join(self.job_dir(job_id), name)

  def checkpoint_dir(self, job_id: str) -> str:
    return self.path(job_id, "checkpoints")

  def run_dir(self, job_id: str) -> str:
    """A video job's `run_video` workdir."""
    return self.path(job_id, "run")

  def remove_checkpoints(self, job_id: str) -> None:
    """Deletes a finished or cancelled job's checkpoints (they are only needed to resume)."""
    shutil.rmtree(self.checkpoint_dir(job_id), ignore_errors=True)
    shutil.rmtree(self.run_dir(job_id), ignore_errors=True)

  # ---- jobs -------------------------------------------------------------------------------------------------

  def create(self, *, job_id: str, owner: str, options: dict, label: str, height: int, width: int,
             steps: int, kind: str = "image", frames: int = 0) -> dict:
    """Inserts a queued job (its input files must already be in `job_dir(job_id)`)."""
    assert kind in ("image", "video")
    with self._db() as db:
      db.execute("INSERT INTO jobs (id, owner, status, options, label, height, width, steps, created, kind, frames) "
                 "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                 (job_id, owner, json.dumps(options), label, height, width, steps, time.time(), kind, frames))
    job = self.get(job_id)
    log_line(job, "queued")
    return job

  def get(self, job_id: str) -> dict | None:
    with self._db() as db:
      row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return _row(row)

  def list_owner(self, owner: str, limit: int = 50) -> list[dict]:
    with self._db() as db:
      rows = db.execute("SELECT * FROM jobs WHERE owner = ? ORDER BY seq DESC LIMIT ?", (owner, limit)).fetchall()
    return [_row(r) for r in rows]

  def queued(self) -> list[dict]:
    with self._db() as db:
      rows = db.execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq").fetchall()
    return [_row(r) for r in rows]

  def queue_position(self, job: dict) -> int | None:
    """1 = next to run; None when the job is not queued."""
    if job["status"] != "queued":
      return None
    with self._db() as db:
      (ahead,) = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq < ?",
                            (job["seq"],)).fetchone()
    return int(ahead) + 1

  def counts(self) -> dict:
    with self._db() as db:
      rows = db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
    return {r["status"]: r["n"] for r in rows}

  def claim(self, job_ids: list[str], batch_size: int) -> list[str]:
    """Marks queued jobs running; returns the ids that were still queued (a cancel may have won)."""
    claimed = []
    now = time.time()
    with self._db() as db:
      for job_id in job_ids:
        cur = db.execute("UPDATE jobs SET status = 'running', batch_size = ?, started = COALESCE(started, ?), "
                         "resumed_from = checkpoint_step, progress_at = NULL, rate_since = NULL, "
                         "rate_progress0 = NULL WHERE id = ? AND status = 'queued'", (batch_size, now, job_id))
        if cur.rowcount:
          claimed.append(job_id)
    for job_id in claimed:
      job = self.get(job_id)
      waited = now - job["created"] if job["resumed_from"] == 0 else None
      log_line(job, "started", f"batch of {batch_size}" + (f", {waited:.1f} s in the queue" if waited is not None
                                                            else f", resumed at step {job['resumed_from']}"))
    return claimed

  def set_started(self, job_id: str, step: int, resumed_from: int) -> None:
    """What the engine found when it started the job: its step and the checkpoint step it resumed from
    (0 = from scratch, e.g. when no checkpoint was saved before a crash)."""
    with self._db() as db:
      db.execute("UPDATE jobs SET step = ?, resumed_from = ?, checkpoint_step = ?, "
                 "progress = MIN(1.0, CAST(? AS REAL) / MAX(steps, 1)) WHERE id = ? AND kind = 'image'",
                 (int(step), int(resumed_from), int(resumed_from), int(step), job_id))

  def requeue_running(self) -> int:
    """After a restart: running jobs go back to the queue (they continue from their checkpoint)."""
    with self._db() as db:
      ids = [row["id"] for row in db.execute("SELECT id FROM jobs WHERE status = 'running'")]
      for job_id in ids:
        db.execute("UPDATE jobs SET status = 'queued', step = checkpoint_step WHERE id = ? AND status = 'running'",
                   (job_id,))
    for job_id in ids:
      job = self.get(job_id)
      log_line(job, "queued again", f"the server restarted; continues from step {job['checkpoint_step']}")
    return len(ids)

  def requeue(self, job_id: str) -> None:
    """A stopped job goes back to the queue (it continues from its checkpoint)."""
    with self._db() as db:
      cur = db.execute("UPDATE jobs SET status = 'queued', step = checkpoint_step WHERE id = ? AND status = 'running'",
                       (job_id,))
    if cur.rowcount:
      job = self.get(job_id)
      log_line(job, "stopped", f"back in the queue; continues from step {job['checkpoint_step']}")

  def update_progress(self, job_id: str, step: int, steps_per_second: float | None = None,
                      new_preview: bool = False, *, progress: float | None = None) -> None:
    """After a step: the step, the engine's step rate and a new preview. `progress` is the share of the job
    done (default: step / steps); the first update of a run (after its first, compiled, step) is where the
    ETA's rate is measured from."""
    now = time.time()
    with self._db() as db:
      db.execute("UPDATE jobs SET step = ?, steps_per_second = COALESCE(?, steps_per_second), "
                 "preview_version = preview_version + ?, progress = COALESCE(?, MIN(1.0, CAST(? AS REAL) / "
                 "MAX(steps, 1))), progress_at = ? WHERE id = ?",
                 (int(step), steps_per_second, int(new_preview), progress, int(step), now, job_id))
      db.execute("UPDATE jobs SET rate_since = progress_at, rate_progress0 = progress WHERE id = ? AND "
                 "rate_since IS NULL AND status = 'running'", (job_id,))

  def set_frame_progress(self, job_id: str, frame: int, progress: float, *, step: int | None = None,
                         steps: int | None = None, batch_size: int | None = None) -> None:
    """A video's bookkeeping between steps: its finished frames (over all passes), the share of the job
    done, and when a frame starts its step, steps and the number of frames the engine runs."""
    with self._db() as db:
      db.execute("UPDATE jobs SET frame = ?, progress = ?, progress_at = ?, step = COALESCE(?, step), "
                 "steps = COALESCE(?, steps), batch_size = COALESCE(?, batch_size) WHERE id = ?",
                 (int(frame), float(progress), time.time(), step, steps, batch_size, job_id))

  def set_temporal_error(self, job_id: str, value: float | None) -> None:
    with self._db() as db:
      db.execute("UPDATE jobs SET temporal_error = ? WHERE id = ?", (value, job_id))

  def add_losses(self, job_id: str, step: int, metrics: dict) -> None:
    with self._db() as db:
      db.execute("INSERT OR REPLACE INTO losses (job_id, step, total, content, style, tv) VALUES (?, ?, ?, ?, ?, ?)",
                 (job_id, int(step), *(float(metrics[k]) for k in ("total", "content", "style", "tv"))))

  def losses(self, job_id: str, after_step: int = -1) -> list[dict]:
    with self._db() as db:
      rows = db.execute("SELECT step, total, content, style, tv FROM losses WHERE job_id = ? AND step > ? "
                        "ORDER BY step", (job_id, after_step)).fetchall()
    return [dict(r) for r in rows]

  def set_checkpoint(self, job_id: str, step: int) -> None:
    with self._db() as db:
      db.execute("UPDATE jobs SET checkpoint_step = ? WHERE id = ?", (int(step), job_id))

  def finish(self, job_id: str, status: str, error: str | None = None) -> None:
    assert status in TERMINAL
    with self._db() as db:
      db.execute("UPDATE jobs SET status = ?, error = ?, finished = ?, "
                 "step = CASE WHEN ? = 'done' THEN steps ELSE step END, "
                 "progress = CASE WHEN ? = 'done' THEN 1.0 ELSE progress END, "
                 "frame = CASE WHEN ? = 'done' THEN frames ELSE frame END WHERE id = ?",
                 (status, error, time.time(), status, status, status, job_id))
    job = self.get(job_id)
    if job is not None:
      log_line(job, status, error or "")

  def cancel_if_queued(self, job_id: str) -> bool:
    """Cancels a queued job (and removes the checkpoints a stopped run left); False if it was not queued."""
    with self._db() as db:
      cur = db.execute("UPDATE jobs SET status = 'cancelled', finished = ? WHERE id = ? AND status = 'queued'",
                       (time.time(), job_id))
    if cur.rowcount:
      self.remove_checkpoints(job_id)
      log_line(self.get(job_id), "cancelled", "while queued")
    return bool(cur.rowcount)

  def delete(self, job_id: str) -> None:
    """Removes a finished job's row, losses and files."""
    with self._db() as db:
      db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
      db.execute("DELETE FROM losses WHERE job_id = ?", (job_id,))
    shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


def describe(job: dict) -> str:
  """What a job is, in a few words: 'image 32x26, 12 steps' or 'video 32x26, 4 frames x 100 steps'."""
  work = f"{job['frames']} frames x {job['steps']} steps" if job["kind"] == "video" else f"{job['steps']} steps"
  return f"{job['kind']} {job['width']}x{job['height']}, {work}"


def log_line(job: dict, event: str, detail: str = "") -> None:
  """One line per change of a job's status on the server's log: id, what, size, steps, where it stopped,
  seconds since it first started, and the reason or detail."""
  parts = [describe(job)]
  if event in ("done", "failed", "cancelled", "stopped") and job["step"] < job["steps"]:
    parts.append(f"at step {job['step']}/{job['steps']}" + (f" of frame {job['frame'] + 1}/{job['frames']}"
                                                             if job["kind"] == "video" else ""))
  if event in ("done", "failed", "cancelled", "stopped") and job["started"] is not None:
    parts.append(f"{time.time() - job['started']:.1f} s since it started")
  log.info("job %s %s: %s", job["id"], event, ", ".join(parts + ([detail] if detail else [])))


def progress_figures(job: dict) -> tuple[float, float | None]:
  """`(progress, eta_seconds)` of a job: the share done (0-1) and the seconds left at the rate measured over
  this run (wall clock from its first step to its latest progress, so a clip's flow, saving and the pauses
  between frames count; the first compile does not). Both move smoothly over a whole clip: the share only
  grows, and the ETA is None (unknown) rather than 0 while work is left."""
  if job["status"] == "done":
    return 1.0, None
  progress = min(1.0, max(0.0, float(job["progress"] or 0.0)))
  if job["status"] != "running" or job["rate_since"] is None or job["progress_at"] is None:
    return progress, None
  moved, seconds = progress - job["rate_progress0"], job["progress_at"] - job["rate_since"]
  if moved <= 0 or seconds <= 0:
    return progress, None
  return progress, (1.0 - progress) * seconds / moved


def _row(row) -> dict | None:
  if row is None:
    return None
  job = dict(row)
  job["options"] = json.loads(job["options"])
  return job
