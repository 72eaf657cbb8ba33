"""An example module: registers, stays connected, answers every execute command with
the args it was given. Stops cleanly on Ctrl-C / SIGTERM.

    python -m examples.echo_module --server http://127.0.0.1:10080 --token "$REGISTRATION_TOKEN"
    python -m examples.echo_module --server http://127.0.0.1:10080 --api-token "$API_TOKEN"

A cluster: give every instance; the module fails over to the next when one is lost.

    python -m examples.echo_module --server http://10.0.0.1:10080 --server http://10.0.0.2:10080 ...

(run from the repository root so `tornado_sched` is importable).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from tornado_sched.client import ModuleClient, ModuleClientError, ModuleReplaced

log = logging.getLogger("echo_module")


async def echo(args: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The module's work: here, report what it was asked to do."""
    log.info(
        "execute: workflow %s (%s) run %s at %s",
        meta.get("workflow_id"),
        meta.get("workflow_name"),
        meta.get("run_id"),
        meta.get("execution_time"),
    )
    if args.get("fail"):
        raise RuntimeError(f"asked to fail: {args['fail']}")
    if args.get("sleep"):
        await asyncio.sleep(float(args["sleep"]))
    return {"echo": args}


def on_message(text: str) -> None:
    log.info("message from the server: %s", text[:200])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="tornado_sched example module: echoes its args")
    parser.add_argument(
        "--server", action="append",
        help="server base URL; repeat it for the instances of a cluster (failover in that order)",
    )
    parser.add_argument("--name", default="echo", help="module name (its identity on the server)")
    parser.add_argument("--description", default="Echoes its args back", help="module description")
    parser.add_argument(
        "--token",
        default=os.environ.get("REGISTRATION_TOKEN", ""),
        help="the server's REGISTRATION_TOKEN (default: $REGISTRATION_TOKEN)",
    )
    parser.add_argument(
        "--api-token",
        default=os.environ.get("API_TOKEN", ""),
        help="an admin's API token (`run.py create-token`; default: $API_TOKEN)",
    )
    parser.add_argument(
        "--username", help="operator name, instead of a token (password from $MODULE_PASSWORD)"
    )
    parser.add_argument(
        "--backoff-max", type=float, default=30.0, help="longest wait between reconnects (s)"
    )
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    password = os.environ.get("MODULE_PASSWORD", "")
    if not options.token and not options.api_token and not (options.username and password):
        print(
            "echo_module: give --token (or $REGISTRATION_TOKEN), --api-token (or $API_TOKEN), "
            "or --username with $MODULE_PASSWORD",
            file=sys.stderr,
        )
        return 2
    client = ModuleClient(
        options.server or ["http://127.0.0.1:10080"],
        options.name,
        echo,
        description=options.description,
        input_data=[{"name": "anything", "description": "any JSON args"}],
        output_data=[{"name": "echo"}],
        token=options.token or None,
        api_token=options.api_token or None,
        username=options.username,
        password=password or None,
        on_message=on_message,
        backoff_max=options.backoff_max,
    )
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stopping.add(asyncio.ensure_future(client.stop())))
    try:
        await client.run()
    except ModuleReplaced as exc:
        # Another instance holds the module now; exiting 0 keeps a supervisor with
        # Restart=on-failure from starting a tug of war.
        log.warning("%s", exc)
        return 0
    except ModuleClientError as exc:
        log.error("%s", exc)
        return 1
    finally:
        await asyncio.gather(*stopping)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s"
    )
    sys.exit(asyncio.run(main()))
