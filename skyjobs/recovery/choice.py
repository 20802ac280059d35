"""Which of a task's resource alternatives produced a placement.

An attempt records where it runs (cloud, region, zone, instance type, spot or not), not which
``any_of``/``ordered`` entry it came from; the launch needs that entry for what its
instances are started with (image, boot disk, ports, labels). Pure code, no I/O.
"""

from __future__ import annotations

from skyjobs.pricing.catalog import Offering, Placement
from skyjobs.recovery.placement import offering_matches
from skyjobs.spec import ResourceChoice, TaskSpec


def _image_admits(choice: ResourceChoice, region: str) -> bool:
    """A region -> image mapping names the regions the choice can boot in."""
    return not isinstance(choice.image_id, dict) or region in choice.image_id


def _where_matches(choice: ResourceChoice, o: Offering) -> bool:
    """Location and type only: for an offering rebuilt from an attempt record (the catalog
    no longer lists it), whose accelerators, cpus and memory are unknown."""
    return all(want is None or want == have for want, have in (
        (choice.cloud, o.cloud), (choice.region, o.region), (choice.zone, o.zone),
        (choice.instance_type, o.instance_type)))


def choice_for(spec: TaskSpec, placement: Placement) -> ResourceChoice:
    """The first of ``spec.resources.choices()`` that admits ``placement``.

    Tried in this order, the first pass with a match wins:

    1. the offering matches (``placement.offering_matches``), the market is the one the
       choice asks for, and the choice's image mapping (if any) has the region;
    2. as 1 without the market: the on-demand twin of a spot choice (DEADLINE_AWARE);
    3. location and instance type only, image region still required: an offering the
       catalog no longer lists, rebuilt from the attempt with its hardware unknown.

    Never raises: when nothing admits the placement (a spec and a placement that do not
    belong together), the first choice is returned, as for a task without alternatives.
    """
    choices = spec.resources.choices()
    o = placement.offering
    passes = (
        lambda c: (offering_matches(c, o) and bool(c.use_spot) == placement.use_spot
                   and _image_admits(c, o.region)),
        lambda c: offering_matches(c, o) and _image_admits(c, o.region),
        lambda c: _where_matches(c, o) and _image_admits(c, o.region),
    )
    for admits in passes:
        for choice in choices:
            if admits(choice):
                return choice
    return choices[0]
