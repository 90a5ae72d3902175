"""Experiments: variants assigned by a stable hash of the user id, with configured weights.

A variant changes how the chain ranks for its users: the ranking policy (``like_weight``,
``prior_weight``, ``ranker_final``: 0 ranks by the recall evidence blend instead of the ranker's output,
e.g. ``no_ranker:1:ranker_final=0:like_weight=0``), the number of item-to-item triggers
(``max_triggers``), whether live events are applied (``live_events``) and whether the ranker's history
features follow them (``live_history``; 0 keeps the published ones). ``Settings.experiment_variants`` lists them as
``name:weight[:key=value...]`` separated by commas, e.g. ``control:1,no_events:1:live_events=0``.

Assignment: ``sha256(salt + ":" + userid)``'s first 8 bytes as a number in [0, 1), mapped onto the
cumulative weights in the listed order. It depends on nothing but the user id, the salt and the list,
so a user stays in one variant on every worker and after restarts; the service, the offline streaming
evaluation and the replay client all call ``assign_variant``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from data_exchange_center.chain import RankingPolicy

DEFAULT_VARIANT = "default"
OVERRIDE_KEYS = ("like_weight", "prior_weight", "ranker_final", "max_triggers", "live_events", "live_history")


class ExperimentConfigError(ValueError):
    """The variants setting cannot be parsed; the message names the bad part."""


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float
    overrides: dict[str, float] = field(default_factory=dict)

    def policy(self, base: RankingPolicy) -> RankingPolicy:
        like_weight = self.overrides.get("like_weight", base.like_weight)
        prior_weight = self.overrides.get("prior_weight", base.prior_weight)
        ranker_final = int(self.overrides.get("ranker_final", base.ranker_final))
        return replace(base, like_weight=like_weight, prior_weight=prior_weight, ranker_final=ranker_final)

    def max_triggers(self, base: int) -> int:
        return int(self.overrides.get("max_triggers", base))

    @property
    def live_events(self) -> bool:
        return bool(self.overrides.get("live_events", 1))

    @property
    def live_history(self) -> bool:
        return self.live_events and bool(self.overrides.get("live_history", 1))


def parse_variants(spec: str) -> list[Variant]:
    """``"a:1,b:1:like_weight=0"`` -> variants; an empty spec is one ``default`` variant."""
    if not spec.strip():
        return [Variant(DEFAULT_VARIANT, 1.0)]
    variants = []
    for part in spec.split(","):
        name, _, rest = part.strip().partition(":")
        weight_text, *pairs = rest.split(":") if rest else ("",)
        try:
            weight = float(weight_text)
        except ValueError:
            raise ExperimentConfigError(f"variant {part!r}: give 'name:weight', weight a number") from None
        if not name or weight < 0:
            raise ExperimentConfigError(f"variant {part!r}: needs a name and a weight >= 0")
        overrides = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key not in OVERRIDE_KEYS:
                raise ExperimentConfigError(f"variant {name!r}: unknown key {key!r}; known: {list(OVERRIDE_KEYS)}")
            overrides[key] = float(value)
        variants.append(Variant(name, weight, overrides))
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or sum(v.weight for v in variants) <= 0:
        raise ExperimentConfigError(f"variants {names}: names must be distinct and the weights sum above 0")
    return variants


def user_bucket(userid: int, salt: str) -> float:
    """A number in [0, 1) that depends only on the user id and the salt."""
    digest = hashlib.sha256(f"{salt}:{int(userid)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_variant(userid: int, variants: list[Variant], salt: str) -> Variant:
    """The user's variant: the bucket's place on the cumulative weights."""
    total = sum(v.weight for v in variants)
    point = user_bucket(userid, salt) * total
    cumulative = 0.0
    for variant in variants:
        cumulative += variant.weight
        if point < cumulative:
            return variant
    return [v for v in variants if v.weight > 0][-1]
