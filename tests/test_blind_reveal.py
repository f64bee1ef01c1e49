"""Between a battle and its vote, nothing public tells the hidden challenger from the baseline or names it by
order: read everything a visitor can read (the page's config, the API's description, the System panel, the
blind results) before and after a battle."""

import json
import re
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
    # the System panel lists what is loaded in the models file's order, never in the order of use: the variant
    # used last is the challenger (its fidelity is scored last)
    listed = loaded_line(after["system"])
    assert CHALLENGER in listed and USED_BEFORE in listed
    assert listed == [v for v in default_config.variants if v in listed]
    answers = json.dumps(issued).replace(issued["a"], "").replace(issued["b"], "")
    assert "smollm2/" not in answers
