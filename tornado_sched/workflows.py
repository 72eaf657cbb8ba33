"""Workflows: validation and storage.

A workflow is a list of modules with per-module args, fired at the union of several
crontab lines moved by a shift, in a time zone, or run on demand. Every user value
is checked for type before it reaches a query, so operator objects (`{"$ne": ...}`)
never do.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from .clock import DEFAULT_TIME_ZONE, utcnow
from .errors import Conflict, Invalid, InvalidFields, NotFound
from .events import WORKFLOW_DELETED, WORKFLOW_SAVED, EventBus
from .payload import PayloadError, check_value
from .protocol import TEXT_LIMIT_BYTES
from .registry import ModuleRegistry, ModuleRequirements
from .solver import Plan, StepRequirements, solve
from .stores import DocumentStore
from .text import has_control_chars
from .triggers import ShiftedCronTrigger, parse_shift, validate_crontab

# Form posts send numbers as text; only plain ASCII integers of sane length pass
# (str.isdigit() also accepts "²", which int() refuses).
_INT_TEXT = re.compile(r"-?[0-9]{1,12}")
OVERLAP = ("forbid", "allow")  # the first is the default
MISFIRE = ("skip", "run_once")  # the first is the default
# "parallel": every step is sent at once (the seed's behaviour); "data": a step waits
# for the producers of its inputs (see solver.py).
ORDER = ("parallel", "data")  # the first is the default
SHIFT_UNITS = ("s", "m", "h")
# Defaults of our optional fields: the API, the stored document and the form use these.
DEFAULT_TIMEOUT_SECONDS = 600
DEFAULT_MISFIRE_GRACE_SECONDS = 300
DEFAULT_RETRIES = 0
DEFAULT_RETRY_DELAY_SECONDS = 10
# A run that ended in one of these counts as failed (notifications, failing now, the
# history's "failed" filter and column).
FAILED_RUN_STATUSES = ("failure", "partial", "interrupted")
UPCOMING_COUNT = 5
MAX_MODULES = 5000
MAX_CRON_LINES = 50
MAX_TIMEZONE_CHARS = 64
# Each run stores a step's args as JSON in a TEXT column (65,535 bytes on MySQL/MariaDB):
# larger args could be saved but never run there.
MAX_ARGS_BYTES = TEXT_LIMIT_BYTES


@dataclass
class Workflow:
    """A stored workflow, types normalised for both MongoDB servers."""

    id: str
    workflow_id: int
    name: str
    description: str
    enable: bool
    execute_cron_list: list[str]
    execute_shift_time: int
    execute_shift_unit: str
    execute_modules: list[dict[str, Any]]
    timezone: str
    timeout_seconds: int
    overlap: str
    misfire: str
    misfire_grace_seconds: int
    retries: int
    retry_delay_seconds: int
    order: str = "parallel"
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_run: dict[str, Any] | None = field(default=None)
    # Not stored: what the last create/update found worth telling the operator
    # (required inputs nothing in a data-ordered workflow produces).
    warnings: list[str] = field(default_factory=list, compare=False)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Workflow:
        return cls(
            id=str(doc["_id"]),
            workflow_id=int(doc["workflow_id"]),
            name=str(doc["name"]),
            description=str(doc.get("description") or ""),
            enable=bool(doc.get("enable")),
            execute_cron_list=list(doc.get("execute_cron_list") or []),
            execute_shift_time=int(doc.get("execute_shift_time") or 0),
            execute_shift_unit=str(doc.get("execute_shift_unit") or "s"),
            execute_modules=list(doc.get("execute_modules") or []),
            timezone=str(doc.get("timezone") or DEFAULT_TIME_ZONE),
            timeout_seconds=int(doc.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS),
            overlap=str(doc.get("overlap") or OVERLAP[0]),
            misfire=str(doc.get("misfire") or MISFIRE[0]),
            misfire_grace_seconds=int(doc.get("misfire_grace_seconds") or DEFAULT_MISFIRE_GRACE_SECONDS),
            retries=int(doc.get("retries") or DEFAULT_RETRIES),
            # 0 is a valid delay (retry at once): only a missing value takes the default.
            retry_delay_seconds=_stored_int(doc, "retry_delay_seconds", DEFAULT_RETRY_DELAY_SECONDS),
            order=str(doc.get("order") or ORDER[0]),
            created_at=doc.get("created_at"),
            updated_at=doc.get("updated_at"),
            last_run=doc.get("last_run"),
        )

    def trigger(self) -> ShiftedCronTrigger:
        return ShiftedCronTrigger.from_workflow(
            self.execute_cron_list, self.execute_shift_time, self.execute_shift_unit, self.timezone
        )

    @property
    def schedulable(self) -> bool:
        return self.enable and bool(self.execute_cron_list)

    @property
    def last_run_failed(self) -> bool:
        """Whether the latest run ended failed (the dashboard lists these)."""
        return (self.last_run or {}).get("status") in FAILED_RUN_STATUSES

    def upcoming(self, now: datetime, count: int = UPCOMING_COUNT) -> list[datetime]:
        """The next `count` fire times after `now` (shift applied); none without a
        crontab, or for one croniter cannot step through."""
        if not self.execute_cron_list:
            return []
        try:
            return [fire for fire, _tick in self.trigger().schedule.upcoming(now, count)]
        except ValueError:
            return []

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow_id": self.workflow_id,
            "name": self.name,
            "description": self.description,
            "enable": self.enable,
            "execute_cron_list": self.execute_cron_list,
            "execute_shift_time": self.execute_shift_time,
            "execute_shift_unit": self.execute_shift_unit,
            "execute_modules": self.execute_modules,
            "timezone": self.timezone,
            "timeout_seconds": self.timeout_seconds,
            "overlap": self.overlap,
            "misfire": self.misfire,
            "misfire_grace_seconds": self.misfire_grace_seconds,
            "retries": self.retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            "order": self.order,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_run": self.last_run,
        }


def _stored_int(doc: dict[str, Any], name: str, default: int) -> int:
    value = doc.get(name)
    return default if value is None else int(value)


def _int(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
            value = int(value)
        else:
            raise Invalid(f"{name}: expected an integer", field=name)
    if not lo <= value <= hi:
        raise Invalid(f"{name}: must be between {lo} and {hi}", field=name)
    return value


def _choice(body: dict[str, Any], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = body.get(name, default)
    if value not in choices:
        raise Invalid(f"{name}: must be one of {', '.join(choices)}", field=name)
    return value


def _check_keys(value: Any, path: str) -> None:
    """Args are stored as given; keys that MongoDB would treat as operators are refused."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("$") or "." in key or "\0" in key:
                raise Invalid(f"{path}: key {key!r} must not start with '$' or contain '.'", field=path)
            _check_keys(item, path)
    elif isinstance(value, list):
        for item in value:
            _check_keys(item, path)


