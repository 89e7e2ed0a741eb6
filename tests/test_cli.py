"""The ``keras-sparse`` command line: ``report`` and ``demo``."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_sparse as ks
from keras_sparse import cli


def _saved_sparse_model(path, sparsity=0.9):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="relu", name="enc"),
        keras.layers.Dense(4, name="head"),
    ])
    model = ks.prune(model, sparsity)
    for layer in model.layers:
        layer.prune_to(sparsity)
    model.save(path)
    return model


def test_report_command_writes_json(tmp_path, capsys):
    path = str(tmp_path / "model.keras")
    out = str(tmp_path / "report.json")
    model = _saved_sparse_model(path)

    assert cli.main(["report", path, "--json", out]) == 0

    text = capsys.readouterr().out
    assert "enc" in text and "head" in text and "total" in text
    with open(out) as f:
        data = json.load(f)
    expected = ks.report(model, print_fn=None).to_dict()
    assert [row["layer"] for row in data["layers"]] == ["enc", "head"]
    assert data["totals"] == json.loads(json.dumps(expected["totals"]))
    assert data["totals"]["params"] == 16 * 32 + 32 + 32 * 4 + 4
    kept = (512 - round(0.9 * 512)) + (128 - round(0.9 * 128))
    assert data["totals"]["effective_flops"] == 2 * kept


def test_report_command_on_plain_model(tmp_path, capsys):
    path = str(tmp_path / "plain.keras")
    ks.strip(_saved_sparse_model(str(tmp_path / "sparse.keras"))).save(path)
    assert cli.main(["report", path]) == 0
    assert "enc" in capsys.readouterr().out


def test_cli_rejects_missing_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code != 0


@pytest.mark.slow
def test_report_command_in_a_subprocess(tmp_path):
    path = str(tmp_path / "model.keras")
    out = str(tmp_path / "report.json")
    _saved_sparse_model(path, sparsity=0.5)
    script = shutil.which("keras-sparse")
    command = [script] if script else [sys.executable, "-m", "keras_sparse.cli"]
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend(), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command + ["report", path, "--json", out], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "enc" in result.stdout
    with open(out) as f:
        data = json.load(f)
    assert data["totals"]["sparsity"] == pytest.approx(0.5)


@pytest.mark.slow
def test_demo_command_runs(monkeypatch, capsys):
    monkeypatch.setenv("KERAS_SPARSE_FAST", "1")
    assert cli.main(["demo", "--epochs", "1"]) == 0
    text = capsys.readouterr().out
    assert "1 epochs" in text
    lines = [line for line in text.splitlines() if line.startswith(("dense", "90% sparse"))]
    assert len(lines) == 2
    sparse_row = lines[1].split()
    assert "90.0%" in sparse_row  # the schedule reaches its target inside one epoch
    dense_row, sparse_row = lines[0].split(), lines[1].split()
    # compressed bytes and FLOPs: the sparse model is smaller on both
    as_int = lambda s: int(s.replace(",", ""))  # noqa: E731
    assert as_int(sparse_row[-1]) < as_int(dense_row[-1])
    assert as_int(sparse_row[-3]) < as_int(dense_row[-3])
    assert np.isfinite(float(sparse_row[2].rstrip("%")))
