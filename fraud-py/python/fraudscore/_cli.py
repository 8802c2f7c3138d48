"""The ``fraud`` command installed with the package: the engine's command line (``fraud serve``,
``fraud train``, ``fraud features``, ...), run in process by the native module, so that a
``pip install fraudscore`` gives the same tool as a build of the Rust workspace."""

from __future__ import annotations

import sys

from . import _fraudscore


def main(argv: list[str] | None = None) -> int:
    """Runs ``fraud`` with ``argv`` (default: this process's arguments after the program's
    name) and returns its exit code; as a console script, the code becomes the process's."""
    args = sys.argv[1:] if argv is None else list(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    return _fraudscore.run_cli(["fraud", *args])


if __name__ == "__main__":
    sys.exit(main())
