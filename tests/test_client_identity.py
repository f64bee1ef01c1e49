"""Who a client is: the connection's peer, unless the peer is a proxy the operator trusts; then the entry that
proxy appended to X-Forwarded-For, read from the right through at most `proxies.hops` trusted proxies. What a
client writes in the header itself changes nothing."""

import os
from types import SimpleNamespace

import pytest
import yaml

from demo.config import (PROXY_HOPS_ENV, SPACE_ENV, SPACE_TRUSTED_PROXIES, TRUSTED_PROXIES_ENV, ProxySettings,
                         load_config)
from demo.errors import ConfigError
from demo.running.turns import Client
from demo.ui.clients import UVICORN_TRUST_ENV, ProxyTrust, address_of, client_of, serve_peers_as_they_are
from tests.conftest import free_port
from tests.test_blind import BLIND, models_file

DIRECT = ProxySettings()
BEHIND_ONE = ProxySettings(("127.0.0.1",), 1)


def request(peer: str | None, forwarded: str | None = None, session: str = "s1"):
    headers = {"x-forwarded-for": forwarded} if forwarded is not None else {}
    return SimpleNamespace(session_hash=session, headers=headers, client=SimpleNamespace(host=peer) if peer else None)


def test_without_a_trusted_proxy_the_header_changes_nothing():
    for forged in ("203.0.113.7", "203.0.113.7, 198.51.100.1", "", "not an address"):
        assert address_of(request("192.0.2.10", forged), DIRECT) == "192.0.2.10"
    assert client_of(request("192.0.2.10", "203.0.113.7"), DIRECT) == Client("s1", "192.0.2.10")
    assert address_of(request(None), DIRECT) is None and address_of(None, DIRECT) is None
    assert client_of(None, DIRECT) == Client("anonymous", None)


def test_a_trusted_proxy_names_the_entry_it_appended_not_the_first():
    # the client wrote "198.51.100.1"; the proxy at 127.0.0.1 appended the address it saw
    assert address_of(request("127.0.0.1", "198.51.100.1, 203.0.113.7"), BEHIND_ONE) == "203.0.113.7"
    assert address_of(request("127.0.0.1", "203.0.113.7"), BEHIND_ONE) == "203.0.113.7"
    assert address_of(request("127.0.0.1"), BEHIND_ONE) == "127.0.0.1"  # nothing appended: the proxy itself
    assert address_of(request("192.0.2.10", "203.0.113.7"), BEHIND_ONE) == "192.0.2.10"  # not that proxy


def test_the_walk_stops_at_a_client_and_after_the_configured_hops():
    space = ProxySettings(("10.0.0.0/8",), 3)
    chain = "198.51.100.1, 203.0.113.7, 10.2.0.1, 10.3.0.1"  # forged, the visitor, then two internal hops
    assert ProxyTrust(space).address("10.1.0.1", chain) == "203.0.113.7"
    assert ProxyTrust(ProxySettings(("10.0.0.0/8",), 1)).address("10.1.0.1", chain) == "10.3.0.1"  # one hop only
    # entries a client wrote that look internal are reached only within the hops: never the first entry
    assert ProxyTrust(ProxySettings(("10.0.0.0/8",), 2)).address("10.1.0.1", "203.0.113.9, 10.0.0.7, 10.0.0.8") \
        == "10.0.0.7"
    assert ProxyTrust(space).address("10.1.0.1", "[2001:db8::1]:443") == "2001:db8::1"
    assert ProxyTrust(space).address("10.1.0.1", "203.0.113.7:4711") == "203.0.113.7"


