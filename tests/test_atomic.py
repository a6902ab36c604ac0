"""Outputs are written whole or not at all (tools/atomic.py): attention.npz, PNGs, the
explorer page, profile.json, the machine cache, a conversion's output."""

from __future__ import annotations

import os
import stat
import threading
import zipfile

import numpy as np
import pytest

from llama_np import ArgumentError
from llama_np.checkpoints import DEFAULT_CHECKPOINT
from llama_np.checkpoints.export import convert
from llama_np.tools import atomic
from llama_np.tools.trace import AttentionTrace, save_npz


def trace_of(n: int, value: float) -> AttentionTrace:
    probs = np.full((2, 4, n, n), value, dtype=np.float32)  # (L', H, N, N)
    return AttentionTrace(probs, np.arange(n), ["x"] * n, 1, [0, 1], bos_id=1)


def test_two_writers_and_a_reader_see_only_whole_files(tmp_path):
    """Two `trace --out DIR` runs at once: each save_npz replaces the file whole, so a
    reader meanwhile finds one run's arrays or the other's, never a broken archive."""
    path = tmp_path / "attention.npz"
    save_npz(trace_of(8, 0.0), path)
    runs = [trace_of(300, 1.0), trace_of(200, 2.0)]
    stop = threading.Event()

    def write(trace):
        while not stop.is_set():
            save_npz(trace, path)

    writers = [threading.Thread(target=write, args=(t,)) for t in runs]
    for w in writers:
        w.start()
    try:
        for _ in range(40):
            with np.load(path) as f:  # a torn file: BadZipFile, or arrays of two runs
                probs, tokens = f["probs"], f["tokens"]
            assert probs.shape[2] == len(tokens)
            assert len(np.unique(probs)) == 1
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attention.npz"]  # no temp files


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "profile.json"
    atomic.write_text(path, '{"old": 1}')
    with pytest.raises(RuntimeError), atomic.atomic_path(path) as tmp:
        tmp.write_text('{"new": ')
        raise RuntimeError("the process failed half way")
    assert path.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["profile.json"]


def test_the_temporary_name_keeps_the_suffix(tmp_path):
    """np.savez adds ".npz" to a name without it, and matplotlib picks the format by it."""
    with atomic.atomic_path(tmp_path / "layer0.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".")
        tmp.write_bytes(b"png")
    with atomic.atomic_path(tmp_path / "a.npz") as tmp:
        np.savez_compressed(tmp, x=np.zeros(3, dtype=np.float32))
    assert zipfile.is_zipfile(tmp_path / "a.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "layer0.png"]


def test_a_pipe_is_written_into_never_replaced(tmp_path):
    """--html /dev/null (or a pipe) must not become a regular file: renaming a temporary file
    over a device node replaced it (as root, /dev/null itself). Tested on a FIFO."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text(encoding="utf-8")))
    reader.start()
    atomic.write_text(fifo, "hello")
    reader.join(10)
    assert got == ["hello"] and stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_path_that_cannot_be_a_file_is_refused_before_any_work(tmp_path):
    with pytest.raises(ArgumentError, match="is a directory"):
        atomic.check_file_path(tmp_path, "--html")
    with pytest.raises(ArgumentError, match="does not exist; create it first"):
        atomic.check_file_path(tmp_path / "no" / "x.html")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ArgumentError, match="not a regular file or a directory"):
        convert(DEFAULT_CHECKPOINT, fifo, "gguf", force=True)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
