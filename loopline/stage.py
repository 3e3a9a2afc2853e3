"""Shared plumbing for stage entry points: logging and turning Loopline errors into a clear exit."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from loopline.errors import LooplineError


def run_stage(stage: str, body: Callable[[], object]) -> int:
    """Run a stage body; a LooplineError becomes one line on stderr and exit status 1."""
    logging.basicConfig(level=logging.INFO, format=f"{stage}: %(message)s", stream=sys.stderr)
    try:
        body()
    except LooplineError as exc:
        print(f"{stage} failed: {exc}", file=sys.stderr)
        print(f"{stage}: the previous outputs were left as they were.", file=sys.stderr)
        return 1
    return 0
