"""edgefair.groups: keys, order, empty intersections, cells."""

from __future__ import annotations

import re

import numpy as np
import pytest

from edgefair import groups as grp
from edgefair.errors import DataError


def test_keys_values_and_intersections_in_mapping_order():
    sex = np.array(["M", "F", "F", "M", "M"])
    race = np.array(["W", "B", "W", "W", "W"])
    masks = grp.group_masks({"sex": sex, "race": race}, intersections=True)
    assert list(masks) == ["sex=F", "sex=M", "race=B", "race=W",
                           "sex=F&race=B", "sex=F&race=W", "sex=M&race=B", "sex=M&race=W"]
    assert masks["sex=F"].tolist() == [False, True, True, False, False]
    assert masks["sex=M&race=W"].tolist() == [True, False, False, True, True]
    assert masks["sex=M&race=B"].sum() == 0  # empty intersection, still reported
    assert all(m.dtype == np.bool_ and m.shape == (5,) for m in masks.values())


def test_no_intersections_when_not_asked_or_single_attribute():
    a = np.array([1, 2, 1])
    assert list(grp.group_masks({"a": a, "b": a}, intersections=False)) == ["a=1", "a=2", "b=1", "b=2"]
    assert list(grp.group_masks({"a": a}, intersections=True)) == ["a=1", "a=2"]


def test_numbers_sort_numerically_and_are_stringified():
    masks = grp.group_masks({"age": np.array([10, 2, 30, 2])}, intersections=False)
    assert list(masks) == ["age=2", "age=10", "age=30"]


def test_three_attributes_build_the_full_intersection_only():
    x = np.array([0, 1, 0, 1])
    masks = grp.group_masks({"a": x, "b": x, "c": 1 - x}, intersections=True)
    full = [k for k in masks if k.count("&") == 2]
    assert len(full) == 8 and len(masks) == 6 + 8
    assert masks["a=0&b=0&c=1"].tolist() == [True, False, True, False]


@pytest.mark.parametrize(("attributes", "message"), [
    ({}, grp.NO_ATTRIBUTES_ERROR),
    ({"a": np.zeros((2, 2))}, grp.NOT_1D_ERROR.format(name="a", shape=(2, 2))),
    ({"a": np.zeros(3), "b": np.zeros(4)}, grp.LENGTH_ERROR.format(name="b", n=4, expected=3)),
    ({"a=b": np.zeros(3)}, grp.BAD_NAME_ERROR.format(name="a=b")),
    ({"a": np.array(["x&y", "z"])}, grp.BAD_VALUE_ERROR.format(name="a", value="x&y")),
    ({"a": np.array([1.0, np.nan])}, grp.MISSING_VALUE_ERROR.format(name="a")),
    ({"a": np.array(["x", None], dtype=object)}, grp.MISSING_VALUE_ERROR.format(name="a")),
])
def test_bad_attributes(attributes, message):
    with pytest.raises(DataError, match=re.escape(message)):
        grp.group_masks(attributes, intersections=True)


def test_scopes():
    keys = ["sex=F", "sex=M", "race=B", "sex=F&race=B", "sex=M&race=B"]
    assert grp.scope_of("sex=F&race=B") == "sex&race"
    assert grp.scope_of("age=a=b") == "age"  # values may contain '='
    assert grp.scopes(keys) == {"sex": ["sex=F", "sex=M"], "race": ["race=B"],
                                "sex&race": ["sex=F&race=B", "sex=M&race=B"]}


def test_validate_masks_rejects_wrong_shape_or_dtype():
    with pytest.raises(DataError, match=re.escape("group 'g': mask must be a boolean array of shape (3,)")):
        grp.validate_masks({"g": np.array([1, 0, 1])}, 3)
    with pytest.raises(DataError):
        grp.validate_masks({"g": np.array([True, False])}, 3)


def test_every_group_is_a_union_of_cells():
    rng = np.random.default_rng(0)
    attrs = {"a": rng.integers(0, 3, 200), "b": rng.integers(0, 4, 200)}
    masks = grp.group_masks(attrs, intersections=True)
    cell_of_row, membership = grp.finest_cells(masks, 200)
    assert membership.shape == (len(masks), cell_of_row.max() + 1)
    for g, mask in enumerate(masks.values()):
        np.testing.assert_array_equal(mask, membership[g][cell_of_row])
    # with attribute groups, the cells are exactly the non-empty full intersections
    assert membership.shape[1] == sum(1 for k, m in masks.items() if "&" in k and m.any())


def test_cells_are_deterministic_and_ignore_row_order():
    masks = {"g": np.array([True, False, True, False]), "h": np.array([True, True, False, False])}
    cells, member = grp.finest_cells(masks, 4)
    assert cells.tolist() == grp.finest_cells(masks, 4)[0].tolist()
    assert len(set(cells.tolist())) == 4 and member.sum() == 4