def validate_workflow(body: dict[str, Any], default_tz: str) -> dict[str, Any]:
    """The seed's create body (plus our optional fields) -> document fields.

    Every field is checked, so a form can show all its problems at once: with more
    than one, the `InvalidFields` raised carries each in `errors` (its own message and
    field are the first one's, which is what the REST envelope reports)."""
    try:
        # Every entry point (REST, dashboard form) gets the edge rules: depth, NaN,
        # 64-bit integers, no lone surrogates or NULs.
        check_value(body, "")
    except PayloadError as exc:
        raise Invalid(str(exc), field=exc.field or "body") from None
    problems: list[Invalid] = []

    def check(validate: Callable[[], Any], fallback: Any = None) -> Any:
        try:
            return validate()
        except Invalid as exc:
            problems.append(exc)
            return fallback

    name = check(lambda: _name(body), "")
    description = check(lambda: _description(body), "")
    enable = check(lambda: _enable(body), False)
    crons = check(lambda: _crons(body, enable), [])
    shift_time, shift_unit = check(lambda: _shift(body), (0, "s"))
    timezone = check(lambda: _timezone(body, default_tz), default_tz)
    steps = check(lambda: _steps(body, enable), [])
    fields = {
        "name": name,
        "description": description,
        "enable": enable,
        "execute_cron_list": crons,
        "execute_shift_time": shift_time,
        "execute_shift_unit": shift_unit,
        "execute_modules": steps,
        "module_hashes": sorted({s["module_hash"] for s in steps}),
        "timezone": timezone,
        "timeout_seconds": check(lambda: _int(body, "timeout_seconds", DEFAULT_TIMEOUT_SECONDS, 1, 7 * 86400)),
        "overlap": check(lambda: _choice(body, "overlap", OVERLAP[0], OVERLAP)),
        "misfire": check(lambda: _choice(body, "misfire", MISFIRE[0], MISFIRE)),
        "misfire_grace_seconds": check(
            lambda: _int(body, "misfire_grace_seconds", DEFAULT_MISFIRE_GRACE_SECONDS, 1, 7 * 86400)),
        "retries": check(lambda: _int(body, "retries", DEFAULT_RETRIES, 0, 10)),
        "retry_delay_seconds": check(lambda: _int(body, "retry_delay_seconds", DEFAULT_RETRY_DELAY_SECONDS, 0, 86400)),
        "order": check(lambda: _choice(body, "order", ORDER[0], ORDER)),
    }
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise InvalidFields(problems)
    return fields


