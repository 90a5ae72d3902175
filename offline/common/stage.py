"""What every offline stage script shares: arguments, logging, timing and one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import tqdm

from data_exchange_center.artifacts import ArtifactError, update_metrics
from data_exchange_center.paths import ArtifactPaths

log = logging.getLogger("recsys")
T = TypeVar("T")


class DataError(Exception):
    """The input data is missing or malformed; the message says which file and what to do."""


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="artifact folder (default: $RECSYS_DATA_DIR, else the data_exchange_center folder)",
    )
    parser.add_argument("--quiet", action="store_true", help="log warnings only, no progress bars")
    return parser


def configure_logging(quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def silence_progress_bars() -> None:
    """Every tqdm bar of this process disabled, also those that pass ``disable=`` themselves."""
    init = tqdm.tqdm.__init__
    if getattr(init, "silenced", False):
        return

    @functools.wraps(init)
    def quiet_init(self: tqdm.tqdm, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    quiet_init.silenced = True  # type: ignore[attr-defined]
    tqdm.tqdm.__init__ = quiet_init  # type: ignore[method-assign]


def run_stage(name: str, args: argparse.Namespace, work: Callable[[ArtifactPaths], object]) -> int:
    """Run one stage: log, time it into ``reports/metrics.json``, turn known errors into one line."""
    configure_logging(getattr(args, "quiet", False))
    if getattr(args, "quiet", False):
        silence_progress_bars()
    paths = ArtifactPaths.from_env(args.data_dir)
    started = time.perf_counter()
    try:
        work(paths)
    except (DataError, ArtifactError) as exc:
        log.error("%s failed: %s", name, exc)
        return 2
    elapsed = time.perf_counter() - started
    update_metrics(paths.metrics_path, {"timings_s": {name: round(elapsed, 3)}})
    log.info("%s done in %.1f s (peak memory %.0f MiB)", name, elapsed, peak_memory_mib())
    return 0


def add_config_arguments(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One ``--flag`` per field of a config dataclass, with the dataclass default as the default."""
    defaults = config_type()
    for field in dataclasses.fields(config_type):
        value = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, tuple):  # e.g. hidden layer sizes: --hidden-dims 256 128
            kind = type(value[0]) if value else int
            parser.add_argument(
                flag, type=kind, nargs="*", default=value, help=f"(default {' '.join(map(str, value))})"
            )
        elif isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=f"(default {value})")
        else:
            parser.add_argument(flag, type=type(value), default=value, help=f"(default {value})")


def config_from_args(config_type: type[T], args: argparse.Namespace) -> T:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_type)}  # type: ignore[arg-type]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return config_type(**values)  # type: ignore[arg-type]
