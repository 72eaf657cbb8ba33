"""Domain errors raised by the core. The API base handler maps each to an HTTP status
and an envelope code in one place, so the core never thinks in HTTP."""

from __future__ import annotations


class DomainError(Exception):
    """Base class: `message` is safe to show to the client."""

    status = 500
    code = "5000"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class Invalid(DomainError):
    """Bad input: the message names the field."""

    status = 400
    code = "4000"


class InvalidFields(Invalid):
    """Several fields are bad: `errors` holds each one's Invalid. Its own message
    and field are the first one's, so a client that reads one error still gets a
    true one."""

    def __init__(self, errors: list[Invalid]) -> None:
        super().__init__(errors[0].message, field=errors[0].field)
        self.errors = list(errors)


class Forbidden(DomainError):
    status = 403
    code = "4030"


class NotFound(DomainError):
    status = 404
    code = "4040"


class Conflict(DomainError):
    status = 409
    code = "4090"


class TooManyRequests(DomainError):
    status = 429
    code = "4290"


class Unstorable(DomainError):
    """The store refused one record for its content (not an outage): the record was
    set aside so the others could be written. Retrying the same record will not help."""

    status = 422
    code = "4220"


class Unavailable(DomainError):
    """A dependency (a store, a module, the email API) cannot be reached."""

    status = 503
    code = "5030"
