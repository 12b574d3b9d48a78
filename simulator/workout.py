"""A plausible strength workout as a stream of events, for demos: what a trainer would see.

An athlete works through a plan of exercises, several sets each, at a working weight that
suits them; reps fall and effort (RPE) rises as they tire. Heart rate climbs during a set and
falls back while resting, reported once a second. Time is compressed so a demo shows something
within seconds: with one event a second, a set comes every `set_every` events (the rest are
heart-rate batches with the samples since the last one).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

PLAN = (
    ("squat", 1.0, 5),
    ("bench press", 0.7, 8),
    ("deadlift", 1.2, 5),
    ("overhead press", 0.45, 8),
    ("barbell row", 0.65, 10),
    ("pull-up", 0.0, 8),
)
"""(exercise, working weight as a share of the athlete's squat, target reps)."""
SETS_PER_EXERCISE = (3, 5)
RECOVERY_S = 6.0
"""Time constant of the heart rate falling back after a set (compressed, like the workout)."""


@dataclass
class _Exercise:
    name: str
    weight_kg: float
    reps: int
    sets: int


class Workout:
    """Events of one athlete's workout; call it as `Device(events=Workout(seed))`.

    Deterministic for a seed, so a demo's athletes differ from each other but not from run to
    run. Not thread-safe; one per device.
    """

    def __init__(self, seed: str, *, set_every: int = 4) -> None:
        self._rng = random.Random(seed)
        self.set_every = max(1, set_every)
        squat = self._rng.choice(range(60, 161, 5))
        self._plan = [
            _Exercise(name, _plates(squat * share), reps + self._rng.randint(-1, 2),
                      self._rng.randint(*SETS_PER_EXERCISE))
            for name, share, reps in PLAN[: self._rng.randint(3, len(PLAN))]
        ]
        self._exercise = 0
        self._set_in_exercise = 0
        self._events = 0
        self._rest_bpm = self._rng.randint(62, 78)
        self._peak_bpm = self._rng.randint(150, 178)
        self._effort = 0.3
        """0 (resting) to 1 (peak), decaying between sets."""
        self._last_hr_ms: int | None = None
        self._last_effort_ms: int | None = None

    def __call__(self, event_id: str, now_ms: int) -> dict[str, Any]:
        self._events += 1
        if self._events % self.set_every == 0:
            return self._set(event_id, now_ms)
        return self._hr(event_id, now_ms)

    def _set(self, event_id: str, now_ms: int) -> dict[str, Any]:
        exercise = self._plan[self._exercise % len(self._plan)]
        fatigue = self._set_in_exercise
        reps = max(1, exercise.reps - fatigue // 2 - self._rng.randint(0, 1))
        rpe = min(10.0, round((6.5 + fatigue * 0.75) * 2) / 2 + self._rng.choice((0.0, 0.5)))
        self._set_in_exercise += 1
        if self._set_in_exercise >= exercise.sets:
            self._exercise += 1
            self._set_in_exercise = 0
        self._decay(now_ms)
        self._effort = min(1.0, self._effort + 0.45 + 0.05 * fatigue)
        return {
            "type": "set", "event_id": event_id, "exercise": exercise.name, "reps": reps,
            "weight_kg": exercise.weight_kg, "rpe": rpe,
            "duration_s": round(reps * self._rng.uniform(2.5, 4.0), 1), "ts": now_ms,
        }

    def _hr(self, event_id: str, now_ms: int) -> dict[str, Any]:
        first = (now_ms // 1000) * 1000
        since = self._last_hr_ms + 1000 if self._last_hr_ms is not None else first - 4000
        # Two heart-rate events within one second: the second reports the next second.
        last = max(first, since)
        samples = [[ts, self._bpm(ts)] for ts in range(max(since, last - 60_000), last + 1, 1000)]
        self._last_hr_ms = last
        return {"type": "hr", "event_id": event_id, "samples": samples}

    def _bpm(self, ts: int) -> int:
        self._decay(ts)
        bpm = self._rest_bpm + (self._peak_bpm - self._rest_bpm) * self._effort
        return max(40, min(220, round(bpm + self._rng.gauss(0, 2))))

    def _decay(self, now_ms: int) -> None:
        if self._last_effort_ms is not None and now_ms > self._last_effort_ms:
            elapsed = (now_ms - self._last_effort_ms) / 1000
            self._effort = 0.25 + (self._effort - 0.25) * math.exp(-elapsed / RECOVERY_S)
        self._last_effort_ms = max(now_ms, self._last_effort_ms or now_ms)


def _plates(kg: float) -> float:
    """Rounded to what 2.5 kg plates make."""
    return max(0.0, round(kg / 2.5) * 2.5)
