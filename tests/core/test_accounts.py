"""Operator accounts on SQLite and MariaDB: hashed, never plaintext."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tornado_sched.auth import OperatorAccounts, digest_ha1
from tornado_sched.errors import Conflict, Invalid
from tornado_sched.stores import SqlStore
from tornado_sched.tables import operators


@pytest.fixture
async def accounts(sql_url: str):
    store = SqlStore(sql_url)
    await store.create_schema()
    yield OperatorAccounts(store, "secret-for-tests-0123"), store
    await store.close()


async def test_password_is_stored_hashed_and_verifies(accounts) -> None:
    acc, store = accounts
    await acc.create("alice", "correct horse 1", "viewer")
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(operators))).one()
    assert row.password_hash.startswith("scrypt$") and "correct horse" not in row.password_hash
    assert row.digest_ha1 == digest_ha1("alice", "correct horse 1")
    assert (await acc.verify_password("alice", "correct horse 1")).role == "viewer"
    assert await acc.verify_password("alice", "wrong password") is None
    assert await acc.verify_password("nobody", "correct horse 1") is None


async def test_non_ascii_names_and_passwords(accounts) -> None:
    acc, _ = accounts
    await acc.create("运维", "口令-ünïcode-9", "admin")
    assert (await acc.verify_password("运维", "口令-ünïcode-9")).username == "运维"


async def test_duplicate_and_invalid_accounts_are_refused(accounts) -> None:
    acc, _ = accounts
    await acc.create("bob", "password-123")
    with pytest.raises(Conflict):
        await acc.create("bob", "password-456")
    with pytest.raises(Invalid):
        await acc.create("has:colon", "password-123")
    with pytest.raises(Invalid):
        await acc.create("carol", "short")


async def test_set_password_invalidates_cached_verification(accounts) -> None:
    acc, _ = accounts
    await acc.create("dave", "first-password")
    assert await acc.verify_password("dave", "first-password") is not None
    await acc.set_password("dave", "second-password")
    assert await acc.verify_password("dave", "first-password") is None
    assert await acc.verify_password("dave", "second-password") is not None


async def test_first_admin_is_created_once(accounts) -> None:
    acc, _ = accounts
    generated = await acc.ensure_admin("admin", "")
    assert generated and len(generated) >= 16
    assert await acc.verify_password("admin", generated) is not None
    assert await acc.ensure_admin("admin", "") is None
    assert [o.username for o in await acc.list()] == ["admin"]
