"""The results store: one SQLite file per sweep, one row per run, keyed by the run's hash.

Only the process that drives the sweep writes it (workers return their results), so it works
the same whether runs execute in local processes or on a Ray cluster. A run's ``status`` is
``pending``, ``running``, ``done``, ``failed`` or ``interrupted``; a re-run of the sweep skips
``done`` rows and resumes the others from their checkpoints.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from mugpt.errors import ConfigError

STORE_NAME = "results.sqlite"
STATUSES = ("pending", "running", "done", "failed", "interrupted")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    point_id    TEXT NOT NULL,
    seed        INTEGER NOT NULL,
    max_bytes   INTEGER,
    config      TEXT NOT NULL,
    vals        TEXT NOT NULL,
    labels      TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending','running','done','failed','interrupted')),
    error       TEXT,
    result      TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    backend     TEXT,
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    wall_s      REAL
);
"""


class SweepStore:
    """A sweep's SQLite results store.

    Example:
        >>> import tempfile
        >>> from mugpt.sweep.spec import SweepSpec
        >>> store = SweepStore(tempfile.mkdtemp())
        >>> plan = SweepSpec.from_dict({"seeds": 2, "budget": 100}).plan()
        >>> store.add_runs(plan)
        2
        >>> store.mark_done(plan[0].run_id, {"bpb": 5.0}, wall_s=1.0)
        >>> store.counts()
        {'done': 1, 'pending': 1}
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / STORE_NAME
        try:
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"{str(self.path)!r} is not a readable results store ({exc}); "
                "choose another output folder"
            ) from None

    @classmethod
    def open_existing(cls, folder: str | Path) -> SweepStore:
        """Opens the store of a sweep folder, or raises ConfigError if it has none."""
        path = Path(folder) / STORE_NAME
        if not path.is_file():
            raise ConfigError(
                f"{str(folder)!r} holds no sweep results ({STORE_NAME} is missing); "
                "give the folder a `mugpt sweep run` wrote"
            )
        return cls(folder)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ meta

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    # ------------------------------------------------------------------ runs

    def add_runs(self, runs: list[Any]) -> int:
        """Inserts planned runs not yet known (by run_id); returns how many were new. The
        labels of known runs are refreshed, since a renamed grid value is the same run."""
        now = time.time()
        new = 0
        with self.db:
            self.db.execute("BEGIN")
            for r in runs:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO runs(run_id, point_id, seed, max_bytes, config, vals, "
                    "labels, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (r.run_id, r.point_id, r.seed, r.max_bytes, json.dumps(r.config),
                     json.dumps(r.values), json.dumps(r.labels), now),
                )  # fmt: skip
                if cur.rowcount:
                    new += 1
                else:
                    self.db.execute(
                        "UPDATE runs SET vals = ?, labels = ? WHERE run_id = ?",
                        (json.dumps(r.values), json.dumps(r.labels), r.run_id),
                    )
        return new

    def status(self, run_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else str(row[0])

    def counts(self, run_ids: list[str] | None = None) -> dict[str, int]:
        rows = self.db.execute("SELECT run_id, status FROM runs").fetchall()
        wanted = None if run_ids is None else set(run_ids)
        out: dict[str, int] = {}
        for rid, status in rows:
            if wanted is None or rid in wanted:
                out[status] = out.get(status, 0) + 1
        return dict(sorted(out.items()))

    def recover_stale(self) -> int:
        """Rows left ``running`` by a driver that died become ``interrupted``."""
        cur = self.db.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
        return cur.rowcount

    def mark_running(self, run_id: str, backend: str) -> None:
        self.db.execute(
            "UPDATE runs SET status = 'running', attempts = attempts + 1, backend = ?, "
            "started_at = ?, error = NULL WHERE run_id = ?",
            (backend, time.time(), run_id),
        )

    def mark_done(self, run_id: str, result: dict[str, Any], wall_s: float) -> None:
        self._finish(run_id, "done", None, json.dumps(result), wall_s)

    def mark_failed(self, run_id: str, error: str, wall_s: float | None) -> None:
        self._finish(run_id, "failed", error, None, wall_s)

    def mark_interrupted(self, run_id: str, note: str | None = None) -> None:
        self._finish(run_id, "interrupted", note, None, None)

    def _finish(
        self, run_id: str, status: str, error: str | None, result: str | None, wall_s: float | None
    ) -> None:
        assert status in STATUSES
        self.db.execute(
            "UPDATE runs SET status = ?, error = ?, result = COALESCE(?, result), "
            "finished_at = ?, wall_s = ? WHERE run_id = ?",
            (status, error, result, time.time(), wall_s, run_id),
        )

    def rows(self, run_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Every run (or those named), decoded, in the order they were planned."""
        cur = self.db.execute(
            "SELECT run_id, point_id, seed, max_bytes, config, vals, labels, status, error, "
            "result, attempts, backend, created_at, started_at, finished_at, wall_s "
            "FROM runs ORDER BY rowid"
        )
        names = [d[0] for d in cur.description]
        wanted = None if run_ids is None else set(run_ids)
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values))
            if wanted is not None and row["run_id"] not in wanted:
                continue
            for key in ("config", "vals", "labels", "result"):
                row[key] = json.loads(row[key]) if row[key] is not None else None
            row["values"] = row.pop("vals")
            out.append(row)
        return out


def host_name() -> str:
    return socket.gethostname()
