"""``--window`` parsing shared by privmed-predict and privmed-infer."""

import pytest

from common.window_arg import parse_window_arg


def test_absent_flag_gives_the_callers_default():
    assert parse_window_arg(None, "model") == "model"
    assert parse_window_arg(None, "server") == "server"


def test_none_and_two_numbers():
    assert parse_window_arg(["none"], "model") is None
    assert parse_window_arg(["-100", "400.5"], "model") == [-100.0, 400.5]


@pytest.mark.parametrize("values", [["1"], ["1", "2", "3"], ["low", "high"]])
def test_bad_window_is_one_clear_error(values):
    with pytest.raises(ValueError, match="--window takes LOW HIGH or none"):
        parse_window_arg(values, "model")
