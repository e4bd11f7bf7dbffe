"""A pipeline whose parameters are text kinds (``dsl.params``): what the body gets from the
CLI, REST and a resume."""
from __future__ import annotations

import enum
import os
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Optional
from uuid import UUID

from twingraph import component, pipeline


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


@component()
def describe(values: dict):
    if os.environ.get("TYPED_FAIL_IF_MISSING") and \
            not os.path.exists(os.environ["TYPED_FAIL_IF_MISSING"]):
        raise RuntimeError("not yet")
    return {k: [type(v).__name__, str(v)] for k, v in values.items()}


@pipeline(name="typed")
def typed(out: Path, day: date, ratio: float = 1.0, level: Level = Level.LOW,
          at: Optional[datetime] = None, amount: Decimal = Decimal("0"),
          ident: UUID | None = None):
    return describe(values={"out": out, "day": day, "ratio": ratio, "level": level, "at": at,
                            "amount": amount, "ident": ident})["outputs"]


@pipeline(name="typed_defaults")
def typed_defaults(out: Path = "out.csv", ratio: float = 1, since: date = "",  # type: ignore[assignment]
                   mode: Level = "LOW"):  # type: ignore[assignment]
    """Defaults that are not of their annotation: the function's own, never converted."""
    return describe(values={"out": out, "ratio": ratio, "since": since,
                            "mode": mode})["outputs"]


@pipeline(name="dated", schedule="0 2 * * *")
def dated(logical_date: date, ratio: float = 1.0):
    return describe(values={"logical_date": logical_date, "ratio": ratio})["outputs"]
