"""Every tutorial runs end to end, in fast mode, on the current backend.

Tutorials are the ``tutorials/NN_*.py`` scripts in jupytext percent format.
Each runs in its own subprocess (a fresh Keras, as a reader would start it)
with ``KERAS_SPARSE_FAST=1`` and the backend of this test session. A tutorial
that needs TensorFlow says so with a line ``# tutorial-backends: tensorflow``;
it is then marked ``tf_only``.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "tutorials"
TUTORIALS = sorted(TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))
BACKENDS_LINE = re.compile(r"^# tutorial-backends:\s*(.+)$", re.MULTILINE)
TIMEOUT_SECONDS = 900
TAIL_CHARS = 4000


def _backends(path):
    match = BACKENDS_LINE.search(path.read_text())
    if match is None:
        return None
    return {name.strip() for name in match.group(1).split(",")}


def _params():
    params = []
    for path in TUTORIALS:
        marks = [pytest.mark.slow]
        if _backends(path) == {"tensorflow"}:
            marks.append(pytest.mark.tf_only)
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


def _cells(path):
    """``(kind, source lines)`` for each ``# %%`` cell of a percent script."""
    cells = []
    for line in path.read_text().splitlines():
        if line.startswith("# %%"):
            kind = "markdown" if line.strip() == "# %% [markdown]" else "code"
            cells.append((kind, []))
        elif cells:
            cells[-1][1].append(line)
    return cells


def test_tutorials_exist():
    assert TUTORIALS, f"no tutorials/[0-9][0-9]_*.py found in {TUTORIALS_DIR}"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_is_a_percent_notebook(path):
    cells = _cells(path)
    kinds = [kind for kind, _ in cells]
    assert "markdown" in kinds, f"{path.name} has no `# %% [markdown]` cell"
    assert "code" in kinds, f"{path.name} has no `# %%` code cell"
    for kind, lines in cells:
        if kind == "markdown":
            text = [line for line in lines if line.strip()]
            assert text, f"{path.name} has an empty markdown cell"
            assert all(line.startswith("#") for line in text), (
                f"{path.name}: a markdown cell has a line that is not a comment: "
                f"{next(line for line in text if not line.startswith('#'))!r}"
            )


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_converts_to_notebook(path):
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(path)
    kinds = [cell.cell_type for cell in notebook.cells]
    expected = [kind for kind, _ in _cells(path)]
    assert kinds[-len(expected):] == expected


@pytest.mark.parametrize("path", _params())
def test_tutorial_runs(path, tmp_path):
    backend = keras.backend.backend()
    backends = _backends(path)
    if backends is not None and backend not in backends:
        pytest.skip(f"{path.name} runs on {sorted(backends)}, not {backend}")
    env = dict(os.environ, KERAS_SPARSE_FAST="1", KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{path.name} exited with {result.returncode} on {backend}.\n"
            f"--- stdout (tail) ---\n{result.stdout[-TAIL_CHARS:]}\n"
            f"--- stderr (tail) ---\n{result.stderr[-TAIL_CHARS:]}",
            pytrace=False,
        )
    # Tutorials write only to temporary directories, never where they are run.
    assert sorted(p.name for p in tmp_path.iterdir()) == []
