"""Loading user files: a stem that names another module does not replace it; a syntax error
is a ValidationError naming the file and line. Real files in ``tmp_path``; ``monkeypatch``
only puts that directory on ``sys.path`` for the test (and takes it off after)."""
import json
import sys

import pytest

from twingraph.cli.loading import load_module
from twingraph.errors import ValidationError

SOURCE = ("from twingraph import component, pipeline\n"
          "@component\ndef inc(x: int) -> int:\n    return x + 1\n"
          "@pipeline(name='shadow')\ndef shadow(x: int = 1):\n    return inc(x=x)['outputs']\n")


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """tmp_path on sys.path (load_module leaves a path already there alone), and the modules
    loaded from it dropped afterwards (any module one replaced put back)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = dict(sys.modules)
    yield tmp_path
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            if name in before:                         # one it replaced: put back
                sys.modules[name] = before[name]
            else:
                del sys.modules[name]


def test_a_file_named_like_a_loaded_module_gets_a_name_of_its_own(user_dir):
    (user_dir / "json.py").write_text(SOURCE)
    (user_dir / "other").mkdir()
    (user_dir / "other" / "json.py").write_text(SOURCE)
    module = load_module(str(user_dir / "json.py"))
    assert sys.modules["json"] is json and json.loads("[1]") == [1]
    assert module.__name__ != "json" and sys.modules[module.__name__] is module
    assert module.shadow.run is not None
    assert load_module(str(user_dir / "json.py")) is module           # the same file: cached
    other = load_module(str(user_dir / "other" / "json.py"))
    assert other is not module and other.__name__ not in ("json", module.__name__)


def test_a_file_with_a_free_stem_keeps_it(user_dir):
    (user_dir / "tg_free_stem_pipe.py").write_text(SOURCE)
    module = load_module(str(user_dir / "tg_free_stem_pipe.py"))
    assert module.__name__ == "tg_free_stem_pipe"
    assert sys.modules["tg_free_stem_pipe"] is module


def test_a_syntax_error_names_the_file_and_line(user_dir):
    (user_dir / "tg_broken.py").write_text("x = 1\ndef f(:\n    pass\n")
    with pytest.raises(ValidationError, match=r"syntax error in .*tg_broken\.py:2"):
        load_module(str(user_dir / "tg_broken.py"))
    assert "tg_broken" not in sys.modules
    with pytest.raises(ValidationError, match=r"tg_broken\.py:2"):
        load_module("tg_broken")                                  # as a module name too
