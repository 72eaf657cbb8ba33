"""What a notification says: the email's HTML and subject, the webhook's text, and
the retry schedule."""

from __future__ import annotations

from typing import Any

import pytest

from tornado_sched.notify import MAX_BACKOFF, _plain_text, _subject, backoff_seconds, render_email

PUBLIC = "http://sched.example"


def fact(**fields: Any) -> dict[str, Any]:
    base = {
        "run_id": "0123456789abcdef0123456789abcdef",
        "workflow_id": 7,
        "workflow_name": "早盘",
        "module_name": "alpha",
        "module_hash_prefix": "deadbeef",
        "status": "failure",
        "execution_time": "2024-03-01T09:29:30",
        "timezone": "Asia/Shanghai",
        "error": "ValueError",
        "message": "bad input",
        "at": "2024-03-01T01:29:31+00:00",
    }
    base.update(fields)
    return base


def failure(*facts: dict[str, Any], name: str = "早盘") -> dict[str, Any]:
    return {"kind": "failure", "workflow_id": 7, "workflow_name": name, "failures": list(facts) or [fact()]}


def recovery(name: str = "早盘") -> dict[str, Any]:
    return {"kind": "recovery", "workflow_id": 7, "workflow_name": name, "run_id": "feedface" * 4,
            "execution_time": "2024-03-01T14:00:00", "timezone": "Asia/Shanghai"}


def test_failure_email_names_every_fact() -> None:
    html = render_email(failure(), PUBLIC)
    for text in ("早盘", "#7", "alpha", "2024-03-01T09:29:30 Asia/Shanghai", "failure", "ValueError",
                 "bad input", f'href="{PUBLIC}/runs/0123456789abcdef0123456789abcdef"', ">0123456789ab<"):
        assert text in html, text
    assert "恢复" not in html and "recovered" not in html


def test_failure_email_escapes_every_value() -> None:
    evil = "<script>alert('x')</script>"
    html = render_email(failure(fact(module_name=evil, error=evil, message='"&<b>', status=evil), name=evil), PUBLIC)
    assert "<script>" not in html and '"&<b>' not in html
    assert html.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;") == 4
    assert "&quot;&amp;&lt;b&gt;" in html


def test_failure_email_has_one_row_per_fact() -> None:
    facts = [fact(run_id=f"{i:032x}", error=f"err-{i}") for i in range(3)]
    html = render_email(failure(*facts), PUBLIC)
    assert html.count("<tr>") == 1 + 3
    for i in range(3):
        assert f"/runs/{i:032x}" in html and f"err-{i}" in html


def test_missing_error_and_message_render_empty_not_none() -> None:
    html = render_email(failure(fact(error=None, message=None)), PUBLIC)
    assert "None" not in html


def test_without_public_url_the_link_is_relative() -> None:
    assert 'href="/runs/0123456789abcdef0123456789abcdef"' in render_email(failure(), "")


def test_recovery_email() -> None:
    html = render_email(recovery("<i>wf</i>"), PUBLIC)
    assert "已恢复" in html and "recovered" in html
    assert f'href="{PUBLIC}/runs/{"feedface" * 4}"' in html
    assert "2024-03-01T14:00:00 Asia/Shanghai" in html
    assert "&lt;i&gt;wf&lt;/i&gt;" in html and "<i>" not in html
    assert "<table" not in html


def test_subjects() -> None:
    assert _subject(failure(fact(), fact(), fact())) == "[tornado_sched] 工作流 早盘 执行失败 / 3 failed step(s)"
    assert _subject(failure()).endswith("1 failed step(s)")
    subject = _subject(recovery())
    assert "早盘" in subject and "恢复" in subject and "recovered" in subject
    assert "failed" not in subject
    # Long names still fit the outbox's subject column (workflow names are at most 100).
    assert len(_subject(failure(name="n" * 100))) <= 255


def test_webhook_text() -> None:
    text = _plain_text(failure(fact(error="E1")), PUBLIC)
    assert text.splitlines()[0] == _subject(failure())
    assert "alpha [failure] 2024-03-01T09:29:30 Asia/Shanghai: E1" in text
    assert f"{PUBLIC}/runs/0123456789abcdef0123456789abcdef" in text
    assert _plain_text(recovery(), PUBLIC).endswith(f"{PUBLIC}/runs/{'feedface' * 4}")


@pytest.mark.parametrize(("attempts", "expected"), [(0, 5.0), (1, 5.0), (2, 10.0), (3, 20.0), (8, 640.0)])
def test_backoff_doubles_from_the_base(attempts: int, expected: float) -> None:
    assert backoff_seconds(attempts) == expected


def test_backoff_is_capped_and_takes_a_base() -> None:
    assert backoff_seconds(11) == MAX_BACKOFF == 3600.0
    assert backoff_seconds(1000) == MAX_BACKOFF
    assert [backoff_seconds(n, 0.2) for n in (1, 2, 3)] == [0.2, 0.4, 0.8]
