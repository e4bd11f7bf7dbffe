"""Loading user code: a ``FILE.py`` path or an importable module name.

Files are imported under a stable module name (their stem) with their directory on ``sys.path``,
and registered with cloudpickle by value so process workers can run their functions. A stem
that already names another module (``json.py``, ``copy.py``, a second ``pipe.py``) is not
taken over: replacing ``sys.modules['json']`` breaks every later ``json.loads``. Such a file is
imported under a private name of its own, fixed by its path (``_twingraph_file_json_1a2b3c4d``):
the same file gets the same name, so its components keep their identity between runs. Its
directory goes last on ``sys.path`` rather than first, for process workers' sake (they start
with this ``sys.path`` and import ``json`` afresh).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from twingraph.dsl.params import (Nullable, build_param, from_text, param_json_types,
                                  param_text_types)
from twingraph.dsl.pipeline import Pipeline
from twingraph.errors import ValidationError


def load_module(target: str) -> ModuleType:
    path = Path(target)
    if path.is_dir():
        # A package directory (``mypkg``, ``./mypkg``): imported as the package, its parent
        # first on sys.path (taken for a file, it was "file not found").
        if not (path / "__init__.py").is_file():
            raise ValidationError(f"{target} is a directory, not a Python file or package "
                                  f"(no __init__.py)")
        path = path.resolve()
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        module = _import(path.name)
    elif path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise ValidationError(f"file not found: {target}")
        path = path.resolve()
        name = path.stem
        existing = sys.modules.get(name)
        clash = existing is not None and getattr(existing, "__file__", None) != str(path)
        if clash:
            name = _private_name(path)         # the stem is another module's: leave it be
            existing = sys.modules.get(name)
        if existing is not None and getattr(existing, "__file__", None) == str(path):
            return existing
        if str(path.parent) not in sys.path:
            # Last when the file shadows a module: process workers start with this sys.path
            # and import that module again (``json``); first, it would be the file.
            if clash:
                sys.path.append(str(path.parent))
            else:
                sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ValidationError(f"cannot load {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            sys.modules.pop(name, None)
            raise _syntax_error(exc) from None
        except ImportError as exc:      # a missing dependency: said as for a module target
            sys.modules.pop(name, None)
            raise ValidationError(f"cannot load {target}{_where(exc)}: "
                                  f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:        # the module's own code raised: one line, exit 2
            sys.modules.pop(name, None)
            raise ValidationError(f"cannot load {target}: it raised "
                                  f"{type(exc).__name__}: {exc}{_where(exc)}") from exc
        except SystemExit as exc:
            # a script's ``sys.exit(0)`` at import: the command exited 0 with no run and no
            # word, which a CI job reads as success
            sys.modules.pop(name, None)
            raise _exited(target, exc) from None
        except BaseException:
            sys.modules.pop(name, None)
            raise
    else:
        # The current directory first on sys.path, as ``python -m twingraph`` has it: the
        # console script's sys.path starts with its own directory, and did not find a package
        # the user stands next to (``twingraph run mypkg.flow`` in mypkg's parent).
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = _import(target)
    try:
        import cloudpickle
        cloudpickle.register_pickle_by_value(module)
    except (ImportError, ValueError):
        pass
    return module


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except SyntaxError as exc:
        raise _syntax_error(exc) from None
    except ImportError as exc:
        raise ValidationError(f"cannot import {name!r}{_where(exc)}: {exc}") from exc
    except Exception as exc:        # the module's own code raised
        raise ValidationError(f"cannot import {name!r}: it raised "
                              f"{type(exc).__name__}: {exc}{_where(exc)}") from exc
    except SystemExit as exc:
        raise _exited(name, exc) from None


def _where(exc: BaseException) -> str:
    """`` (at FILE:LINE)``: the innermost line of the user's own code in ``exc``'s traceback
    (the file being loaded, or a helper module it imports), not Python's or TwinGraph's;
    the one-line error said what was raised, not where."""
    import traceback
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    others = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        where = os.path.abspath(frame.filename)
        if frame.filename.startswith("<") or where.startswith(ours) \
                or any(where.startswith(p + os.sep) for p in others):
            continue
        found = frame
    return "" if found is None else f" (at {found.filename}:{found.lineno})"


def _exited(target: str, exc: SystemExit) -> ValidationError:
    return ValidationError(f"cannot load {target}: it called sys.exit({exc.code!r}) as it was "
                           "imported (guard a script's own code with "
                           "if __name__ == \"__main__\":)")


def _private_name(path: Path) -> str:
    """The module name of a file whose stem names another module: stem and a digest of the
    path, so it is the same for the same file and differs for two files of one stem."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return f"_twingraph_file_{path.stem}_{digest}"


def _syntax_error(exc: SyntaxError) -> ValidationError:
    """A ``ValidationError`` naming the file and line (the user's code, not TwinGraph, is at
    fault: a usage error, not a traceback)."""
    where = f"{exc.filename or '<unknown>'}:{exc.lineno}" if exc.lineno else exc.filename or "?"
    line = f"\n    {exc.text.strip()}" if exc.text and exc.text.strip() else ""
    return ValidationError(f"syntax error in {where}: {exc.msg}{line}")


