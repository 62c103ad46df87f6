"""``cellsynth`` entry point: builds the parser and turns every error into one line and exit 1."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from cellsynth._version import __version__
from cellsynth.cli import (
    bench,
    demo,
    distill,
    distill_eval,
    evaluate,
    export,
    info,
    sample,
    subsample,
    train,
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line with exit code 1, like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.endswith("expected one argument"):
            # argparse takes a value starting with '-' (--shard -1/2, --seed -x) for an option.
            message += "; a value that starts with '-' is written --option=VALUE"
        self.exit(1, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cellsynth",
        description="Train diffusion models on single-cell RNA-seq counts and generate "
        "synthetic cells.",
    )
    parser.add_argument("--version", action="version", version=f"cellsynth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train.add_parser(sub)
    sample.add_parser(sub)
    info.add_parser(sub)
    export.add_parser(sub)
    demo.add_parser(sub)
    subsample.add_parser(sub)
    evaluate.add_parser(sub)
    distill.add_parser(sub)
    distill_eval.add_parser(sub)
    bench.add_parser(sub)
    return parser


RESUME_HINTS = {
    "sample": "; the same command with --resume continues from the chunks already done",
    "train": "; the same command with --resume continues from the last checkpoint",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or container stopping the job), unwound like Ctrl-C."""


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every temporary file is removed on the way out (its
    # default action would end the process where it stands and leave them).
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        args.run(args)
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(
            f"cellsynth: {what}; nothing was written under the final output name"
            + RESUME_HINTS.get(args.command, ""),
            file=sys.stderr,
        )
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, never a traceback
        if os.environ.get("CELLSYNTH_DEBUG"):
            raise
        print(f"cellsynth: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _one_line(exc: BaseException) -> str:
    from cellsynth.errors import CellsynthError

    text = " ".join(str(exc).split()) or type(exc).__name__
    # Our own errors are written for the user; anything else gets its type as a hint.
    if isinstance(exc, CellsynthError | FileNotFoundError | FileExistsError):
        return text
    return f"{type(exc).__name__}: {text}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
