"""A stage's fingerprint follows its code: changed code reruns it, comments do not."""

import sys

import pytest

from flows.stage import code_fingerprint, modules_hash


@pytest.fixture
def package(tmp_path, monkeypatch):
    root = tmp_path / "fpkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "task.py").write_text("from fpkg.lib import scale\nfrom fpkg import helper\n\n"
                                  "def run(x):\n    return scale(x)\n")
    (root / "lib.py").write_text("def scale(x):\n    return 2 * x\n")
    (root / "helper.py").write_text("K = 1\n")
    (root / "unused.py").write_text("def other():\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield root
    for name in [m for m in sys.modules if m.split(".")[0] == "fpkg"]:
        del sys.modules[name]


def test_code_changes_change_the_hash_and_comments_do_not(package):
    before = modules_hash(["fpkg.task"], ("fpkg",))
    (package / "lib.py").write_text("# twice x\ndef scale(x):\n\n    return 2 * x  # doubled\n")
    assert modules_hash(["fpkg.task"], ("fpkg",)) == before, "comments and layout do not count"
    (package / "unused.py").write_text("def other():\n    return 1\n")
    assert modules_hash(["fpkg.task"], ("fpkg",)) == before, "a module not imported does not count"
    (package / "lib.py").write_text("def scale(x):\n    return 3 * x\n")
    changed = modules_hash(["fpkg.task"], ("fpkg",))
    assert changed != before, "an imported module's code counts"
    (package / "helper.py").write_text("K = 2\n")
    assert modules_hash(["fpkg.task"], ("fpkg",)) != changed, "`from pkg import module` counts"
    assert modules_hash(["fpkg.task"], ()) == modules_hash(["fpkg.task"], ("other",)), \
        "only the followed packages are followed"


def test_each_stage_has_its_own_code_fingerprint():
    prints = {stage: code_fingerprint(stage) for stage in ("train", "score", "evaluate")}
    assert len(set(prints.values())) == 3
    assert code_fingerprint("score") == prints["score"], "stable"
