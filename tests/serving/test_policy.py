"""The availability-preserving policy, decided in-process from version snapshots (no threads, files or models)."""

import pytest

from serving.policy import AVAILABLE, END, LOAD, LOADING, START, UNLOAD, UNLOADING, Action, VersionSnapshot, next_action


def versions(*entries) -> list[VersionSnapshot]:
    """(version, state, aspired) triples as snapshots."""
    return [VersionSnapshot(version, state, aspired) for version, state, aspired in entries]


@pytest.mark.parametrize(
    "case, snapshots, expected",
    [
        ("nothing tracked", [], None),
        ("a new aspired version is loaded", [(1, START, True)], Action(LOAD, 1)),
        (
            "of several new versions the highest loads first",
            [(1, START, True), (3, START, True), (2, START, True)],
            Action(LOAD, 3),
        ),
        ("all aspired versions serve: nothing to do", [(1, AVAILABLE, True), (2, AVAILABLE, True)], None),
        ("a newer version loads while the old one serves", [(1, AVAILABLE, False), (2, START, True)], Action(LOAD, 2)),
        ("the old version stays until the new one is AVAILABLE", [(1, AVAILABLE, False), (2, LOADING, True)], None),
        ("then the old version is unloaded", [(1, AVAILABLE, False), (2, AVAILABLE, True)], Action(UNLOAD, 1)),
        (
            "rollback: the newest is deleted, the previous loads again first",
            [(1, START, True), (2, AVAILABLE, False)],
            Action(LOAD, 1),
        ),
        (
            "rollback: the newest serves until the previous is AVAILABLE",
            [(1, LOADING, True), (2, AVAILABLE, False)],
            None,
        ),
        ("rollback: once it is, the newest goes", [(1, AVAILABLE, True), (2, AVAILABLE, False)], Action(UNLOAD, 2)),
        (
            "nothing aspired: the lowest serving version is unloaded",
            [(1, AVAILABLE, False), (2, AVAILABLE, False)],
            Action(UNLOAD, 1),
        ),
        ("nothing aspired: the last serving version too", [(1, END, False), (2, AVAILABLE, False)], Action(UNLOAD, 2)),
        (
            "a failed version is not retried while aspired; the old one keeps serving",
            [(1, AVAILABLE, False), (2, END, True)],
            None,
        ),
        ("a failed version alone: nothing to do", [(2, END, True)], None),
        (
            "two unaspired serving versions: the lower goes even before the new one serves",
            [(1, AVAILABLE, False), (2, AVAILABLE, False), (3, LOADING, True)],
            Action(UNLOAD, 1),
        ),
        (
            "unloads come before loads",
            [(1, AVAILABLE, False), (2, AVAILABLE, True), (3, START, True)],
            Action(UNLOAD, 1),
        ),
        (
            "an unloading version is waited for, a new one still loads",
            [(1, UNLOADING, False), (2, START, True)],
            Action(LOAD, 2),
        ),
        (
            "a loading version that is no longer aspired is not unloaded before it serves",
            [(2, AVAILABLE, True), (3, LOADING, False)],
            None,
        ),
        ("a new version that is no longer aspired is not loaded", [(2, AVAILABLE, True), (3, START, False)], None),
        ("ended versions that are not aspired are left alone", [(1, END, False), (2, AVAILABLE, True)], None),
    ],
)
def test_next_action(case, snapshots, expected):
    assert next_action(versions(*snapshots)) == expected, case


def settle(states: dict[int, str], aspired: set[int]) -> tuple[dict[int, str], list[Action]]:
    """Performs the policy's actions with instant loads and unloads until it has nothing more to do.

    Asserts after every step that a version serves whenever one served before and one is aspired or served.
    """
    actions = []
    for _ in range(4 * len(states) + 4):
        action = next_action([VersionSnapshot(version, state, version in aspired) for version, state in states.items()])
        if action is None:
            return states, actions
        actions.append(action)
        states = {**states, action.version: AVAILABLE if action.kind == LOAD else END}
        assert AVAILABLE in states.values() or not aspired, (states, actions)
    raise AssertionError(f"the policy did not settle: {actions}")


@pytest.mark.parametrize(
    "states, aspired, final, actions",
    [
        ({1: AVAILABLE, 2: START}, {2}, {1: END, 2: AVAILABLE}, [Action(LOAD, 2), Action(UNLOAD, 1)]),
        ({1: START, 2: AVAILABLE}, {1}, {1: AVAILABLE, 2: END}, [Action(LOAD, 1), Action(UNLOAD, 2)]),
        (
            {1: AVAILABLE, 2: AVAILABLE, 3: START, 4: START},
            {3, 4},
            {1: END, 2: END, 3: AVAILABLE, 4: AVAILABLE},
            [Action(UNLOAD, 1), Action(LOAD, 4), Action(UNLOAD, 2), Action(LOAD, 3)],
        ),
        ({1: AVAILABLE, 2: AVAILABLE}, set(), {1: END, 2: END}, [Action(UNLOAD, 1), Action(UNLOAD, 2)]),
        (
            {5: START, 6: START, 7: START},
            {5, 6, 7},
            {5: AVAILABLE, 6: AVAILABLE, 7: AVAILABLE},
            [Action(LOAD, 7), Action(LOAD, 6), Action(LOAD, 5)],
        ),
    ],
)
def test_acting_on_the_policy_keeps_a_version_serving_and_settles(states, aspired, final, actions):
    assert settle(states, aspired) == (final, actions)