def preview_fire_times(body: dict[str, Any], default_tz: str, now: datetime,
                       count: int = UPCOMING_COUNT) -> list[datetime]:
    """The next fire times of the crontab lines, shift and zone in a (partial) create
    body, as the scheduler would compute them; raises Invalid (or InvalidFields)
    naming the fields that stop it."""
    problems: list[Invalid] = []
    crons: list[str] = []
    shift: tuple[int, str] = (0, "s")
    timezone = default_tz
    for step in ("crons", "shift", "timezone"):
        try:
            if step == "crons":
                crons = _crons(body, False)
            elif step == "shift":
                shift = _shift(body)
            else:
                timezone = _timezone(body, default_tz)
        except Invalid as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise InvalidFields(problems)
    if not crons:
        return []
    trigger = ShiftedCronTrigger.from_workflow(crons, shift[0], shift[1], timezone)
    try:
        return [fire for fire, _tick in trigger.schedule.upcoming(now, count)]
    except ValueError:
        return []


def _name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise Invalid("name: required string", field="name")
    if len(name.strip()) > 100:
        raise Invalid("name: at most 100 characters", field="name")
    if has_control_chars(name):
        # The name reaches email subjects and log lines.
        raise Invalid("name: must not contain control characters", field="name")
    return name.strip()


def _description(body: dict[str, Any]) -> str:
    description = body.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str) or len(description) > 2000:
        raise Invalid("description: expected a string of at most 2000 characters", field="description")
    return description


def _enable(body: dict[str, Any]) -> bool:
    enable = body.get("enable", True)
    if isinstance(enable, str) and enable.lower() in ("true", "false"):
        enable = enable.lower() == "true"
    if not isinstance(enable, bool):
        raise Invalid("enable: expected true or false", field="enable")
    return enable


def _crons(body: dict[str, Any], enable: bool) -> list[str]:
    cron_list = body.get("execute_cron_list", [])
    if not isinstance(cron_list, list):
        # A plain string was once wrapped into a list; "* * * * *" vs ["* * * * *"] is
        # a mistake worth naming, not guessing around.
        raise Invalid("execute_cron_list: expected a JSON list of crontab strings", field="execute_cron_list")
    if len(cron_list) > MAX_CRON_LINES:
        raise Invalid(f"execute_cron_list: expected a list of at most {MAX_CRON_LINES} crontab lines", field="execute_cron_list")
    crons = []
    for index, line in enumerate(cron_list):
        if not isinstance(line, str):
            raise Invalid(f"execute_cron_list[{index}]: expected a crontab string", field="execute_cron_list")
        try:
            crons.append(validate_crontab(line))
        except ValueError as exc:
            raise Invalid(f"execute_cron_list[{index}]: {exc}", field="execute_cron_list") from None
    if enable and not crons:
        # An enabled workflow with no schedule would silently never fire.
        raise Invalid("execute_cron_list: an enabled workflow needs at least one crontab line", field="execute_cron_list")
    return crons


