"""Retry policies: which failures retry, and how long to wait (fixed or exponential, with jitter).

The documented dict form is accepted: ``{'max_attempts': 3, 'backoff': 'exponential',
'initial_delay': 1, 'max_delay': 60, 'exceptions': ['TransientError', 'TimeoutError']}``.
``exceptions`` names classes; an error matches if any class in its MRO has that name (short or
qualified), so ``'TimeoutError'`` also matches ``TaskTimeout``. Randomness is injected.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twingraph.errors import ValidationError

#: The most attempts a policy may ask for: a task's fencing tokens of one driver of a run lie in
#: a block of ``FENCE_STRIDE`` numbers (``core.states.fence``), its attempts numbered inside it.
MAX_ATTEMPTS = 9_999

_KEYS = {"max_attempts", "backoff", "initial_delay", "max_delay", "exceptions", "jitter",
         "multiplier"}


#: ``RetryPolicy.max_delay`` when none is given (raised to ``initial_delay`` if that is longer).
DEFAULT_MAX_DELAY = 60.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 1
    backoff: str = "exponential"        # 'fixed' | 'exponential'
    initial_delay: float = 1.0
    max_delay: float = DEFAULT_MAX_DELAY
    multiplier: float = 2.0
    jitter: float = 0.1                 # +/- fraction of the delay, 0 disables
    exceptions: tuple[str, ...] = ()    # empty = every exception retries
    never: tuple[str, ...] = ()         # classes that never retry (e.g. 'ValidationError')

    @classmethod
    def parse(cls, value: RetryPolicy | Mapping[str, Any] | None) -> RetryPolicy | None:
        if value is None or isinstance(value, RetryPolicy):
            return value
        if not isinstance(value, Mapping):
            raise ValidationError(f"retry_policy must be a dict, got {type(value).__name__}")
        unknown = set(value) - _KEYS
        if unknown:
            raise ValidationError(f"retry_policy: unknown keys {sorted(unknown)}; "
                                  f"allowed: {sorted(_KEYS)}")
        kw: dict[str, Any] = dict(value)
        if "exceptions" in kw:
            exc = kw["exceptions"]
            if isinstance(exc, str):
                exc = [exc]
            if not isinstance(exc, (list, tuple)):
                raise ValidationError(f"retry_policy.exceptions must be a list of class names, "
                                      f"got {exc!r}")
            names = []
            for e in exc:
                names.append(e if isinstance(e, str) else getattr(e, "__name__", None))
                if not isinstance(names[-1], str):
                    raise ValidationError(f"retry_policy.exceptions: {e!r} is not a class name")
            kw["exceptions"] = tuple(names)
            _warn_if_misspelt(kw["exceptions"])
        if "jitter" in kw and isinstance(kw["jitter"], bool):
            kw["jitter"] = 0.1 if kw["jitter"] else 0.0
        if "max_delay" not in kw and isinstance(kw.get("initial_delay"), (int, float)) \
                and not isinstance(kw["initial_delay"], bool):
            # The default cap (60 s) is below a longer first delay the user asked for: the
            # cap is then that delay, not an error about a value the user never set.
            kw["max_delay"] = max(DEFAULT_MAX_DELAY, kw["initial_delay"])
        if "initial_delay" not in kw and isinstance(kw.get("max_delay"), (int, float)) \
                and not isinstance(kw["max_delay"], bool):
            # ... and a cap below the default first delay (1 s) caps that delay too.
            kw["initial_delay"] = min(cls.__dataclass_fields__["initial_delay"].default,
                                      kw["max_delay"])
        policy = cls(**kw)
        policy.validate()
        return policy

    def validate(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) \
                or not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValidationError(f"retry_policy.max_attempts must be an integer from 1 to "
                                  f"{MAX_ATTEMPTS}")
        if self.backoff not in ("fixed", "exponential"):
            raise ValidationError("retry_policy.backoff must be 'fixed' or 'exponential'")
        for name in ("initial_delay", "max_delay", "multiplier", "jitter"):
            v = getattr(self, name)
            # NaN compares False with everything, so ``v < 0`` alone would let it (and inf) in.
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
                raise ValidationError(f"retry_policy.{name} must be a finite number >= 0")
        if self.multiplier < 1:      # 0 made every delay after the first 0; 0.5 shrinks them
            raise ValidationError("retry_policy.multiplier must be >= 1")
        if self.jitter > 1:          # a fraction of the delay: above 1 it could go negative
            raise ValidationError("retry_policy.jitter must be a fraction from 0 to 1")
        if self.max_delay < self.initial_delay:
            raise ValidationError("retry_policy.max_delay must be >= initial_delay")

    def retries(self, error: BaseException, attempt: int) -> bool:
        """Whether a failure of ``attempt`` (1-based) should be followed by another attempt."""
        if attempt >= self.max_attempts:
            return False
        if getattr(error, "twingraph_retry", True) is False:    # inputs a component refused
            return False
        if self.never and matches(error, self.never):
            return False
        if not self.exceptions:
            return True
        return matches(error, self.exceptions)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based) before the next one."""
        if self.backoff == "fixed":
            base = self.initial_delay
        else:
            try:
                base = self.initial_delay * self.multiplier ** (attempt - 1)
            except OverflowError:        # a late attempt of a long policy: capped below
                base = self.max_delay if self.initial_delay else 0.0
        base = min(base, self.max_delay)
        if self.jitter and base > 0:
            r = (rng or random).uniform(-self.jitter, self.jitter)
            base = min(self.max_delay, max(0.0, base * (1 + r)))
        return base

    def to_dict(self) -> dict[str, Any]:
        return {"max_attempts": self.max_attempts, "backoff": self.backoff,
                "initial_delay": self.initial_delay, "max_delay": self.max_delay,
                "multiplier": self.multiplier, "jitter": self.jitter,
                "exceptions": list(self.exceptions)}


def _warn_if_misspelt(names: tuple[str, ...]) -> None:
    """A name close to one of Python's exceptions but not one (``ConnectionErorr``) matched
    nothing, and the task was never retried, without a word. A warning, not an error: a
    class of the user's own may be named so."""
    import builtins
    import difflib
    import warnings
    known = [n for n, v in vars(builtins).items()
             if isinstance(v, type) and issubclass(v, BaseException)]
    for name in names:
        if "." in name or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if close:
            warnings.warn(f"retry_policy.exceptions names {name!r}, which is not one of "
                          f"Python's exceptions: did you mean {close[0]!r}? (a class of your "
                          f"own must be named exactly)", UserWarning, stacklevel=_user_level())


def _user_level() -> int:
    """The ``stacklevel`` of the first caller outside TwinGraph (the user's decorator line)."""
    import os
    import sys
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame: Any = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def matches(error: BaseException, names: tuple[str, ...]) -> bool:
    wanted = set(names)
    err_type = getattr(error, "error_type", None)   # remote errors carry their class name
    if err_type in wanted or not wanted.isdisjoint(getattr(error, "error_types", ())):
        return True                                   # ... and those of its bases
    for cls in type(error).__mro__:
        if cls.__name__ in wanted or f"{cls.__module__}.{cls.__qualname__}" in wanted:
            return True
    return False
