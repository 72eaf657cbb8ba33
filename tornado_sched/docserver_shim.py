"""Launcher for the embedded ``nx-27017`` server that keeps BSON types through updates.

Run as ``python -m tornado_sched.docserver_shim <nx-27017 args>``; the arguments go
unchanged to ``nx_27017.nx_27017.main()``.

Why it exists: neosqlite 1.17.2 (under nx-27017 0.8.1) applies most updates of an
existing document with SQLite JSON functions (``SqlUpdatesMixin._can_use_sql_updates``
picks that fast path). That path binds Python values straight into SQL, so a bool
becomes ``1`` and a datetime becomes the string ``'2030-05-05 01:02:03'`` — range
queries and sorts on the field then break. neosqlite's Python fallback re-serialises
the whole document with its own JSON encoder, which writes ``{"$date": ...}`` for
datetimes, JSON ``true``/``false`` for bools and its ObjectId marker for ObjectIds,
and reads them back as the right types. So before starting the server we wrap
``_can_use_sql_updates`` to answer False when any value in the update spec (at any
depth: ``$set``, ``$push`` with or without ``$each``, ``$addToSet``, ``$setOnInsert``,
...) is a bool, date/datetime or ObjectId. Updates without such values keep the fast
path.

Measured with and without this shim (tests/core/test_docstore_conformance.py pins
the operations our store code uses):

- fixed: ``$set`` of a bool stays a bool (was ``1``); ``$set`` of a datetime stays a
  datetime (was the string ``'2030-05-05 01:02:03.456000'``), so range queries and
  sorts on it work, also mixed with dates that came with the insert; ``$push`` (plain
  or ``$each``) of a datetime, or of a subdocument holding a datetime / ObjectId /
  bool, keeps every type and ``{"events.at": dt}`` matches (the SQL path stored the
  whole value as a JSON string such as ``'{"$date":"2030-05-05T01:02:03.456000"}'``);
  ``$addToSet`` of a datetime and ``$max`` with a datetime likewise (``$min`` goes
  the same way, not measured). ``$setOnInsert`` on upsert, positional ``$`` updates
  and ``$currentDate`` were already right without the shim.
- still wrong (the store code avoids each, see docs/design.md): an ObjectId value
  outside ``_id`` is stored and read back fine but never matches a query;
  ``find_one_and_update`` returns None instead of raising on a duplicate key;
  standard ``array_filters`` modify nothing; ``index_information()`` names an index
  ``idx_<coll>_<field>`` while ``create_index`` returned ``<field>_1``. docs/design.md
  lists more (``distinct`` over subdocument arrays, dropped index options, several
  nulls under a unique index) that this shim does not touch either.

It also asks Linux to SIGTERM this process when the parent that spawned it dies
(``PR_SET_PDEATHSIG``), so a SIGKILLed application does not leave an orphan server
holding the SQLite files. The death signal fires when the parent *thread* that forked
us exits, so spawn it from a long-lived thread (the event loop thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import signal
import sys
from typing import Any

import bson
from neosqlite.collection.query_helper._sql_updates import SqlUpdatesMixin
from neosqlite.objectid import ObjectId as NeoObjectId

from tornado_sched.docserver import PARENT_PID_ENV

_PR_SET_PDEATHSIG = 1
# datetime.date also covers datetime.datetime. nx-27017 hands neosqlite its own
# ObjectId class; bson's is listed in case a value slips through unconverted.
_TYPED_VALUES = (bool, datetime.date, bson.ObjectId, NeoObjectId)


def _holds_typed_value(value: Any) -> bool:
    """True if ``value`` is, or contains at any depth, a type the SQL path corrupts."""
    if isinstance(value, _TYPED_VALUES):
        return True
    if isinstance(value, dict):
        return any(_holds_typed_value(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_typed_value(v) for v in value)
    return False


def patch_neosqlite() -> None:
    """Route updates holding bool/datetime/ObjectId values to neosqlite's Python path."""
    original = SqlUpdatesMixin._can_use_sql_updates
    if getattr(original, "_tornado_sched_patched", False):
        return

    def _can_use_sql_updates(
        self: Any,
        update_spec: dict[str, Any],
        doc_id: int,
        original_doc: dict[str, Any] | None = None,
    ) -> bool:
        if _holds_typed_value(update_spec):
            return False
        return original(self, update_spec, doc_id, original_doc)

    _can_use_sql_updates._tornado_sched_patched = True  # type: ignore[attr-defined]
    SqlUpdatesMixin._can_use_sql_updates = _can_use_sql_updates  # type: ignore[method-assign]


def die_with_parent() -> None:
    """Get SIGTERM when the spawning parent dies (Linux only; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    # If the parent died between fork and prctl, the signal will never come.
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and expected.isdigit() and os.getppid() != int(expected):
        sys.exit(1)


UNIX_SOCKET_ARG = "--unix-socket"


def listen_on_unix_socket(path: str) -> None:
    """Serve on a Unix socket at `path` instead of TCP. nx-27017 has no
    authentication, and any local user can reach a loopback port; a socket file
    (0600, in a 0700 directory) only the service user can open. The `Listening on`
    line names the socket so the parent knows it is ready."""
    import asyncio
    import logging

    import nx_27017.server as nx_server

    async def run_unix_server(_host: str, _port: int, handler: Any) -> None:
        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await nx_server.handle_client(reader, writer, handler)

        # A file left by a killed predecessor (before anything else runs here).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # noqa: ASYNC240
        old_umask = os.umask(0o177)  # the socket file is created 0600
        try:
            server = await asyncio.start_unix_server(on_client, path)
        finally:
            os.umask(old_umask)
        logging.getLogger("nx_27017").info("Listening on unix:%s", path)
        async with server:
            await server.serve_forever()

    nx_server.run_server = run_unix_server


def main() -> None:
    """Patch neosqlite, then run nx-27017 with this process's arguments (less our
    own `--unix-socket PATH`)."""
    die_with_parent()
    patch_neosqlite()
    if UNIX_SOCKET_ARG in sys.argv:
        at = sys.argv.index(UNIX_SOCKET_ARG)
        listen_on_unix_socket(sys.argv[at + 1])
        del sys.argv[at:at + 2]
    from nx_27017.nx_27017 import main as nx_main

    # nx-27017's argparse reads sys.argv; its prog name is fixed, so argv[0] is moot.
    sys.exit(nx_main())


if __name__ == "__main__":
    main()
