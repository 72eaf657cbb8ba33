"""Password checks do not leave scrypt's 16 MiB buffer resident (tornado_sched/memory.py).

Run in a fresh interpreter: the allocator's state is per process, and this one has
already run many scrypts with whatever settings the test order left behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent("""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from tornado_sched.auth import check_password, hash_password

    def rss_kib():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    stored = hash_password("correct horse battery")
    before = rss_kib()
    # Four threads, each checking a password twice (the server's default executor
    # runs checks on several threads, each with its own malloc arena).
    with ThreadPoolExecutor(4) as pool:
        checks = list(pool.map(lambda _: [check_password("correct horse battery", stored),
                                                check_password("wrong", stored)], range(8)))
    assert all(ok and not bad for ok, bad in checks)
    print(rss_kib() - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_password_checks_in_threads_give_their_memory_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    growth_kib = int(out.stdout.strip())
    # Kept buffers would be 16 MiB per thread that ran scrypt (64 MiB here).
    assert growth_kib < 8 * 1024, f"RSS grew {growth_kib} KiB over 16 password checks in 4 threads"
