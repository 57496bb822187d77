"""The served API of a real Ray Serve play server, through HTTP, without a browser (fixture: conftest)."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from tests.play.conftest import BUTTONS, MAX_SESSIONS, STEPS, Client

LEFT, RIGHT, NONE = [1, 0, 0], [0, 1, 0], [0, 0, 0]


def pixels(reply: dict) -> np.ndarray:
    import base64

    data = base64.b64decode(reply["frame"].split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


@pytest.fixture
def client(play_server: Client):
    """The server's client; closes the sessions a test opened (the server allows MAX_SESSIONS)."""
    opened: list[str] = []
    original = play_server.ok

    def ok(method: str, path: str, body: object = None):
        reply = original(method, path, body)
        if path == "/api/session" and method == "POST":
            opened.append(reply["session"])
        return reply

    play_server.ok = ok  # type: ignore[method-assign]
    try:
        yield play_server
    finally:
        play_server.ok = original  # type: ignore[method-assign]
        for sid in opened:
            play_server.call("DELETE", f"/api/session/{sid}")


def test_info_and_page(client: Client) -> None:
    info = client.ok("GET", "/api/info")
    assert info["actions"]["type"] == "multi_hot" and info["actions"]["names"] == BUTTONS
    assert [c["key"] for c in info["actions"]["controls"]] == ["ArrowLeft", "ArrowRight", " "]
    assert info["contexts"] == ["held-out-0", "held-out-1", "blank"]
    assert info["steps"] == {"default": STEPS, "min": 1, "max": 8}
    assert info["window"] >= 2  # the frames of context per step (play_latency fills it before timing)
    assert info["frame"] == {"height": 64, "width": 64} and info["device"] == "cpu"
    status, page = client.call("GET", "/")
    assert status == 200 and b"<canvas" in page and b"/static/play.js" in page
    assert client.call("GET", "/static/play.js")[0] == 200
    assert client.call("GET", "/static/secrets.txt")[0] == 404


def test_frames_follow_actions_and_sessions_are_isolated(client: Client) -> None:
    a = client.ok("POST", "/api/session", {"context": "held-out-1", "seed": 5})
    b = client.ok("POST", "/api/session", {"context": "held-out-1", "seed": 5})
    assert a["session"] != b["session"] and a["index"] == 3 and a["context"] == "held-out-1"
    assert np.array_equal(pixels(a), pixels(b))  # the same context frame
    a1 = client.ok("POST", f"/api/session/{a['session']}/step", {"action": LEFT})
    b1 = client.ok("POST", f"/api/session/{b['session']}/step", {"action": RIGHT})
    b2 = client.ok("POST", f"/api/session/{b['session']}/step", {"action": RIGHT})
    a2 = client.ok("POST", f"/api/session/{a['session']}/step", {"action": LEFT})
    assert (a1["index"], a2["index"], b2["index"]) == (4, 5, 5) and a1["steps"] == STEPS
    assert np.abs(pixels(a1) - pixels(b1)).mean() > 1.0  # same seed and context: only the action differs
    # a third session with a's seed and keys, stepped alone, makes a's frames: b's steps in between did not
    # touch a's rollout state or generator
    c = client.ok("POST", "/api/session", {"context": "held-out-1", "seed": 5})
    c1 = client.ok("POST", f"/api/session/{c['session']}/step", {"action": LEFT})
    c2 = client.ok("POST", f"/api/session/{c['session']}/step", {"action": LEFT})
    assert np.array_equal(pixels(c1), pixels(a1)) and np.array_equal(pixels(c2), pixels(a2))


@pytest.mark.parametrize(("body", "match"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b"{}", "needs an 'action'"),
    (b'{"action": [1, 0]}', "list of 3"),
    (b'{"action": [5, 0, 0]}', "0 or 1"),
    (b'{"action": 1}', "list of 3"),
    (b'{"action": [0, 0, 0], "steps": 0}', "steps"),
    (b'{"action": [0, 0, 0], "steps": 9}', "above this server's maximum 8"),
    (b'{"action": [0, 0, 0], "steps": "2"}', "steps"),
    (b'{"action": [0, 0, 0], "extra": 1}', "extra"),
    (b'{"action": [0, 0, 0]}' + b" " * 20000, "larger than"),
])  # fmt: skip
def test_bad_messages_are_rejected_and_the_session_lives(client: Client, body: bytes, match: str) -> None:
    s = client.ok("POST", "/api/session", {"seed": 1})
    first = client.ok("POST", f"/api/session/{s['session']}/step", {"action": NONE})
    status, reply = client.call("POST", f"/api/session/{s['session']}/step", raw=body)
    assert status == 400 and match in reply["error"], reply
    after = client.ok("POST", f"/api/session/{s['session']}/step", {"action": NONE})
    assert after["index"] == first["index"] + 1  # the bad message changed nothing


def test_unknown_sessions_contexts_and_the_session_limit(client: Client) -> None:
    status, reply = client.call("POST", "/api/session/nope/step", {"action": NONE})
    assert status == 404 and "expired or never existed" in reply["error"]
    status, reply = client.call("POST", "/api/session", {"context": "not-an-episode"})
    assert status == 400 and "unknown context" in reply["error"]
    ids = [client.ok("POST", "/api/session", {})["session"] for _ in range(MAX_SESSIONS)]
    status, reply = client.call("POST", "/api/session", {})
    assert status == 503 and f"all {MAX_SESSIONS} play sessions are in use" in reply["error"]
    assert client.ok("DELETE", f"/api/session/{ids[0]}") == {"closed": True}
    assert client.call("POST", f"/api/session/{ids[0]}/step", {"action": NONE})[0] == 404
    client.ok("POST", "/api/session", {})  # the freed slot


def test_reset_replays_and_the_session_downloads_as_mp4(client: Client) -> None:
    s = client.ok("POST", "/api/session", {"context": "held-out-0", "seed": 2})
    sid = s["session"]
    steps = [client.ok("POST", f"/api/session/{sid}/step", {"action": a}) for a in (LEFT, RIGHT, NONE)]
    status, video = client.call("GET", f"/api/session/{sid}/video.mp4")
    assert status == 200 and video[4:8] == b"ftyp"
    with av.open(io.BytesIO(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 + 3 and frames[0].shape == (256, 256, 3)  # context + steps, ×4 upscaled
    again = client.ok("POST", f"/api/session/{sid}/reset", {})
    assert again["index"] == 3 and np.array_equal(pixels(again), pixels(s))
    replay = client.ok("POST", f"/api/session/{sid}/step", {"action": LEFT})
    assert np.array_equal(pixels(replay), pixels(steps[0]))
    other = client.ok("POST", f"/api/session/{sid}/reset", {"context": "blank"})
    assert other["context"] == "blank" and (pixels(other) == 128).all()
