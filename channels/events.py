"""Validation of the events devices publish into `session:` channels.

Every refusal names the field and the allowed range (error 107), so a firmware author can fix
the payload from the error alone. Fields a client adds beyond the schema travel unchanged.
"""

from __future__ import annotations

from typing import Any, TypeGuard

from channels.base import bad_request

MAX_HR_SAMPLES = 600
_MAX_EVENT_ID = 128


def validate(event: dict[str, Any]) -> dict[str, Any]:
    """The event's typed fields for storage; raises ReplyError(107) naming the bad field."""
    kind = event.get("type")
    if kind == "set":
        return _set_fields(event)
    if kind == "hr":
        return {"samples": _samples(event.get("samples"))}
    raise bad_request('type: must be "set" or "hr"')


def event_id(event: dict[str, Any]) -> str:
    value = event.get("event_id")
    if not _is_text(value, _MAX_EVENT_ID):
        raise bad_request(f"event_id: must be a string of 1 to {_MAX_EVENT_ID} characters")
    return value


def _is_text(value: Any, longest: int) -> TypeGuard[str]:
    """A non-empty string PostgreSQL can store: no NUL character, which would fail the whole
    batch of events it is committed with, every time it is retried."""
    return isinstance(value, str) and 1 <= len(value) <= longest and "\x00" not in value


def _set_fields(event: dict[str, Any]) -> dict[str, Any]:
    exercise = event.get("exercise")
    if not _is_text(exercise, 64):
        raise bad_request("exercise: must be a string of 1 to 64 characters")
    fields: dict[str, Any] = {
        "exercise": exercise,
        "reps": _integer(event, "reps", 0, 1000),
        "weight_kg": _number(event, "weight_kg", 0, 1000),
    }
    if event.get("rpe") is not None:
        fields["rpe"] = _number(event, "rpe", 1, 10)
    if event.get("duration_s") is not None:
        fields["duration_s"] = _number(event, "duration_s", 0, 86400)
    if event.get("ts") is not None:
        fields["ts"] = _integer(event, "ts", 0, 2**53)
    return fields


def _samples(samples: Any) -> list[tuple[int, int]]:
    if not isinstance(samples, list) or not 1 <= len(samples) <= MAX_HR_SAMPLES:
        raise bad_request(f"samples: must be a list of 1 to {MAX_HR_SAMPLES} [ts_ms, bpm] pairs")
    out: list[tuple[int, int]] = []
    for i, sample in enumerate(samples):
        if not (isinstance(sample, list) and len(sample) == 2
                and all(_is_int(v) for v in sample)):
            raise bad_request(f"samples[{i}]: must be [ts_ms, bpm] with two integers")
        ts, bpm = sample
        if not 20 <= bpm <= 250:
            raise bad_request(f"samples[{i}]: bpm must be from 20 to 250")
        if ts < 0:
            raise bad_request(f"samples[{i}]: ts_ms must not be negative")
        out.append((ts, bpm))
    return out


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(event: dict[str, Any], name: str, low: int, high: int) -> int:
    value = event.get(name)
    if not _is_int(value) or not low <= value <= high:
        raise bad_request(f"{name}: must be an integer from {low} to {high}")
    return int(value)


def _number(event: dict[str, Any], name: str, low: float, high: float) -> float:
    value = event.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise bad_request(f"{name}: must be a number from {low:g} to {high:g}")
    return float(value)
