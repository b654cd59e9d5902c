"""The ``clicklake`` command (``python -m clicklake`` and the installed script)."""

import gc


def main() -> None:
    """Run the CLI. Start-up creates some 300,000 long-lived objects (the config's and PyIceberg's
    pydantic models, the enrichers' lists); collecting cyclic garbage while they come cost about
    a sixth of start-up CPU, so collection is off until the command is set up (the CLI switches
    it back on: at once for most commands, after setting up the engine for ``run``)."""
    gc.disable()
    try:
        from clicklake.cli import main as cli_main

        cli_main()
    finally:
        gc.enable()


if __name__ == "__main__":
    main()
