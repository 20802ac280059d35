"""Which offerings can run a task: matching resource choices against the catalog.

Pure code, no I/O. Ranking the matches is the strategy's job (``skyjobs.recovery.policy``).
"""

from __future__ import annotations

from dataclasses import dataclass

from skyjobs.exceptions import SpecError
from skyjobs.pricing.catalog import Catalog, Offering, Placement
from skyjobs.spec import ResourceChoice, TaskSpec


@dataclass(frozen=True, slots=True)
class Candidate:
    """A placement that satisfies choice number ``choice_index`` of the task.

    ``requested`` is False for the on-demand twin of a spot request, which only a strategy
    that may fall back to on-demand (DEADLINE_AWARE) uses.
    """

    placement: Placement
    choice_index: int
    requested: bool = True


def offering_matches(choice: ResourceChoice, o: Offering) -> bool:
    if choice.cloud and choice.cloud != o.cloud:
        return False
    if choice.region and choice.region != o.region:
        return False
    if choice.zone and choice.zone != o.zone:
        return False
    if choice.instance_type and choice.instance_type != o.instance_type:
        return False
    if choice.accelerators:
        if not any(a.name.lower() == (o.accelerator or "").lower()
                   and a.count == o.accelerator_count for a in choice.accelerators):
            return False
    elif not choice.instance_type and o.accelerator:
        # Like SkyPilot: a task that asks for no GPU is not placed on a GPU machine.
        return False
    if choice.cpus and not choice.cpus.admits(o.vcpus):
        return False
    if choice.memory and not choice.memory.admits(o.memory_gb):
        return False
    return True


def match(spec: TaskSpec, catalog: Catalog, with_on_demand_twins: bool = False) -> list[Candidate]:
    """Every (choice, offering, spot or not) that satisfies the task, unranked."""
    out: list[Candidate] = []
    seen: set[tuple[Offering, bool]] = set()
    for index, choice in enumerate(spec.resources.choices()):
        use_spot = bool(choice.use_spot)
        for offering in catalog.offerings:
            if not offering_matches(choice, offering):
                continue
            variants = [(use_spot, True)]
            if use_spot and with_on_demand_twins:
                variants.append((False, False))
            for spot, requested in variants:
                price = offering.price(spot)
                if price is None or (offering, spot) in seen:
                    continue
                seen.add((offering, spot))
                out.append(Candidate(Placement(offering, spot, price), index, requested))
    return out


def explain_no_match(spec: TaskSpec, catalog: Catalog) -> str:
    """A one-line reason why nothing matched, naming the key most likely at fault."""
    choice = spec.resources.choices()[0]
    checks: list[tuple[str, str | None, set[str]]] = [
        ("cloud", choice.cloud, catalog.clouds()),
        ("instance_type", choice.instance_type, catalog.instance_types()),
    ]
    for key, value, known in checks:
        if value and value not in known:
            enabled = ", ".join(sorted(known))
            return f"resources.{key}: {value!r} is not offered (enabled: {enabled})"
    names = {a.name.lower() for a in choice.accelerators}
    if names and not names & {a.lower() for a in catalog.accelerators()}:
        acc = ", ".join(sorted(catalog.accelerators()))
        return f"resources.accelerators: none of {sorted(names)} is offered (known: {acc})"
    return "resources: no offering in the catalog satisfies all of the requested resources"


def require_candidates(spec: TaskSpec, catalog: Catalog) -> list[Candidate]:
    """The matches, or a SpecError that says which key made the request impossible."""
    found = match(spec, catalog)
    if not found:
        raise SpecError(explain_no_match(spec, catalog))
    return found
