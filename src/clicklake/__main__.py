"""The ``clicklake`` command (``python -m clicklake`` and the installed script)."""

import atexit
import gc
import os
import sys


def main() -> None:
    """Run the CLI. Start-up creates some 300,000 long-lived objects (the config's and PyIceberg's
    pydantic models, the enrichers' lists); collecting cyclic garbage while they come cost about
    a sixth of start-up CPU, so collection is off until the command is set up (the CLI switches
    it back on: at once for most commands, after setting up the engine for ``run``).

    After a ``run`` that committed everything, the process ends without the interpreter's
    teardown: exit handlers still run (logs flushed, thread pools joined, temporary files
    removed), but tearing down every module and freeing a large heap object by object took
    ~0.4 s after the work was done and reported.

    numpy's OpenBLAS starts a thread per core when numpy is imported, and each busy-waits for
    work first: ~0.13 CPU s of spinning at every start, taken from the start-up and the head
    start's decoding on a 2-core machine. clicklake does no linear algebra (no BLAS call), so
    one thread is enough unless the environment says otherwise."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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
