"""The ``clicklake`` command (``python -m clicklake`` and the installed script)."""

import atexit
import gc
import os
import sys

#: DuckDB's allocator settings for ``clicklake models ...`` (see :func:`main`).
MODELS_DUCKDB_MALLOC_CONF = "dirty_decay_ms:10000"


def main() -> None:
    """Run the CLI. Start-up creates some 300,000 long-lived objects (the config's and PyIceberg's
    pydantic models, the enrichers' lists); collecting cyclic garbage while they come cost about
    a sixth of start-up CPU, so collection is off until the command is set up (the CLI switches
    it back on: at once for most commands, after setting up the engine for ``run``).

    After a ``run`` that committed everything, the process ends without the interpreter's
    teardown: exit handlers still run (logs flushed, thread pools joined, temporary files
    removed), but tearing down every module and freeing a large heap object by object took
    ~0.4 s after the work was done and reported.

    DuckDB's allocator (its own jemalloc) returns freed pages to the system after 1 s by default;
    a model build frees and takes back gigabytes from step to step, and faulting them in again
    cost ~3 million page faults, 2-3 s of system CPU at 10M events. For ``models`` commands ten
    seconds keeps them for the next step (a million fewer faults). Other commands keep the
    default: the pipeline, whose peak memory has a budget, held ~50 MB more with it. The
    variable must be set before DuckDB loads; a value set by the user wins."""
    if "models" in sys.argv[1:]:
        os.environ.setdefault("DUCKDB_JE_MALLOC_CONF", MODELS_DUCKDB_MALLOC_CONF)
    gc.disable()
    try:
        from clicklake import cli

        cli.main()
    except SystemExit as exc:
        if exc.code not in (0, None) or not cli.SKIP_TEARDOWN:
            raise
    finally:
        gc.enable()
    if cli.SKIP_TEARDOWN:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