def _shift(body: dict[str, Any]) -> tuple[int, str]:
    shift_time = body.get("execute_shift_time", 0)
    if isinstance(shift_time, str) and _INT_TEXT.fullmatch(shift_time.strip()):
        shift_time = int(shift_time)
    shift_unit = body.get("execute_shift_unit", "s")
    if isinstance(shift_time, bool) or not isinstance(shift_time, int):
        raise Invalid("execute_shift_time: expected an integer", field="execute_shift_time")
    if shift_unit not in SHIFT_UNITS:
        raise Invalid("execute_shift_unit: must be one of s, m, h", field="execute_shift_unit")
    try:
        parse_shift(shift_time, shift_unit)
    except ValueError as exc:
        raise Invalid(f"execute_shift_time: {exc}", field="execute_shift_time") from None
    return shift_time, shift_unit


def _timezone(body: dict[str, Any], default_tz: str) -> str:
    timezone = body.get("timezone") or default_tz
    try:
        # IANA names are short; a long one reaches the file system (ENAMETOOLONG).
        if not isinstance(timezone, str) or len(timezone) > MAX_TIMEZONE_CHARS:
            raise ValueError
        zoneinfo.ZoneInfo(timezone)
    except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
        raise Invalid("timezone: unknown time zone", field="timezone") from None
    return timezone


def _steps(body: dict[str, Any], enable: bool) -> list[dict[str, Any]]:
    modules = body.get("execute_modules", [])
    if not isinstance(modules, list) or len(modules) > MAX_MODULES:
        raise Invalid(f"execute_modules: expected a list of at most {MAX_MODULES} modules", field="execute_modules")
    if enable and not modules:
        # Its runs would "succeed" having done nothing (a disabled draft may be empty;
        # running it by hand is refused too).
        raise Invalid("execute_modules: an enabled workflow needs at least one module", field="execute_modules")
    steps = []
    for index, item in enumerate(modules):
        where = f"execute_modules[{index}]"
        if not isinstance(item, dict):
            raise Invalid(f"{where}: expected an object with module_hash and args", field="execute_modules")
        module_hash = item.get("module_hash")
        if not isinstance(module_hash, str) or not module_hash or len(module_hash) > 128:
            raise Invalid(f"{where}.module_hash: expected a module hash string", field="execute_modules")
        args = item.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise Invalid(f"{where}.args: expected an object", field="execute_modules")
        _check_keys(args, f"{where}.args")
        size = len(json.dumps(args, ensure_ascii=False).encode("utf-8"))
        if size > MAX_ARGS_BYTES:
            raise Invalid(f"{where}.args: {size} bytes as JSON, more than {MAX_ARGS_BYTES}", field="execute_modules")
        steps.append({"module_hash": module_hash, "args": args})
    return steps


