"""Helpers shared by the benchmarks in ``bench/``.

- :func:`run_measured` runs a command and samples the resident memory of its whole process tree.
- :func:`write_results_section` replaces one bench's section of ``bench/RESULTS.md``.
- :func:`machine_info` describes the machine and library versions a result was taken on.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
OUT_DIR = BENCH_DIR / "out"  # git-ignored scratch space

MB = 1_000_000  # sizes and rates are reported in decimal megabytes

_RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "Each section is written by the bench named in its markers; rerun that bench to refresh it.\n"
)


def clicklake_exe() -> Path:
    """The ``clicklake`` console script of the interpreter running the bench (the venv's)."""
    return Path(sys.executable).parent / "clicklake"


@dataclass(frozen=True)
class Measured:
    """Outcome of :func:`run_measured`.

    Attributes:
        returncode: exit status of the command.
        wall_s: wall-clock seconds from start to exit, interpreter start-up included.
        peak_rss: largest sum of RSS over the process and all its descendants, in bytes,
            as seen by sampling (a peak shorter than the poll interval can be missed).
        stdout: captured standard output.
        stderr: captured standard error.
        cpu_s: user + system CPU seconds of the process and the descendants it waited for.
    """

    returncode: int
    wall_s: float
    peak_rss: int
    stdout: str
    stderr: str
    cpu_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_line(self) -> str:
        """The last non-empty line of stderr (where a traceback puts the exception), or the code."""
        for line in reversed(self.stderr.splitlines()):
            if line.strip():
                return line.strip()
        return f"exit code {self.returncode}"


def _tree_rss(proc: psutil.Process) -> int:
    """RSS of ``proc`` plus all its descendants; processes that vanish mid-walk count as 0."""
    try:
        members = [proc, *proc.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return 0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return total


def run_measured(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    poll_s: float = 0.05,
) -> Measured:
    """Run ``cmd`` to completion, timing it and sampling the RSS of its process tree.

    Output goes to temporary files rather than pipes, so a chatty child can never block on a
    full pipe while we poll.

    Args:
        cmd: program and arguments.
        env: extra environment variables, layered over the current environment.
        cwd: working directory of the child.
        poll_s: sampling interval for RSS, in seconds.

    Returns:
        The exit code, wall time, peak tree RSS, captured output and CPU seconds.
    """
    full_env = {**os.environ, **(env or {})}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen([os.fspath(c) for c in cmd], stdout=out, stderr=err, env=full_env, cwd=cwd)
        peak = 0
        try:
            proc = psutil.Process(child.pid)
            while child.poll() is None:
                peak = max(peak, _tree_rss(proc))
                time.sleep(poll_s)
        except psutil.NoSuchProcess:
            pass
        returncode = child.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(returncode, wall, peak, stdout, stderr, cpu)


class RssSampler:
    """Samples this process's RSS on a background thread; use as a context manager.

    For measuring work done in-process; :func:`run_measured` is preferred when the work can run
    in its own process, since a fresh process does not carry the bench's own memory.
    """

    def __init__(self, poll_s: float = 0.05) -> None:
        self._poll_s = poll_s
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_rss = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
            self._stop.wait(self._poll_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)


T = TypeVar("T")


def median_run(runs: Sequence[T], ok: Callable[[T], bool], wall_s: Callable[[T], float]) -> T:
    """The run that stands for several runs of one command: the first failed one, if any failed
    (a failure is never hidden by a median), else the median by wall time (the lower of the
    two middles for an even count). The benches repeat their timed commands because this
    machine's speed moves 20-40 % within the hour."""
    failed = [r for r in runs if not ok(r)]
    return failed[0] if failed else sorted(runs, key=wall_s)[(len(runs) - 1) // 2]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(packages: Sequence[str] = ("clicklake", "duckdb", "pyarrow", "pyiceberg")) -> dict[str, str]:
    """Describe the machine and the versions of ``packages``, for the header of a result.

    Returns:
        Ordered ``label -> value`` pairs: CPU, usable cores, RAM, OS, Python, then each package.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "nproc": str(usable),
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    info.update({name: _version(name) for name in packages})
    return info


def utc_now() -> str:
    """The current UTC time, to the second, for result headers."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _align(headers: Sequence[str], align: str | None) -> str:
    """Default alignment: first column left, the rest right; otherwise one ``l``/``r`` per column."""
    spec = align or "l" + "r" * (len(headers) - 1)
    if len(spec) != len(headers) or set(spec) - {"l", "r"}:
        raise ValueError(f"align must be one 'l' or 'r' per column, got {spec!r}")
    return spec


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table.

    Args:
        headers: column titles.
        rows: cells, already formatted.
        align: one ``l`` or ``r`` per column; default first column left, the rest right.
    """
    marks = [":--" if a == "l" else "--:" for a in _align(headers, align)]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A plain aligned table for the terminal; ``align`` as in :func:`markdown_table`."""
    spec = _align(headers, align)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(row: Sequence[str]) -> str:
        cells = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, spec, strict=True)]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])


def write_results_section(name: str, body: str, path: Path = RESULTS_MD) -> None:
    """Write ``body`` between ``<!-- {name}:start -->`` and ``<!-- {name}:end -->`` in ``path``.

    Only that section is replaced, so several benches can share one file; a missing section is
    appended, and a missing file is created with a short header.

    Args:
        name: the bench's name, used in the markers.
        body: markdown for the section, without the markers.
        path: the results file.

    Raises:
        ValueError: if the file has a start marker for ``name`` without a matching end marker.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else _RESULTS_HEADER
    i = text.find(start)
    if i == -1:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        j = text.find(end, i)
        if j == -1:
            raise ValueError(f"{path}: found {start!r} but no {end!r}; fix the file by hand")
        text = text[:i] + block + text[j + len(end) :]
    path.write_text(text)
