"""Atomic output writing: no half-written file ever appears under its final name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lrpath_onnx.errors import OutputError
from lrpath_onnx.io import outputs
from lrpath_onnx.io.outputs import (
    atomic_path,
    clean_temporaries,
    ensure_out_dir,
    write_json,
    write_npy,
    write_text,
)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def _dead_pid() -> int:
    """The pid of a process that has finished (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


# ---------------------------------------------------------------- ensure_out_dir
def test_ensure_out_dir_creates_nested_and_leaves_no_probe(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    assert ensure_out_dir(target) == target
    assert target.is_dir()
    assert _listing(target) == []
    assert ensure_out_dir(target) == target  # existing folder is fine


def test_ensure_out_dir_refuses_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match="file.txt"):
        ensure_out_dir(f)


def test_ensure_out_dir_refuses_folder_under_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(OutputError, match="cannot create"):
        ensure_out_dir(f / "sub")


def test_ensure_out_dir_probe_failure_is_output_error(tmp_path, monkeypatch):
    """A folder where writing fails (simulated: root ignores chmod) raises OutputError."""
    real_open = open

    def failing_open(file, mode="r", *args, **kwargs):
        if ".write-probe" in str(file):
            raise PermissionError(13, "Permission denied")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OutputError, match="not writable"):
        ensure_out_dir(tmp_path / "ro")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into a mode-500 folder anyway (permission bits need a non-root POSIX "
                           "user); the refusal itself is tested by the failing-open test above")
def test_ensure_out_dir_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="ro"):
            ensure_out_dir(ro)
    finally:
        ro.chmod(0o700)


# ---------------------------------------------------------------- atomic_path
def test_atomic_path_temp_name_and_success(tmp_path):
    final = tmp_path / "result.npy"
    with atomic_path(final) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".result.npy.tmp-")
        assert f"-{os.getpid()}-" in tmp.name
        assert tmp.suffix == ".npy"
        assert not final.exists()
        np.save(tmp, np.arange(5))  # must not append another .npy
        assert not final.exists()  # nothing under the final name before the block ends
    assert _listing(tmp_path) == ["result.npy"]
    np.testing.assert_array_equal(np.load(final), np.arange(5))


