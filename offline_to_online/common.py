"""What every offline-to-online stage shares: arguments, settings, one-line errors, start-up retry.

A stage script parses ``stage_parser`` arguments and hands ``run_stage`` a function of ``Settings``.
Known failures (missing or mismatched artifacts, an unreachable backend, a failed read-back) end as
one log line and a non-zero exit code, never a traceback:

- 2: an artifact is missing or does not match the feature specification (nothing was written);
- 3: a backend could not be reached (which one, at which address, what to check);
- 4: what was published does not read back equal to its source (the previous version still serves).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from data_exchange_center.artifacts import ArtifactError, update_metrics
from data_exchange_center.settings import Settings, SettingsError, load_settings

log = logging.getLogger("offline_to_online")
T = TypeVar("T")

EXIT_ARTIFACT = 2
EXIT_BACKEND = 3
EXIT_VERIFY = 4

RETRY_ATTEMPTS = 5
RETRY_FIRST_DELAY_S = 0.5  # then 1, 2, 4: about 7.5 s of waiting over 5 tries
RETRY_MAX_DELAY_S = 4.0


class BackendUnavailable(Exception):
    """A backend did not answer; the message names it, its address and what to check."""

    def __init__(self, backend: str, address: str, cause: object, hint: str) -> None:
        self.backend, self.address, self.hint = backend, address, hint
        super().__init__(f"cannot reach {backend} at {address} ({cause}); {hint}")


class PublishVerificationError(Exception):
    """Published data did not read back equal to its source."""


READABLE_MODE = 0o644  # published files are read by other users (the serving containers)


def make_readable(*paths: Path) -> None:
    """Give files written through a temporary file (mode 0600) the mode of a published file."""
    for path in paths:
        path.chmod(READABLE_MODE)


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"exit codes: 0 published and verified; {EXIT_ARTIFACT} artifacts missing or not matching the "
        f"feature spec (nothing written); {EXIT_BACKEND} a backend unreachable; {EXIT_VERIFY} read-back "
        "differs from the source (the previous version still serves)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="artifact folder (default: $RECSYS_DATA_DIR or settings)"
    )
    parser.add_argument(
        "--profile",
        choices=("embedded", "compose"),
        default=None,
        help="publish to the in-process stores (embedded) or the services (compose); default: settings",
    )
    parser.add_argument("--quiet", action="store_true", help="log warnings only, no progress bars")
    parser.add_argument(
        "--connect-attempts",
        type=int,
        default=RETRY_ATTEMPTS,
        help=f"tries to reach a backend at start-up, with doubling waits from {RETRY_FIRST_DELAY_S} s "
        f"(default {RETRY_ATTEMPTS})",
    )
    return parser


def configure_logging(quiet: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def stage_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from the environment and YAML file, with the CLI's ``--profile``/``--data-dir`` on top."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "profile", None):
        values["profile"] = args.profile
    if getattr(args, "data_dir", None):
        values["data_dir"] = args.data_dir
    return load_settings(values)


def run_stage(name: str, args: argparse.Namespace, work: Callable[[Settings], object], **overrides: Any) -> int:
    """Run one stage; time it into ``reports/metrics.json``; known failures become one line and an exit code."""
    configure_logging(getattr(args, "quiet", False))
    started = time.perf_counter()
    try:
        settings = stage_settings(args, **overrides)
        log.info("%s: profile %s, data %s", name, settings.profile, settings.data_dir)
        work(settings)
    except SettingsError as exc:
        log.error("%s failed: %s", name, exc)
        return EXIT_ARTIFACT
    except ArtifactError as exc:
        log.error("%s failed: %s", name, exc)
        return EXIT_ARTIFACT
    except BackendUnavailable as exc:
        log.error("%s failed: %s", name, exc)
        return EXIT_BACKEND
    except PublishVerificationError as exc:
        log.error("%s failed verification: %s", name, exc)
        return EXIT_VERIFY
    elapsed = time.perf_counter() - started
    key = f"{name}_{settings.profile}"
    update_metrics(settings.paths.metrics_path, {"timings_s": {key: round(elapsed, 3)}})
    log.info("%s done in %.2f s", name, elapsed)
    return 0


def retry_startup(
    connect: Callable[[], T],
    *,
    backend: str,
    address: str,
    hint: str,
    errors: tuple[type[BaseException], ...],
    attempts: int = RETRY_ATTEMPTS,
    first_delay_s: float = RETRY_FIRST_DELAY_S,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``connect`` until it succeeds, at most ``attempts`` times with doubling delays (start-up only).

    The last failure becomes a ``BackendUnavailable`` naming the backend, its address and ``hint``.
    """
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            return connect()
        except errors as exc:
            if attempt == attempts:
                raise BackendUnavailable(backend, address, _short(exc), hint) from None
            log.warning("%s at %s not answering (try %d/%d): %s", backend, address, attempt, attempts, _short(exc))
            sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY_S)
    raise AssertionError("unreachable")  # pragma: no cover


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


ROLE_SETTING = {role: f"RECSYS_{role.upper()}_BACKEND" for role in ("profiles", "index", "features", "scorer")}


def served_by(settings: Settings, role: str, server: str, stage: str, instead: str) -> bool:
    """True when ``role`` is served by a backend of kind ``server``; else log that the stage skips it.

    A role's backend is ``settings.backend_of(role)`` (``RECSYS_<ROLE>_BACKEND``, else the profile's
    preset): a deployment without, say, Elasticsearch is the setting ``RECSYS_INDEX_BACKEND=local``, and
    the stage then publishes ``instead`` and says so in one line rather than failing.
    """
    backend = settings.backend_of(role)
    if backend.startswith(server):
        return True
    log.info("%s: %s skipped: the %s role is served by %r (%s); %s",
             stage, server, role, backend, ROLE_SETTING[role], instead)  # fmt: skip
    return False


def redact_url(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``redis://***@host:6379/0`` (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