def find_pipeline(module: ModuleType, name: str | None, *, recorded: bool = False) -> Pipeline:
    """The pipeline ``name`` (a variable of ``module`` or a pipeline's name; ``recorded``: a
    name a run recorded, which is a pipeline's name first) or, without one,
    the module's only pipeline. One object bound to two names (``default = main_flow``) is one
    pipeline, and one the module imports (a sub-pipeline it calls) gives way to those defined
    in it: neither makes the module one of "several pipelines"."""
    found = {k: v for k, v in vars(module).items() if isinstance(v, Pipeline)}
    if name:
        if name in found and not recorded:
            return found[name]
        for p in found.values():
            if p.name == name:
                return p
        if name in found:
            return found[name]
        raise ValidationError(f"no pipeline {name!r} in {module.__name__} "
                              f"(found: {', '.join(sorted(found)) or 'none'})")
    pipes = list({id(p): p for p in found.values()}.values())
    own = [p for p in pipes if p.fn.__module__ == module.__name__]
    pipes = own or pipes
    if len(pipes) == 1:
        return pipes[0]
    if not pipes:
        raise ValidationError(f"no @pipeline in {module.__name__}")
    names = sorted(k for k, v in found.items() if any(v is p for p in pipes))
    raise ValidationError(f"{module.__name__} has several pipelines "
                          f"({', '.join(names)}): name one as FILE.py:NAME")


def split_target(target: str) -> tuple[str, str | None]:
    """``'file.py:name'`` -> ('file.py', 'name'); ``'pkg.mod'`` -> ('pkg.mod', None). A drive
    letter (``C:\\flows\\p.py``) is one only on Windows: ``m:flow`` is module ``m``'s ``flow``."""
    drive = os.name == "nt" and len(target) > 1 and target[1] == ":" and target[0].isalpha()
    if ":" in target and not (drive and target.count(":") == 1):
        file, _, name = target.rpartition(":")
        return file, name or None
    return target, None


def parse_params(items: list[str], fn: Any = None) -> dict[str, object]:
    """``k=v`` pairs; values are parsed as JSON when they can be (numbers, true, lists). With
    the pipeline function ``fn``, a value for a parameter annotated ``str``, ``int``, ``float``,
    ``bool``, ``list`` or ``dict`` must be one (``ValidationError`` naming it otherwise; ``str``
    keeps the text as typed, ``float`` takes an integer, a ``list`` must be a JSON array: a
    typo in one was taken as text); ``Optional[...]`` of one also takes ``null``. A value for
    a parameter annotated with a text kind (``Path``, ``date``, ``datetime``, ``UUID``,
    ``Decimal``, an ``Enum``: ``dsl.params``) is built from its text."""
    import json
    hints = _scalar_hints(fn)
    texts = {} if fn is None else param_text_types(fn)
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise ValidationError(f"--param {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        if k in out:            # the first or the second? neither is a safe guess
            raise ValidationError(f"--param {k} is given twice")
        if k in texts:
            out[k] = _text_param(k, texts[k], v)
            continue
        want = hints.get(k)
        if isinstance(want, Nullable):
            if v == "null":
                out[k] = None
                continue
            want = want.type
        if want is str:
            out[k] = v
            continue
        try:
            value: object = json.loads(v, parse_constant=_no_constant, parse_float=_finite)
        except _NotFinite:
            raise ValidationError(f"--param {k}: {v!r}: a run cannot store NaN or Infinity "
                                  f"(JSON has neither)") from None
        except ValueError:
            value = v
        if want is float and type(value) is int:
            value = float(value)
        if want is not None and type(value) is not want:
            named = hints[k].__name__          # "int", or "int or null"
            raise ValidationError(f"--param {k}: expected {named}, got {v!r}")
        out[k] = value
    return out


def _text_param(name: str, kind: Any, text: str) -> object:
    """``--param name=text`` for a text kind: the text itself (an enum's value may be a JSON
    number, ``level=2``); ``null`` is None where the annotation allows it."""
    import json
    if isinstance(kind, Nullable) and text == "null":
        return None
    try:
        return build_param(name, kind, text, "--param")   # a slot's text for logical_date: date
    except ValidationError as first:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if value is not None and not isinstance(value, str):
            try:
                return from_text(kind, value)
            except ValueError:
                pass
        raise first from None


class _NotFinite(Exception):
    """``json.loads`` met NaN or (-)Infinity, which the json module accepts and JSON does not
    (the store refuses them later, with a traceback and no parameter named)."""


def _no_constant(name: str) -> object:
    raise _NotFinite(name)


def _finite(text: str) -> float:
    """A JSON number as ``float``; one too large for a double (``1e400``) is the Infinity
    ``json.loads`` would make of it, and refused as that literal is."""
    value = float(text)
    if math.isinf(value):
        raise _NotFinite(text)
    return value


def _scalar_hints(fn: Any) -> dict[str, Any]:
    return {} if fn is None else param_json_types(fn)
