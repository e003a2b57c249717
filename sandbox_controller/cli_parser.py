"""An argument parser for commands that return an exit code instead of exiting.

argparse calls ``sys.exit`` on bad arguments and ``--help``; ``plan`` and ``simulate``
are also called in-process (tests, ``cli.main``), so their parsers raise ``ParserExit``
and each ``main`` turns it into its return code.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .quantities import byte_size


class ParserExit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class ReturningParser(argparse.ArgumentParser):
    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise ParserExit(status)


def archive_size(text: str) -> int:
    """An argument that is a size of more than nothing: ``50Mi``, ``1G``, ``1048576``."""
    try:
        size = byte_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 50Mi")
    return size
