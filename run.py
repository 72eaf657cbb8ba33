"""tornado_sched entry point.

    python run.py                 start the server (settings from env / .env)
    python run.py expire-modules  mark every module offline (the seed's manual command)
    python run.py list-jobs       scheduled jobs and their next run time (the seed's listing)
    python run.py create-user NAME [--role admin|viewer]   (password read from stdin/prompt)
    python run.py set-password NAME
    python run.py list-users
    python run.py create-token NAME --name "what it is for"

Start-up order: settings -> stores -> services -> Application -> listen. Shutdown on
SIGTERM/SIGINT runs the same steps backwards.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from tornado_sched.audit import AuditLog
from tornado_sched.auth import ApiTokens, OperatorAccounts
from tornado_sched.config import ConfigError, Settings, load_or_create_secret
from tornado_sched.context import open_context
from tornado_sched.docserver import EmbeddedDocumentServer
from tornado_sched.errors import DomainError
from tornado_sched.eventloop import CollectionPacer, new_event_loop
from tornado_sched.logs import FILE_ONLY, configure_logging
from tornado_sched.private import PRIVATE_UMASK
from tornado_sched.registry import ModuleRegistry
from tornado_sched.scheduler import job_id
from tornado_sched.sessions import BrowserSessions
from tornado_sched.stores import DocumentStore, SqlStore
from tornado_sched.workflows import WorkflowStore

log = logging.getLogger("tornado_sched")


class StartError(Exception):
    """Start-up cannot go on for a reason the operator fixes (the port, a directory):
    main prints the message as one line and exits with 2, which systemd does not
    restart (deploy/tornado-sched.service)."""


def _file_problem(exc: OSError) -> str:
    return f"cannot use {exc.filename}: {exc.strerror} (DATA_DIR and LOG_DIR must be writable by this user)"


@dataclass(frozen=True)
class Accounts:
    operators: OperatorAccounts
    tokens: ApiTokens
    audit: AuditLog
    sql: SqlStore


async def serve(settings: Settings, command: str = "python run.py") -> None:
    """`command`: how the operator started us, for the hint printed with a generated
    password (`tornado-sched` after `pip install .`)."""
    from handlers.app import make_app

    # Bind first: a port in use must stop start-up before anything is created (the
    # first start's admin password is shown only once, after this point).
    try:
        sockets = bind_sockets(settings.server_port, settings.server_host)
    except OSError as exc:
        raise StartError(f"cannot listen on {settings.server_host}:{settings.server_port}: "
                         f"{exc.strerror} (set SERVER_PORT / SERVER_HOST)") from None
    port = sockets[0].getsockname()[1]
    try:
        ctx = await open_context(settings)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.filename is None:
            raise
        # A file-system refusal (DATA_DIR on a volume the service user cannot write)
        # is the operator's to fix, like a bad setting: one line naming the path.
        raise StartError(_file_problem(exc)) from None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    server = None
    pacer = CollectionPacer(ctx.scheduler.next_fire_time)
    try:
        app = make_app(ctx)
        server = HTTPServer(app)
        server.add_sockets(sockets)
        pacer.start()
        if ctx.generated_admin_password:
            # Printed once, to the console only: it never reaches the log file.
            print(
                f"Created operator {settings.admin_username!r} with generated password: "
                f"{ctx.generated_admin_password}\n(set ADMIN_PASSWORD to choose one; "
                f"change it with `{command} set-password`)",
                flush=True,
            )
        # Once on the console (the line scripts wait for), once in the log file.
        print(f"listening on port {port}", flush=True)
        log.info("tornado_sched listening on http://%s:%d", settings.server_host, port, extra=FILE_ONLY)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        if server is not None:
            server.stop()  # stop accepting first
        await pacer.stop()
        await ctx.close()
        if server is not None:
            await server.close_all_connections()
        log.info("stopped")


async def with_accounts(settings: Settings, action: Callable[[Accounts], Awaitable[None]]) -> None:
    """Operators and tokens live in the relational store only: CLI commands on them
    open nothing else, so they work while the server is running."""
    sql = SqlStore(settings.sql_url)
    try:
        await sql.create_schema()
        accounts = OperatorAccounts(sql, settings.secret_key)
        await action(Accounts(accounts, ApiTokens(sql, accounts), AuditLog(sql), sql))
    finally:
        await sql.close()


@asynccontextmanager
async def document_store(settings: Settings) -> AsyncIterator[DocumentStore]:
    """The business-data store for a one-off command (starting the embedded server
    when MONGODB_HOST is unset; a running server owns it then)."""
    docserver = None
    uri = settings.mongodb_host
    if settings.uses_embedded_mongo:
        docserver = EmbeddedDocumentServer(settings.data_dir)
        try:
            uri = await docserver.start()
        except RuntimeError:
            print("the embedded document server is in use: the running server owns DATA_DIR "
                  "(stop it, or ask it over REST: GET /scheduler/jobs, GET /module/online)", file=sys.stderr)
            raise SystemExit(1) from None
    docs = DocumentStore(uri, settings.mongodb_name)
    try:
        yield docs
    finally:
        await docs.close()
        if docserver is not None:
            await docserver.stop()


async def expire_modules(settings: Settings) -> None:
    async with document_store(settings) as docs:
        count = await ModuleRegistry(docs).mark_all_offline()
        print(f"{count} module(s) marked offline")


async def list_jobs(settings: Settings) -> None:
    """The seed's scheduled-jobs listing: the jobs the scheduler builds from the store
    (one per enabled workflow with crontab lines) and when each fires next (UTC)."""
    async with document_store(settings) as docs:
        workflows = WorkflowStore(docs, ModuleRegistry(docs), settings.time_zone)
        now = datetime.now(UTC)
        print("job_id\tworkflow_id\tname\tnext_run_time\ttrigger")
        for workflow in await workflows.list(enabled_only=True):
            if not workflow.schedulable:
                continue
            trigger = workflow.trigger()
            next_time = trigger.get_next_fire_time(None, now)
            when = next_time.astimezone(UTC).isoformat() if next_time else "-"
            print(f"{job_id(workflow.workflow_id)}\t{workflow.workflow_id}\t{workflow.name}\t{when}\t{trigger}")


def _read_password(prompt: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("again: ") != first:
            raise SystemExit("passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    # Everything this process creates (stores, logs, the secret key, the embedded
    # document server's files and socket) is readable by the service user only.
    os.umask(PRIVATE_UMASK)
    parser = argparse.ArgumentParser(
        prog=Path(sys.argv[0]).name if argv is None else "run.py", description="tornado_sched server"
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="start the server (default)")
    sub.add_parser("expire-modules", help="mark every module offline")
    sub.add_parser("list-jobs", help="list scheduled jobs and their next run time (UTC)")
    create = sub.add_parser("create-user", help="create an operator (password from stdin)")
    create.add_argument("username")
    create.add_argument("--role", default="admin", choices=["admin", "viewer"])
    setpw = sub.add_parser("set-password", help="change an operator's password (from stdin)")
    setpw.add_argument("username")
    sub.add_parser("list-users", help="list operators")
    token = sub.add_parser("create-token", help="create an API token for scripts (printed once)")
    token.add_argument("username")
    token.add_argument("--name", required=True, help="what the token is for")
    args = parser.parse_args(argv)

    try:
        settings = load_or_create_secret(Settings.from_env())
        configure_logging(settings.log_level, settings.log_dir, settings.log_format,
                          settings.instance if settings.clustered else "")
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:
            raise
        print(_file_problem(exc), file=sys.stderr)
        return 2

    command = args.command or "serve"
    try:
        if command == "serve":
            try:
                # A loop that hands out ready sockets in slices (tornado_sched/eventloop.py).
                with asyncio.Runner(loop_factory=new_event_loop) as runner:
                    runner.run(serve(settings, "python run.py" if parser.prog == "run.py" else parser.prog))
            except StartError as exc:
                print(exc, file=sys.stderr)
                return 2
        elif command == "expire-modules":
            asyncio.run(expire_modules(settings))
        elif command == "list-jobs":
            asyncio.run(list_jobs(settings))
        elif command == "create-user":
            password = _read_password("password: ")

            async def create_user(acc: Accounts) -> None:
                await acc.operators.create(args.username, password, args.role)
                await acc.audit.record("cli", "create", f"operator:{args.username}", {"role": args.role})
                print(f"created {args.role} {args.username!r}")

            asyncio.run(with_accounts(settings, create_user))
        elif command == "set-password":
            password = _read_password("new password: ")

            async def set_password(acc: Accounts) -> None:
                await acc.operators.set_password(args.username, password)
                ended = await BrowserSessions(acc.sql, acc.operators).end_user(args.username, "password")
                await acc.audit.record("cli", "set-password", f"operator:{args.username}", {"sessions_ended": ended})
                print(f"password changed for {args.username!r}")
                if settings.clustered:
                    from tornado_sched.cluster import tell_cluster

                    # Running instances drop their cached verifications at once.
                    if not await tell_cluster(settings.redis_url, {"op": "auth_changed"}):
                        print("redis unreachable: running instances notice the change within "
                              "AUTH_CACHE_SECONDS", file=sys.stderr)

            asyncio.run(with_accounts(settings, set_password))
        elif command == "list-users":

            async def list_users(acc: Accounts) -> None:
                for op in await acc.operators.list():
                    print(f"{op.username}\t{op.role}")

            asyncio.run(with_accounts(settings, list_users))
        elif command == "create-token":

            async def create_token(acc: Accounts) -> None:
                record, secret = await acc.tokens.create(args.username, args.name)
                await acc.audit.record("cli", "create", f"token:{record.id}", {"name": record.name})
                print(f"token {record.id} for {args.username!r} (shown once): {secret}")

            asyncio.run(with_accounts(settings, create_token))
    except DomainError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