class WorkflowStore:
    """Workflow documents in the `workflows` collection.

    Every change is published on the event bus (`WORKFLOW_SAVED`, `WORKFLOW_DELETED`)
    once it is stored; the scheduler follows them, so no caller has to remember to
    keep the schedule in step."""

    def __init__(
        self, docs: DocumentStore, registry: ModuleRegistry, default_tz: str, events: EventBus | None = None
    ) -> None:
        self._docs = docs
        self._registry = registry
        self._default_tz = default_tz
        self._events = events

    def _saved(self, workflow: Workflow) -> Workflow:
        if self._events is not None:
            self._events.publish(WORKFLOW_SAVED, {"workflow": workflow})
        return workflow

    @property
    def _col(self) -> Any:
        return self._docs["workflows"]

    async def _validated(self, body: dict[str, Any], *, check_plan: bool = True) -> tuple[dict[str, Any], list[str]]:
        """Document fields and warnings. With order "data" (and `check_plan`), a cycle or
        an ambiguous producer among the steps is refused, naming the modules."""
        fields = validate_workflow(body, self._default_tz)
        hashes = fields["module_hashes"]
        known = await self._registry.requirements(hashes) if hashes else {}
        for index, step in enumerate(fields["execute_modules"]):
            if step["module_hash"] not in known:
                raise Invalid(f"execute_modules[{index}].module_hash: unknown module", field="execute_modules")
        if fields["order"] != "data" or not check_plan:
            return fields, []
        plan = _solve(fields["execute_modules"], known)
        if plan.conflicts:
            details = "; ".join(c.message for c in plan.conflicts[:5])
            more = f" (and {len(plan.conflicts) - 5} more)" if len(plan.conflicts) > 5 else ""
            raise Invalid(f'order: "data" cannot order these modules: {details}{more}', field="order")
        return fields, plan.warnings()

    async def solve(self, workflow: Workflow) -> Plan:
        """The solver's plan for `workflow` against its modules' current registrations
        (what a data-ordered run follows)."""
        hashes = sorted({m["module_hash"] for m in workflow.execute_modules})
        known = await self._registry.requirements(hashes) if hashes else {}
        return _solve(workflow.execute_modules, known)

    async def plans(self, workflows: list[Workflow]) -> dict[int, Plan]:
        """workflow_id -> plan for each data-ordered workflow among `workflows` (what the
        dashboard shows: unmet inputs, conflicts); one registry read for them all."""
        ordered = [w for w in workflows if w.order == "data"]
        hashes = sorted({m["module_hash"] for w in ordered for m in w.execute_modules})
        known = await self._registry.requirements(hashes) if hashes else {}
        return {w.workflow_id: _solve(w.execute_modules, known) for w in ordered}

    async def plan(self, workflow_id: int) -> WorkflowPlan:
        """The solver's result for a stored workflow, against its modules' current
        registrations (a module may have re-registered other requirements since)."""
        workflow = await self.get(workflow_id)
        hashes = sorted({m["module_hash"] for m in workflow.execute_modules})
        known = await self._registry.requirements(hashes) if hashes else {}
        return WorkflowPlan(workflow, _solve(workflow.execute_modules, known), known)

    async def create(self, body: dict[str, Any]) -> Workflow:
        fields, warnings = await self._validated(body)
        if await self._col.find_one({"name": fields["name"]}, {"_id": 1}):
            raise Conflict(f"name: a workflow named {fields['name']!r} already exists", field="name")
        now = utcnow()
        doc = {
            **fields,
            "workflow_id": await self._docs.next_id("workflows"),
            "created_at": now,
            "updated_at": now,
            "last_run": None,
        }
        try:
            await self._col.insert_one(doc)
        except DuplicateKeyError:
            raise Conflict(f"name: a workflow named {fields['name']!r} already exists", field="name") from None
        created = Workflow.from_doc(doc)
        created.warnings = warnings
        return self._saved(created)

    async def update(self, workflow_id: int, body: dict[str, Any]) -> Workflow:
        current = await self.get(workflow_id)
        merged = {**current.public(), **body}
        # The data plan is checked when the update touches it: a module that
        # re-registered other requirements must not block e.g. a rename.
        fields, warnings = await self._validated(
            merged, check_plan="order" in body or "execute_modules" in body
        )
        if fields["name"] != current.name and await self._col.find_one({"name": fields["name"]}, {"_id": 1}):
            raise Conflict(f"name: a workflow named {fields['name']!r} already exists", field="name")
        # Write only what the body changes (and what derives from it): a concurrent
        # enable/disable or edit of other fields is not overwritten with stale values.
        changed = {k: v for k, v in fields.items() if k in body}
        if "execute_modules" in body:
            changed["module_hashes"] = fields["module_hashes"]
        changed["updated_at"] = utcnow()
        try:
            doc = await self._col.find_one_and_update(
                {"workflow_id": workflow_id}, {"$set": changed}, return_document=ReturnDocument.AFTER
            )
        except DuplicateKeyError:
            raise Conflict(f"name: a workflow named {fields['name']!r} already exists", field="name") from None
        if doc is None:
            raise Conflict("workflow changed concurrently; retry")
        updated = Workflow.from_doc(doc)
        updated.warnings = warnings
        return self._saved(updated)

    async def set_enabled(self, workflow_id: int, enable: bool) -> Workflow:
        current = await self.get(workflow_id)
        if enable and not current.execute_cron_list:
            raise Invalid("enable: the workflow has no crontab lines to run on", field="enable")
        if enable and not current.execute_modules:
            raise Invalid("enable: the workflow has no modules to run", field="enable")
        await self._col.update_one(
            {"workflow_id": workflow_id}, {"$set": {"enable": enable, "updated_at": utcnow()}}
        )
        return self._saved(await self.get(workflow_id))

    async def delete(self, workflow_id: int) -> Workflow:
        current = await self.get(workflow_id)
        await self._col.delete_one({"workflow_id": workflow_id})
        if self._events is not None:
            self._events.publish(WORKFLOW_DELETED, {"workflow_id": current.workflow_id})
        return current

    async def clone(self, workflow_id: int) -> Workflow:
        """A copy of the workflow under a new unique name ("<name> (copy)", then
        "(copy 2)"...), disabled so it does not start firing beside the original."""
        current = await self.get(workflow_id)
        body = {k: v for k, v in current.public().items() if k not in ("id", "workflow_id", "last_run",
                                                                       "created_at", "updated_at")}
        body["enable"] = False
        base = f"{current.name[:88]} (copy"  # the name stays within its 100 characters
        for n in range(1, 1000):
            name = f"{base})" if n == 1 else f"{base} {n})"
            if not await self._col.find_one({"name": name}, {"_id": 1}):
                break
        else:
            raise Conflict(f"name: too many copies of {current.name!r}", field="name")
        body["name"] = name
        return await self.create(body)

    async def get(self, workflow_id: int) -> Workflow:
        doc = await self._col.find_one({"workflow_id": int(workflow_id)})
        if doc is None:
            raise NotFound(f"workflow {workflow_id} not found")
        return Workflow.from_doc(doc)

    async def workflow_id_for(self, document_id: str) -> int | None:
        """The integer workflow_id of the document whose ObjectId is `document_id`
        (the `id` field), to tell a client which id paths take."""
        try:
            oid = ObjectId(document_id)
        except (InvalidId, TypeError):
            return None
        doc = await self._col.find_one({"_id": oid}, {"workflow_id": 1})
        return None if doc is None else int(doc["workflow_id"])

    async def follow_rotation(self, new_hash: str) -> None:
        """Publish the workflows a module's hash rotation rewrote (ModuleRegistry
        writes them): the schedule and every other follower then run the new hash."""
        async for doc in self._col.find({"module_hashes": new_hash}):
            self._saved(Workflow.from_doc(doc))

    async def find(self, workflow_id: int) -> Workflow | None:
        doc = await self._col.find_one({"workflow_id": int(workflow_id)})
        return None if doc is None else Workflow.from_doc(doc)

    async def list(self, *, enabled_only: bool = False) -> list[Workflow]:
        # Filtered in Python: a bool written by an unpatched server may read back as 1.
        result = [Workflow.from_doc(d) async for d in self._col.find({}).sort("workflow_id", 1)]
        return [w for w in result if w.enable] if enabled_only else result

    async def set_last_run(self, workflow_id: int, summary: dict[str, Any]) -> None:
        await self._col.update_one({"workflow_id": workflow_id}, {"$set": {"last_run": summary}})


@dataclass
class WorkflowPlan:
    """A workflow's data plan: the solver's result with the steps named."""

    workflow: Workflow
    plan: Plan
    modules: dict[str, ModuleRequirements]

    def public(self) -> dict[str, Any]:
        steps = []
        for index, item in enumerate(self.workflow.execute_modules):
            module = self.modules.get(item["module_hash"])
            steps.append({
                "step": index,
                "module_id": module.module_id if module else None,
                "module_name": module.name if module else "?",
                "inputs": [r.to_doc() for r in module.inputs] if module else [],
                "outputs": [r.to_doc() for r in module.outputs] if module else [],
                "upstream": self.plan.upstream[index],
            })
        return {
            "workflow_id": self.workflow.workflow_id,
            "workflow_name": self.workflow.name,
            "order": self.workflow.order,
            "steps": steps,
            **self.plan.public(),
        }


def _solve(steps: list[dict[str, Any]], known: dict[str, ModuleRequirements]) -> Plan:
    """Steps (execute_modules entries) -> the solver's plan, by step index."""
    specs = []
    for item in steps:
        module = known.get(item["module_hash"])
        specs.append(
            StepRequirements(module.name, module.inputs, module.outputs) if module else StepRequirements("?")
        )
    return solve(specs)
