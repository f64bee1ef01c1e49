"""The running parts on their own, without a model or Gradio: admission and first-come-first-served turns."""

import pytest

from demo.errors import Busy
from demo.running.turns import Admission, Turns


def test_admission_refuses_at_once_past_its_places_and_frees_a_place_on_leaving():
    admission = Admission(2)
    with admission.place(), admission.place():
        with pytest.raises(Busy, match="busy: 2 comparisons are already running or waiting"):
            with admission.place():
                pass
    with admission.place():  # both places were given back
        pass


def test_turns_are_first_come_first_served():
    turns = Turns()
    first, second, third = turns.join(), turns.join(), turns.join()
    assert turns.wait(first, 0) and not turns.wait(second, 0)
    assert [turns.ahead(t) for t in (first, second, third)] == [0, 1, 2]
    turns.leave(second)  # a waiting request that gives up keeps no place
    assert turns.ahead(third) == 1
    turns.leave(first)
    assert turns.wait(third, 0)