def test_atomic_path_exception_removes_temp_and_keeps_old(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert _listing(tmp_path) == ["out.txt"]
    assert final.read_text() == "old"


def test_atomic_path_exception_leaves_no_file(tmp_path):
    final = tmp_path / "new.png"
    with pytest.raises(KeyError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"\x89PNG partial")
            raise KeyError("x")
    assert _listing(tmp_path) == []


def test_atomic_path_nothing_written(tmp_path):
    with pytest.raises(OutputError, match="nothing was written"):
        with atomic_path(tmp_path / "empty.json"):
            pass
    assert _listing(tmp_path) == []


def test_atomic_path_overwrites_existing(tmp_path):
    final = tmp_path / "x.txt"
    final.write_text("old")
    with atomic_path(final) as tmp:
        tmp.write_text("new")
    assert final.read_text() == "new"
    assert _listing(tmp_path) == ["x.txt"]


def test_sigkill_mid_write_leaves_no_final_file(tmp_path):
    """A process killed while writing leaves only a hidden temporary, which is cleaned."""
    final = tmp_path / "big.bin"
    script = textwrap.dedent(f"""
        import sys, time
        from lrpath_onnx.io.outputs import atomic_path
        with atomic_path({str(final)!r}) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"x" * 1000)
                fh.flush()
                print("writing", flush=True)
                time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert not final.exists()
    leftovers = [p for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".big.bin.tmp-")
    assert clean_temporaries(tmp_path) == leftovers
    assert _listing(tmp_path) == []


# ---------------------------------------------------------------- writers
def test_write_json_numpy_and_nonfinite(tmp_path):
    obj = {
        "f32": np.float32(1.5),
        "i64": np.int64(7),
        "arr": np.array([[1.0, np.nan], [np.inf, -np.inf]]),
        "ints": np.arange(3, dtype=np.int16),
        "nan": float("nan"),
        "bool": np.bool_(True),
        "tuple": (1, 2.5),
        np.int32(4): "key",
        "nested": [{"x": np.float64(-np.inf)}],
        "path": tmp_path / "p",
    }
    final = write_json(tmp_path / "r.json", obj)
    text = final.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert text.startswith("{\n  ")  # indent=2
    data = json.loads(text)
    assert data["f32"] == 1.5 and isinstance(data["f32"], float)
    assert data["i64"] == 7 and isinstance(data["i64"], int)
    assert data["arr"] == [[1.0, None], [None, None]]
    assert data["ints"] == [0, 1, 2]
    assert data["nan"] is None
    assert data["bool"] is True
    assert data["tuple"] == [1, 2.5]
    assert data["4"] == "key"
    assert data["nested"] == [{"x": None}]
    assert data["path"] == str(tmp_path / "p")
    assert _listing(tmp_path) == ["r.json"]


def test_write_json_unserialisable_leaves_nothing(tmp_path):
    with pytest.raises(OutputError, match="object"):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_write_npy_roundtrip(tmp_path, seed):
    arr = np.random.default_rng(seed).standard_normal((2, 3, 4)).astype(np.float32)
    final = write_npy(tmp_path / "rel.npy", arr)
    assert _listing(tmp_path) == ["rel.npy"]
    back = np.load(final, allow_pickle=False)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, arr)


def test_write_npy_without_npy_suffix_keeps_name(tmp_path):
    final = write_npy(tmp_path / "rel.bin", np.arange(4.0))
    assert _listing(tmp_path) == ["rel.bin"]
    np.testing.assert_array_equal(np.load(final, allow_pickle=False), np.arange(4.0))


def test_write_npy_refuses_objects(tmp_path):
    with pytest.raises(OutputError, match="object"):
        write_npy(tmp_path / "o.npy", np.array([1, "a"], dtype=object))
    assert _listing(tmp_path) == []


def test_write_text_utf8(tmp_path):
    final = write_text(tmp_path / "s.txt", "relevance Σ = 1.0\n")
    assert final.read_bytes() == "relevance Σ = 1.0\n".encode("utf-8")


def test_write_into_missing_folder_is_output_error(tmp_path):
    with pytest.raises(OutputError, match="cannot write"):
        write_text(tmp_path / "missing" / "s.txt", "x")


# ---------------------------------------------------------------- clean_temporaries
def test_clean_temporaries_removes_only_dead_leftovers(tmp_path):
    dead = _dead_pid()
    stale = [
        tmp_path / f".a.png.tmp-{dead}-deadbeef.png",
        tmp_path / f".b.json.tmp-{dead}-0a1b.json",
        tmp_path / f".write-probe.tmp-{dead}-1234",
    ]
    live = tmp_path / f".c.npy.tmp-{os.getpid()}-abcd.npy"  # a run still writing
    keep = [tmp_path / "a.png", tmp_path / "notes.tmp-1-2", tmp_path / ".hidden"]
    for p in stale + [live] + keep:
        p.write_text("x")
    (tmp_path / f".dir.tmp-{dead}-ab").mkdir()
    removed = clean_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert _listing(tmp_path) == sorted(
        [live.name, f".dir.tmp-{dead}-ab"] + [p.name for p in keep]
    )


def test_clean_temporaries_visits_sample_folders_to_depth(tmp_path):
    dead = _dead_pid()
    one = tmp_path / "cat" / f".heatmap.png.tmp-{dead}-ab.png"
    two = tmp_path / "cat" / "deeper" / f".x.npy.tmp-{dead}-cd.npy"
    for p in (one, two):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    assert clean_temporaries(tmp_path) == [one]
    assert two.exists()
    assert clean_temporaries(tmp_path, depth=2) == [two]
    assert clean_temporaries(tmp_path, depth=0) == []


def test_clean_temporaries_missing_folder(tmp_path):
    assert clean_temporaries(tmp_path / "nope") == []


def test_temp_names_are_unique(tmp_path):
    names = {outputs.temporary_name(tmp_path / "x.png").name for _ in range(50)}
    assert len(names) == 50
