"""The state database opened by several processes or connections at once: worker processes
start together on a new state directory, and a CLI command may run beside the service."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

from gateway.store import DB_NAME, Store

# A migration that takes a while (tens of milliseconds), so that a second connection's
# migrate() runs while the first one's is still applying it.
SLOW_MIGRATION = """
CREATE TABLE numbers (n INTEGER NOT NULL);
INSERT INTO numbers
  WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 200000)
  SELECT n FROM seq;
"""
MIGRATIONS = (SLOW_MIGRATION, "CREATE TABLE later (x TEXT)")


def test_connections_migrating_together_apply_each_migration_once(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    stores = [Store(path) for _ in range(3)]
    gate = threading.Barrier(len(stores))
    versions: list[int] = []
    errors: list[BaseException] = []

    def migrate(store: Store) -> None:
        gate.wait(10)
        try:
            versions.append(store.migrate("test", MIGRATIONS))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert versions == [2, 2, 2]
    assert stores[0].query("SELECT count(*) AS n FROM numbers")[0]["n"] == 200000
    for store in stores:
        store.close()


def _open_rounds(directory: str, rounds: int, gate: threading.Barrier) -> None:
    """One process's part: for each round, open that round's new database together with the
    other processes and migrate it."""
    for k in range(rounds):
        gate.wait(30)
        store = Store(Path(directory) / f"round-{k}" / DB_NAME)
        store.migrate("test", ("CREATE TABLE t (x TEXT)", "CREATE INDEX t_x ON t (x)"))
        store.close()


def test_processes_opening_a_new_state_directory_together_all_succeed(tmp_path: Path) -> None:
    # Worker processes start at the same moment: each creates the file, switches it to WAL
    # (SQLite refuses at once while another process makes that switch) and migrates it.
    context = multiprocessing.get_context("spawn")
    processes, rounds = 4, 12
    gate = context.Barrier(processes)
    workers = [
        context.Process(target=_open_rounds, args=(str(tmp_path), rounds, gate))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0] * processes
    for k in range(rounds):
        store = Store(tmp_path / f"round-{k}" / DB_NAME)
        assert store.query("SELECT version FROM schema_version")[0]["version"] == 2
        assert store.query("PRAGMA journal_mode")[0][0] == "wal"
        store.close()