def test_proxies_are_configured_in_the_models_file_and_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(SPACE_ENV, raising=False)
    for name in (TRUSTED_PROXIES_ENV, PROXY_HOPS_ENV):
        monkeypatch.delenv(name, raising=False)
    assert load_config(models_file(tmp_path)).proxies == DIRECT  # run directly: nobody trusted
    path = with_proxies(tmp_path, {"trusted": ["127.0.0.1", "10.0.0.0/8"], "hops": 2})
    assert load_config(path).proxies == ProxySettings(("127.0.0.1", "10.0.0.0/8"), 2)
    monkeypatch.setenv(TRUSTED_PROXIES_ENV, "none")
    assert load_config(path).proxies == ProxySettings((), 2)
    monkeypatch.setenv(TRUSTED_PROXIES_ENV, "172.16.0.0/12")
    monkeypatch.setenv(PROXY_HOPS_ENV, "4")
    assert load_config(path).proxies == ProxySettings(("172.16.0.0/12",), 4)
    monkeypatch.setenv(TRUSTED_PROXIES_ENV, "proxy.example")
    with pytest.raises(ConfigError, match="'proxy.example' is not an address or network"):
        load_config(path)
    monkeypatch.delenv(TRUSTED_PROXIES_ENV)
    monkeypatch.delenv(PROXY_HOPS_ENV)
    monkeypatch.setenv(SPACE_ENV, "someone/arena")  # on a Space: the Space's own network, unless the file says
    assert load_config(models_file(tmp_path)).proxies.trusted == SPACE_TRUSTED_PROXIES
    with pytest.raises(ConfigError, match="proxies.hops"):
        load_config(with_proxies(tmp_path, {"hops": 0}))


def test_uvicorn_is_kept_from_rewriting_the_peer(monkeypatch):
    """uvicorn trusts 127.0.0.1's X-Forwarded-For by default and would hand the arena the client's own text as
    its peer; the arena turns that off before Gradio builds the server."""
    import uvicorn

    monkeypatch.delenv(UVICORN_TRUST_ENV, raising=False)
    serve_peers_as_they_are()
    assert os.environ[UVICORN_TRUST_ENV] == ""
    config = uvicorn.Config(app=lambda *a: None)
    assert config.forwarded_allow_ips == ""


def with_proxies(tmp_path, proxies: dict, blind: dict = BLIND):
    path = models_file(tmp_path, blind=blind)
    data = yaml.safe_load(path.read_text())
    data["proxies"] = proxies
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---- through the server: seven fresh clients, each with its own X-Forwarded-For ----

LIMITED = {**BLIND, "battles_per_minute": 6}
CHALLENGER = BLIND["variants"][0]


@pytest.fixture
def serve(arena, tmp_path, monkeypatch):
    """serve(proxies) -> the URL of an app over the shared arena's models, with the blind test limited to six
    battles a minute."""
    from demo import ui
    from demo.running.runner import Arena

    monkeypatch.setenv("ARENA_VOTES_DB", str(tmp_path / "votes.sqlite3"))
    launched = []

    def start(proxies: dict | None):
        path = with_proxies(tmp_path, proxies, LIMITED) if proxies else models_file(tmp_path, blind=LIMITED)
        demo = ui.build_demo(Arena(load_config(path), manager=arena.manager, device=arena.device))
        demo.queue()
        _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                                quiet=True, **ui.launch_kwargs(demo))
        launched.append(demo)
        return url

    yield start
    for demo in launched:
        demo.close()


def battles(url: str, forwarded: list[str]) -> list[str]:
    """One /battle from a fresh client (a new session) per X-Forwarded-For value: "issued" or the refusal. The
    battle's variants are loaded first (a comparison, which the blind test's limits do not count), so that the
    battles fall well within the limits' minute even on a slow machine."""
    from gradio_client import Client as GradioClient
    from gradio_client.exceptions import AppError

    GradioClient(url, verbose=False).predict(prompt="Name a colour.", variants=["smollm2/fp32", CHALLENGER],
                                             max_new_tokens=2, api_name="/compare")
    outcomes = []
    for header in forwarded:
        client = GradioClient(url, verbose=False, headers={"X-Forwarded-For": header})
        try:
            client.predict(prompt="Name a colour.", api_name="/battle")
            outcomes.append("issued")
        except AppError as exc:
            outcomes.append(str(exc))
    return outcomes


def test_run_directly_a_forged_header_does_not_make_a_new_client(serve):
    url = serve(None)
    outcomes = battles(url, [f"198.51.100.{i}" for i in range(1, 8)])
    assert outcomes[:6] == ["issued"] * 6
    assert "at most 6 a minute per address" in outcomes[6]


def test_behind_a_trusted_proxy_the_appended_entry_is_the_client(serve):
    url = serve({"trusted": ["127.0.0.1"], "hops": 1})
    # each client forges a different first entry; "the proxy" appended the same address to each
    outcomes = battles(url, [f"198.51.100.{i}, 203.0.113.7" for i in range(1, 8)] + ["203.0.113.8"])
    assert outcomes[:6] == ["issued"] * 6
    assert "at most 6 a minute per address" in outcomes[6]
    assert outcomes[7] == "issued"  # another address has its own allowance
