"""Roll a published component back: users, items, features or model, to its previous version or a named one.

  python -m offline_to_online.s4_rollback --component items               # the version before the live one
  python -m offline_to_online.s4_rollback --component model --to 3        # a named version
  python -m offline_to_online.s4_rollback --component users --list        # what can be rolled back to

Works on the backends configured for the component's role (--profile, RECSYS_<ROLE>_BACKEND): users
in online/users/ or Redis; items in online/items/ and, on compose, the Elasticsearch alias; features
by re-publishing the version's snapshot through Feast (registry switched by a rename); the model by
pinning the version in both Triton repositories' config.pbtxt (a later publish unpins it). Only
pointers change, each in one atomic step; the running service follows within its version-check
interval. A rollback killed midway is finished by the next run of this command. See
offline_to_online/rollback.py and data_exchange_center/ONLINE_STORE_FORMAT.md.
"""

from __future__ import annotations

import json
import sys

from data_exchange_center.settings import Settings
from offline_to_online.common import run_stage, stage_parser
from offline_to_online.rollback import COMPONENTS, RollbackReport, list_versions, rollback


def roll_back(settings: Settings, component: str, to: str | None, show: bool) -> RollbackReport | None:
    """``--list`` prints the versions; otherwise roll back and print what was switched."""
    if show:
        print(json.dumps(list_versions(settings, component), indent=2))
        return None
    report = rollback(settings, component, to)
    print(json.dumps({"component": component, "target": report.target, "before": report.before,
                      "switched": report.switched, "finished_an_interrupted_rollback": report.resumed}))  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    parser.add_argument("--component", required=True, choices=COMPONENTS, help="what to roll back")
    parser.add_argument("--to", default=None, help="a version to switch to (default: the one before the live one)")
    parser.add_argument("--list", action="store_true", help="print each pointer's versions and the live one")
    parser.add_argument("--redis-url", default=None, help="Redis URL (default: RECSYS_REDIS_URL)")
    parser.add_argument("--es-url", default=None, help="Elasticsearch URL (default: RECSYS_ES_URL)")
    args = parser.parse_args(argv)
    return run_stage(
        f"s4_rollback_{args.component}",
        args,
        lambda s: roll_back(s, args.component, args.to, args.list),
        redis_url=args.redis_url,
        es_url=args.es_url,
    )


if __name__ == "__main__":
    sys.exit(main())
