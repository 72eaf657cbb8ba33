"""The workflow create/edit form: what the operator typed, kept as text so a
re-render after an error shows it unchanged, and its translation to the core's
workflow body."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tornado_sched.errors import Invalid
from tornado_sched.payload import PayloadError, read_json
from tornado_sched.workflows import (
    DEFAULT_MISFIRE_GRACE_SECONDS,
    DEFAULT_RETRIES,
    DEFAULT_RETRY_DELAY_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    MISFIRE,
    ORDER,
    OVERLAP,
    Workflow,
)

# The form's fields, as the core names them in an Invalid's `field`.
FORM_FIELDS = ("name", "description", "enable", "execute_cron_list", "execute_shift_time",
               "execute_shift_unit", "timezone", "execute_modules", "timeout_seconds", "overlap",
               "misfire", "misfire_grace_seconds", "retries", "retry_delay_seconds", "order")


@dataclass
class WorkflowForm:
    """What the create/edit form shows: strings as typed, so a re-render after a
    validation error keeps the operator's input."""

    name: str = ""
    description: str = ""
    enable: bool = True
    cron_text: str = ""
    shift_time: str = "0"
    shift_unit: str = "s"
    timezone: str = ""
    timeout_seconds: str = str(DEFAULT_TIMEOUT_SECONDS)
    overlap: str = OVERLAP[0]
    misfire: str = MISFIRE[0]
    misfire_grace_seconds: str = str(DEFAULT_MISFIRE_GRACE_SECONDS)
    retries: str = str(DEFAULT_RETRIES)
    retry_delay_seconds: str = str(DEFAULT_RETRY_DELAY_SECONDS)
    order: str = ORDER[0]
    rows: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_arguments(cls, arg: Callable[[str, str], str], args: Callable[[str], list[str]]) -> WorkflowForm:
        """The posted form (`get_body_argument`, `get_body_arguments`); a missing field
        takes the form's default."""
        modules = args("module")
        texts = args("args")
        rows = [
            {"module": modules[i] if i < len(modules) else "", "args": texts[i] if i < len(texts) else ""}
            for i in range(max(len(modules), len(texts)))
        ]
        blank = cls()
        return cls(
            name=arg("name", ""),
            description=arg("description", ""),
            enable=arg("enable", "") == "1",
            cron_text=arg("execute_cron_list", ""),
            shift_time=arg("execute_shift_time", blank.shift_time),
            shift_unit=arg("execute_shift_unit", blank.shift_unit),
            timezone=arg("timezone", ""),
            timeout_seconds=arg("timeout_seconds", blank.timeout_seconds),
            overlap=arg("overlap", blank.overlap),
            misfire=arg("misfire", blank.misfire),
            misfire_grace_seconds=arg("misfire_grace_seconds", blank.misfire_grace_seconds),
            retries=arg("retries", blank.retries),
            retry_delay_seconds=arg("retry_delay_seconds", blank.retry_delay_seconds),
            order=arg("order", blank.order),
            rows=rows,
        )

    @classmethod
    def from_workflow(cls, workflow: Workflow, ids_by_hash: dict[str, int]) -> WorkflowForm:
        return cls(
            name=workflow.name,
            description=workflow.description,
            enable=workflow.enable,
            cron_text="\n".join(workflow.execute_cron_list),
            shift_time=str(workflow.execute_shift_time),
            shift_unit=workflow.execute_shift_unit,
            timezone=workflow.timezone,
            timeout_seconds=str(workflow.timeout_seconds),
            overlap=workflow.overlap,
            misfire=workflow.misfire,
            misfire_grace_seconds=str(workflow.misfire_grace_seconds),
            retries=str(workflow.retries),
            retry_delay_seconds=str(workflow.retry_delay_seconds),
            order=workflow.order,
            rows=[
                {
                    "module": str(ids_by_hash.get(step.get("module_hash", ""), "")),
                    "args": json.dumps(step.get("args") or {}, ensure_ascii=False, indent=2),
                }
                for step in workflow.execute_modules
            ],
        )

    def body(self, hashes_by_id: dict[str, str]) -> tuple[dict[str, Any], list[Invalid]]:
        """The core's create/update body, and an Invalid for each module row it cannot
        read (those rows are left out of the body)."""
        steps = []
        problems: list[Invalid] = []
        for number, row in enumerate(self.rows, start=1):
            module, args_text = row["module"].strip(), row["args"].strip()
            where = f"execute_modules[{number - 1}]"
            if not module and args_text in ("", "{}"):
                continue  # an empty row
            if not module:
                problems.append(Invalid(f"{where}: choose a module", field="execute_modules"))
                continue
            if module not in hashes_by_id:
                problems.append(Invalid(f"{where}: unknown module", field="execute_modules"))
                continue
            try:
                args = read_json(args_text, where="args") if args_text else {}
            except PayloadError as exc:
                problems.append(Invalid(f"{where}: {exc}", field="execute_modules"))
                continue
            if not isinstance(args, dict):
                problems.append(Invalid(f"{where}: args must be a JSON object", field="execute_modules"))
                continue
            steps.append({"module_hash": hashes_by_id[module], "args": args})
        return self._fields(steps), problems

    def schedule(self) -> dict[str, Any]:
        """Only what decides the fire times (for the preview)."""
        fields = self._fields([])
        return {k: fields[k] for k in ("execute_cron_list", "execute_shift_time", "execute_shift_unit", "timezone")}

    def _fields(self, steps: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "enable": self.enable,
            "execute_cron_list": [line.strip() for line in self.cron_text.splitlines() if line.strip()],
            "execute_shift_time": self.shift_time.strip(),
            "execute_shift_unit": self.shift_unit,
            "timezone": self.timezone.strip(),
            "timeout_seconds": self.timeout_seconds.strip(),
            "overlap": self.overlap,
            "misfire": self.misfire,
            "misfire_grace_seconds": self.misfire_grace_seconds.strip(),
            "retries": self.retries.strip(),
            "retry_delay_seconds": self.retry_delay_seconds.strip(),
            "order": self.order,
            "execute_modules": steps,
        }
