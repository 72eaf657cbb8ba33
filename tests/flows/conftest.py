"""Flow tests: close every client socket a test opened, pass or fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.flows.support import OPEN_SOCKETS


@pytest.fixture(autouse=True)
def _close_client_sockets() -> Iterator[None]:
    yield
    while OPEN_SOCKETS:
        OPEN_SOCKETS.pop().close()
