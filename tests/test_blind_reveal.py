"""Between a battle and its vote, nothing public tells the hidden challenger from the baseline or names it by
order: read everything a visitor can read (the page's config, the API's description, the System panel, the
blind results) before and after a battle."""

import json
import re
import time
import urllib.request

from tests.test_blind import BLIND, models_file
from tests.test_client_identity import serve  # noqa: F401  (the fixture)

CHALLENGER = "smollm2/bf16"  # BLIND's only challenger
USED_BEFORE = "smollm2/bnb-int8"  # after the challenger in the models file


def read(url: str, path: str) -> str:
    return urllib.request.urlopen(url + path, timeout=60).read().decode("utf-8")


def public(url: str) -> dict[str, str]:
    """Everything a visitor reads without a session: the page's config, the API's description, the System
    panel and the blind test's results view."""
    return {"config": read(url, "config"), "info": read(url, "gradio_api/info"),
            "system": read(url, "gradio_api/arena/system"), "results": read(url, "gradio_api/arena/blind/results")}


def loaded_line(system_html: str) -> list[str]:
    line = re.search(r"Loaded variants:</strong>\s*([^·<]*)", system_html).group(1)
    return [name.strip() for name in line.split(",") if name.strip()]


def test_nothing_public_names_or_orders_the_hidden_challenger(serve, default_config):
    from gradio_client import Client

    url = serve(None)
    me = Client(url, verbose=False)
    me.predict(prompt="Name a colour.", variants=[USED_BEFORE], max_new_tokens=2, api_name="/compare")
    before = public(url)
    issued = me.predict(prompt="Name a colour.", api_name="/battle")
    after = public(url)

    assert set(issued) == {"battle", "a", "b"}
    assert after["config"] == before["config"] and after["info"] == before["info"]
    # the results view counts battles issued, and says nothing else new before the vote
    assert re.sub(r"\d+ battles? issued", "", after["results"]) == re.sub(r"\d+ battles? issued", "", before["results"])
    # the System panel holds still until the vote: what is loaded would name a challenger loaded for the battle
    assert "hold still while a blind-test battle" in after["system"]
    assert loaded_line(after["system"]) == loaded_line(before["system"])
    me.predict(battle=issued["battle"], choice="tie", api_name="/vote")
    time.sleep(1.5)  # the panel's rendering is shared for a second
    voted = read(url, "gradio_api/arena/system")
    assert "hold still" not in voted
    # and, live again, it lists what is loaded in the models file's order, never in the order of use (the
    # variant used last is the challenger: its fidelity is scored last)
    listed = loaded_line(voted)
    assert CHALLENGER in listed and USED_BEFORE in listed
    assert listed == [v for v in default_config.variants if v in listed]
    answers = json.dumps(issued).replace(issued["a"], "").replace(issued["b"], "")
    assert "smollm2/" not in answers


def test_a_battle_holds_the_panel_from_its_start_to_its_vote_or_for_hold_s_at_most():
    from demo.blind.open_battles import OpenBattles

    now = [100.0]
    battles = OpenBattles(clock=lambda: now[0], hold_s=600)
    assert battles.holding_since() is None
    first = battles.begin()
    now[0] = 105.0
    second = battles.begin()
    battles.issued(first, "b1")
    battles.end(second)  # the second failed, unissued
    assert battles.holding_since() == 100.0
    battles.end("b1")  # voted
    assert battles.holding_since() is None
    battles.issued(battles.begin(), "b2")  # never voted on: lets go after hold_s
    now[0] = 105.0 + 600
    assert battles.holding_since() is None


def test_the_panel_shows_what_it_showed_before_the_battle(arena):
    from demo.ui.system_panel import PanelView

    now, since = [0.0], [None]
    view = PanelView(arena, max_age_s=0.0, clock=lambda: now[0], holding_since=lambda: since[0])
    live = view().body.decode()
    assert "Loaded variants" in live and "hold still" not in live
    now[0], since[0] = 10.0, 5.0  # a battle began after that rendering
    held = view().body.decode()
    assert "hold still" in held and loaded_line(held) == loaded_line(live)
    fresh = PanelView(arena, max_age_s=0.0, clock=lambda: now[0], holding_since=lambda: 5.0)
    assert "Loaded variants" not in fresh().body.decode()  # nothing from before the battle: nothing shown


def test_a_live_rendering_shared_for_a_second_does_not_outlast_a_battle_s_start(arena):
    from demo.ui.system_panel import PanelView

    now, since = [0.0], [None]
    view = PanelView(arena, max_age_s=60.0, clock=lambda: now[0], holding_since=lambda: since[0])
    assert "hold still" not in view().body.decode()  # rendered live, and shared for a minute
    now[0], since[0] = 0.5, 0.2  # a battle begins within that minute
    assert "hold still" in view().body.decode()
