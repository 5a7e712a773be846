"""The relay's exceptions, one tree::

    RelayError
    ├── SettingsError          an environment variable is missing or invalid (names it, never its value)
    ├── ConfigError            the mapping config is invalid; .problems lists file, route and field of each
    ├── RedisUnavailable       Redis cannot be reached: ingress answers 503, nothing is claimed
    ├── IngressRefused         a webhook is refused; .status is the HTTP status, str() the JSON reason
    │   ├── UnknownSource          404
    │   ├── VerificationFailed     401 (the reason never shows the expected value)
    │   ├── MalformedBody          400
    │   ├── MalformedHeader        400 (a header the relay reads, such as the event id's, is not UTF-8)
    │   ├── UnsupportedMediaType   415
    │   ├── BodyTooLarge           413
    │   └── RequestTimeout         408 (the body did not arrive within RELAY_BODY_READ_TIMEOUT_S)
    ├── MappingError           an event cannot be mapped for a route (a required field is missing, ...)
    ├── PhoneNumberInvalid     a value is not a valid phone number; the message gives its shape, not it
    ├── DeliveryPaused         a run held back without an attempt (breaker open, rate limit); .delay_s
    ├── RunHeld                a run parked by a pause until resumed, or held outside its quiet hours
    ├── DeadLetterError        a dead-letter operation cannot be done (unknown job, event expired, ...)
    └── RunnerError            a PHLO run did not succeed
        ├── RunnerRejected         the runner answered non-2xx; .status, .error, .permanent
        └── RunnerUnreachable      no answer: connection refused, timeout; .ambiguous if it may have run

Secrets are never put in an exception's message or repr: callers pass what is safe to show.
"""

from __future__ import annotations

from dataclasses import dataclass


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class SettingsError(RelayError):
    """An invalid or missing setting; the message names the environment variable."""


@dataclass(frozen=True)
class ConfigProblem:
    """One error in a mapping config: where it is and what is wrong."""

    file: str
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.location}: {self.message}"


class ConfigError(RelayError):
    """The mapping config is invalid."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(problem) for problem in problems))


class RedisUnavailable(RelayError):
    """Redis did not answer; nothing was stored."""


class IngressRefused(RelayError):
    """A webhook the ingress refuses, with the HTTP status to answer."""

    status = 400
    code = "refused"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class UnknownSource(IngressRefused):
    status = 404
    code = "unknown_source"


class VerificationFailed(IngressRefused):
    """The request did not prove it came from the source's sender."""

    status = 401
    code = "verification_failed"


class MalformedBody(IngressRefused):
    status = 400
    code = "malformed_body"


class MalformedHeader(IngressRefused):
    status = 400
    code = "malformed_header"


class UnsupportedMediaType(IngressRefused):
    status = 415
    code = "unsupported_media_type"


class BodyTooLarge(IngressRefused):
    status = 413
    code = "body_too_large"


class RequestTimeout(IngressRefused):
    status = 408
    code = "request_timeout"


class MappingError(RelayError):
    """An event cannot be turned into a run for one route."""

    def __init__(self, route: str, message: str) -> None:
        self.route = route
        self.message = message
        super().__init__(f"route {route!r}: {message}")


class PhoneNumberInvalid(RelayError):
    """A value that ``format: e164`` cannot read as a valid number; the mapping names the payload key."""


class DeliveryPaused(RelayError):
    """A run is held back, not attempted: it is scheduled again in ``delay_s``."""

    def __init__(self, reason: str, delay_s: float) -> None:
        self.reason = reason
        self.delay_s = delay_s
        super().__init__(f"{reason}; next try in {delay_s:.1f} s")


class RunHeld(RelayError):
    """A run is parked, not attempted: until its paused route, account or source is resumed, or (quiet
    hours) until its route's delivery window opens."""


class DeadLetterError(RelayError):
    """A dead-letter operation cannot be done; the message says why."""


class RunnerError(RelayError):
    """A PHLO run did not succeed. ``permanent`` errors are not worth retrying."""

    permanent = False


class RunnerRejected(RunnerError):
    """The runner answered with a non-2xx status."""

    def __init__(
        self, status: int, error: str, api_id: str | None = None, retry_after_s: float | None = None
    ) -> None:
        self.status = status
        self.error = error
        self.api_id = api_id
        self.retry_after_s = retry_after_s
        super().__init__(f"runner answered HTTP {status}: {error}")

    @property
    def permanent(self) -> bool:  # type: ignore[override]
        # 408, 425, 429 and 5xx may pass; every other 4xx will not get better by retrying.
        return 400 <= self.status < 500 and self.status not in (408, 425, 429)


class RunnerUnreachable(RunnerError):
    """No answer from the runner. ``ambiguous`` when the request was sent: the PHLO may have run."""

    def __init__(self, reason: str, ambiguous: bool) -> None:
        self.reason = reason
        self.ambiguous = ambiguous
        suffix = " (request was sent: the PHLO may have run)" if ambiguous else ""
        super().__init__(f"runner unreachable: {reason}{suffix}")
