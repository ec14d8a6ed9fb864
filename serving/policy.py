"""Which version of a model to load or unload next: TF Serving's availability-preserving policy.

``next_action`` takes one snapshot per version the manager tracks (its
number, its state and whether the version policy aspires to it) and returns
the one action to take next, or None when the model is where it should be.
It is a pure function: the manager performs the action, updates the state
and asks again, so every decision is made here and can be tested without
threads, files or models.

The rules, as in TF Serving's AvailabilityPreservingPolicy:

* An AVAILABLE version that is no longer aspired is unloaded, lowest first,
  once an aspired version is AVAILABLE, when no version is aspired at all,
  or while more than one such version is AVAILABLE. So at least one version
  keeps serving until a replacement serves: a rollback keeps the old version
  until the version rolled back to is AVAILABLE again.
* Otherwise the highest aspired version that is new (START) is loaded.
* Nothing else: a version LOADING or UNLOADING is waited for, and a version
  that ended (END, e.g. its load failed) is not tried again while it stays
  aspired. Unloads come before loads, as in TF Serving's manager.
"""

import dataclasses

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
LOAD, UNLOAD = "load", "unload"


@dataclasses.dataclass(frozen=True)
class VersionSnapshot:
    """One version as the policy sees it."""

    version: int
    state: str  # START, LOADING, AVAILABLE, UNLOADING or END
    aspired: bool


@dataclasses.dataclass(frozen=True)
class Action:
    kind: str  # LOAD or UNLOAD
    version: int


def next_action(snapshots: list[VersionSnapshot]) -> Action | None:
    """The next load or unload for a model's versions, or None when there is nothing to do."""
    any_aspired = any(snapshot.aspired for snapshot in snapshots)
    aspired_serving = any(snapshot.aspired and snapshot.state == AVAILABLE for snapshot in snapshots)
    unaspired_serving = sorted(
        snapshot.version for snapshot in snapshots if not snapshot.aspired and snapshot.state == AVAILABLE
    )
    if unaspired_serving and (not any_aspired or aspired_serving or len(unaspired_serving) > 1):
        return Action(UNLOAD, unaspired_serving[0])
    new = [snapshot.version for snapshot in snapshots if snapshot.aspired and snapshot.state == START]
    if new:
        return Action(LOAD, max(new))
    return None
