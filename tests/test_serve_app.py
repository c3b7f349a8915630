"""The HTTP server on loopback (one per module): OpenAI's format, answers equal to `ChatSession`,
streaming, usage, metrics, 64 concurrent clients, disconnects, a full queue, bad input, the
official `openai` client, and the chat page in headless Chromium."""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import os
import socket
import struct
import threading
import time
import types
import zlib

import jax
import pytest
import uvicorn

from llava_mini_jax.chat import ChatSession, prompt_ids
from llava_mini_jax.engine import Engine
from serve.app import create_app
from serve.service import ChatService, ServeOptions
from media import video_file
from serve_helpers import GEOMETRY, image, warm

KEY = "test-key"
ANSWER_TOKENS = 12  # the server's default max_tokens here, and ChatSession's max_new_tokens
CHROMIUM = "/usr/bin/chromium"
TIMEOUT = 60  # seconds, every client call


@pytest.fixture(scope="module")
def server(tiny_chat, tmp_path_factory):
    media_dir = tmp_path_factory.mktemp("serve_media")
    video_file(media_dir / "clip.mkv")
    image(0).save(media_dir / "pic.png")
    engine = Engine(tiny_chat.model, tiny_chat.params, max_queue=64, **GEOMETRY)
    warm(engine, tiny_chat)
    engine.warmup([tiny_chat.load_pixels(image=image()).shape], buckets=[128])  # the page's second turn
    options = ServeOptions(model_name="tiny", api_key=KEY, allow_local_media=str(media_dir), max_tokens=ANSWER_TOKENS,
                           max_image_pixels=1_000_000)
    service = ChatService(engine, tiny_chat.tokenizer, tiny_chat.template, options, processor=tiny_chat.processor)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.started
    port = sock.getsockname()[1]
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, engine=engine, service=service,
                                media_dir=media_dir)
    srv.should_exit = True
    thread.join(TIMEOUT)


@pytest.fixture(scope="module")
def expect(tiny_chat, tiny_hf_checkpoint):
    """`expect(question, image=, video=, history=)`: what `ChatSession.ask` answers (greedy, 12 tokens)."""
    def answer(question, image=None, video=None, history=()):
        session = ChatSession(tiny_hf_checkpoint, model=tiny_chat.model, params=tiny_chat.params,
                              tokenizer=tiny_chat.tokenizer, max_new_tokens=ANSWER_TOKENS)
        if image is not None:
            session.set_image(image)
        if video is not None:
            session.set_video(video)
        session.history = list(history)
        return session.ask(question)
    return answer


# -- small stdlib clients -----------------------------------------------------------------------
def data_url(img, fmt="PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode()}"


def user(text, url=None, kind="image"):
    if url is None:
        return {"role": "user", "content": text}
    part = {"type": f"{kind}_url", f"{kind}_url": {"url": url}}
    return {"role": "user", "content": [{"type": "text", "text": text}, part]}


def post(server, body, key=KEY, path="/v1/chat/completions", raw=None):
    """`(status, decoded JSON body)`."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request("POST", path, raw if raw is not None else json.dumps(body), headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def get(server, path, key=KEY):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"} if key else {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type"), resp.read()
    finally:
        conn.close()


def open_stream(server, body):
    """Sends a streaming request; returns `(connection, response)` once the headers are in."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    conn.request("POST", "/v1/chat/completions", json.dumps(dict(body, stream=True)),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    return conn, conn.getresponse()


def sse_events(resp):
    """Decoded `data:` payloads until `[DONE]` (which must come)."""
    while True:
        line = resp.readline()
        assert line, "the stream ended without [DONE]"
        line = line.decode().strip()
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            return
        yield json.loads(line[len("data: "):])


def stream(server, body):
    """`(content pieces, finish_reason, usage)` of a streamed answer."""
    conn, resp = open_stream(server, body)
    try:
        assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
        pieces, finish, usage = [], None, None
        for chunk in sse_events(resp):
            assert chunk["object"] == "chat.completion.chunk"
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    pieces.append(choice["delta"]["content"])
                finish = choice["finish_reason"] or finish
        return pieces, finish, usage
    finally:
        conn.close()


def wait_for(predicate, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- the API ------------------------------------------------------------------------------------
def test_models_health_page_and_metrics(server):
    status, ctype, raw = get(server, "/v1/models")
    assert status == 200 and json.loads(raw)["data"][0]["id"] == "tiny"
    status, _, raw = get(server, "/health", key=None)
    assert status == 200 and json.loads(raw)["status"] == "ok"
    status, ctype, page = get(server, "/", key=None)
    assert status == 200 and ctype.startswith("text/html") and b"/static/chat.js" in page
    for asset in ("chat.js", "chat.css"):
        status, _, text = get(server, f"/static/{asset}", key=None)
        assert status == 200 and b"http://" not in text and b"https://" not in text  # nothing from a CDN
    assert b"http" not in page.replace(b'http-equiv', b'')
    status, ctype, text = get(server, "/metrics", key=None)
    assert status == 200 and ctype.startswith("text/plain")
    for name in ("llava_mini_requests_total", "llava_mini_queue_length", "llava_mini_active_slots",
                 "llava_mini_tokens_per_second", "llava_mini_time_to_first_token_seconds_bucket"):
        assert name.encode() in text, name


def test_answers_equal_chat_session(server, expect):
    video = str(server.media_dir / "clip.mkv")
    cases = [
        (dict(messages=[user("What is in the image?", data_url(image(0)))]), expect("What is in the image?", image(0))),
        (dict(messages=[user("Describe it.", data_url(image(1), "JPEG"))]), None),  # JPEG: checked below
        (dict(messages=[user("Hello")]), expect("Hello")),
        (dict(messages=[user("What happens?", f"file://{video}", "video")]), expect("What happens?", video=video)),
        (dict(messages=[user("Name a colour"), {"role": "assistant", "content": "Red."}, user("Another?")]),
         expect("Another?", history=[("Name a colour", "Red.")])),
        (dict(messages=[user("Look", "pic.png")]), expect("Look", image(0))),  # relative to --allow-local-media
        (dict(messages=[user("And this clip?", _b64(open(video, "rb").read(), "video/x-matroska"), "video")]),
         expect("And this clip?", video=video)),
    ]
    jpeg = io.BytesIO()
    image(1).save(jpeg, "JPEG")
    jpeg.seek(0)
    cases[1] = (cases[1][0], expect("Describe it.", jpeg))
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:  # they share the batch
        results = list(pool.map(lambda c: post(server, dict(c[0], model="tiny", temperature=0)), cases))
    for i, ((_, want), (status, body)) in enumerate(zip(cases, results)):
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == want, i
        assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] in ("stop", "length")


def test_stream_adds_up_to_the_answer_and_usage_counts_vision_tokens(server, tiny_chat):
    body = dict(model="tiny", messages=[user("Tell me", data_url(image(2)))], max_tokens=9, seed=1,
                stream_options={"include_usage": True})
    status, whole = post(server, body)
    assert status == 200
    pieces, finish, usage = stream(server, body)
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert finish == whole["choices"][0]["finish_reason"] == "length"
    n = len(prompt_ids("Tell me", tiny_chat.template, tiny_chat.tokenizer, with_image=True))
    assert usage == whole["usage"] == {"prompt_tokens": n, "completion_tokens": 9, "total_tokens": n + 9}
    _, video_answer = post(server, dict(model="tiny", messages=[user("Hi", "clip.mkv", "video")], max_tokens=2))
    n_text = len(prompt_ids("Hi", tiny_chat.template, tiny_chat.tokenizer, with_image=True))
    assert video_answer["usage"]["prompt_tokens"] == n_text - 1 + 2  # one token per frame, 2 frames


def test_sampling_options_and_stop(server):
    base = dict(model="tiny", messages=[user("Say something")], max_tokens=12)
    a = post(server, dict(base, temperature=1.0, top_p=0.9, seed=7))[1]["choices"][0]["message"]["content"]
    b = post(server, dict(base, temperature=1.0, top_p=0.9, seed=7))[1]["choices"][0]["message"]["content"]
    assert a == b  # same seed, same answer, whatever shares the batch
    greedy = post(server, base)[1]["choices"][0]["message"]["content"]
    cut = greedy[3:5]
    assert cut
    status, body = post(server, dict(base, stop=[cut]))
    assert status == 200 and body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == greedy[:greedy.find(cut)].strip()


def _png_header(width, height) -> bytes:
    """A small PNG claiming `width x height` pixels (its data would inflate to gigabytes): a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _b64(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


BAD = [  # (name, body or raw bytes, key, status, words in the message)
    ("malformed JSON", b'{"model": "tiny", "messages": [', KEY, 400, "not valid JSON"),
    ("not an object", [1, 2], KEY, 400, "JSON object"),
    ("messages type", {"model": "tiny", "messages": "hi"}, KEY, 400, "messages: expected an array"),
    ("max_tokens type", {"model": "tiny", "messages": [user("x")], "max_tokens": "5"}, KEY, 400, "max_tokens"),
    ("temperature bool", {"model": "tiny", "messages": [user("x")], "temperature": True}, KEY, 400, "temperature"),
    ("top_p range", {"model": "tiny", "messages": [user("x")], "top_p": 1.5}, KEY, 400, "top_p"),
    ("n=2", {"model": "tiny", "messages": [user("x")], "n": 2}, KEY, 400, "n=1"),
    ("roles", {"model": "tiny", "messages": [{"role": "assistant", "content": "x"}]}, KEY, 400, "expected 'user'"),
    ("part type", {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, KEY, 400,
     "unknown content part type"),
    ("broken base64", {"model": "tiny", "messages": [user("x", "data:image/png;base64,@@not base64@@")]}, KEY, 400,
     "broken base64"),
    ("not an image", {"model": "tiny", "messages": [user("x", _b64(b"hello, I am text"))]}, KEY, 400, "not an image"),
    ("decompression bomb", {"model": "tiny", "messages": [user("x", _b64(_png_header(40000, 40000)))]}, KEY, 400,
     "1600000000 pixels"),
    ("too many images", {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}},
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]},
     KEY, 400, "at most one"),
    ("prompt too long", {"model": "tiny", "messages": [user("word " * 200)]}, KEY, 400, "context holds 128"),
    ("remote URL", {"model": "tiny", "messages": [user("x", "https://example.com/cat.png")]}, KEY, 400,
     "remote URLs are not fetched"),
    ("outside media dir", {"model": "tiny", "messages": [user("x", "../../etc/passwd")]}, KEY, 403,
     "outside the allowed media directory"),
    ("missing file", {"model": "tiny", "messages": [user("x", "nope.png")]}, KEY, 400, "does not exist"),
    ("video that is not", {"model": "tiny", "messages": [user("x", _b64(b"\x00" * 64, "video/mp4"), "video")]}, KEY,
     400, "cannot read the video"),
    ("unknown model", {"model": "gpt-4o", "messages": [user("x")]}, KEY, 404, "does not exist"),
    ("missing key", {"model": "tiny", "messages": [user("x")]}, None, 401, "missing API key"),
    ("wrong key", {"model": "tiny", "messages": [user("x")]}, "nope", 401, "invalid API key"),
]


@pytest.mark.parametrize("name,body,key,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_json_error_and_the_server_keeps_serving(server, name, body, key, status, words):
    raw = body if isinstance(body, bytes) else None
    got, reply = post(server, body, key=key, raw=raw)
    assert got == status, reply
    assert words in reply["error"]["message"], reply
    assert set(reply["error"]) >= {"message", "type", "param", "code"}
    ok, answer = post(server, {"model": "tiny", "messages": [user("still there?")], "max_tokens": 1})
    assert ok == 200 and answer["usage"]["completion_tokens"] == 1


def test_64_concurrent_clients_all_answered_none_mixed_up(server):
    questions = [f"Question number {k}: what is {k} plus {k}?" for k in range(8)]

    def body(q):  # sampled with a seed of its own: the tiny random model's greedy answers hardly differ
        return {"model": "tiny", "messages": [user(q)], "max_tokens": 6, "temperature": 1.0,
                "seed": questions.index(q)}

    want = {q: post(server, body(q))[1]["choices"][0]["message"] for q in questions}
    assert len({w["content"] for w in want.values()}) == len(questions)  # distinct, so a mix-up would show

    def client(k):
        q = questions[k % len(questions)]
        if k % 2:
            pieces, _, _ = stream(server, body(q))
            return q, "".join(pieces)
        status, reply = post(server, body(q))
        assert status == 200, reply
        return q, reply["choices"][0]["message"]["content"]

    compiles = []
    listener = lambda event, *a, **kw: compiles.append(event) if "backend_compile" in event else None  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(client, range(64), timeout=TIMEOUT))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(answers) == 64 and all(text == want[q]["content"] for q, text in answers)
    assert compiles == [] and time.monotonic() - start < TIMEOUT
    wait_for(lambda: server.engine.active == 0 and server.engine.queued == 0)


def test_full_queue_answers_429_at_once(server):
    engine = server.engine
    body = {"model": "tiny", "messages": [user("wait")], "max_tokens": 2}
    engine.pause()
    streams = []
    try:
        for _ in range(engine.max_queue):
            conn, resp = open_stream(server, body)
            assert resp.status == 200
            streams.append((conn, resp))
        assert engine.queued == engine.max_queue
        start = time.monotonic()
        status, reply = post(server, body)
        assert status == 429 and "queue is full" in reply["error"]["message"]
        assert time.monotonic() - start < 2.0
        _, _, metrics = get(server, "/metrics", key=None)
        assert b"llava_mini_queue_length 64.0" in metrics
    finally:
        engine.resume()
    for conn, resp in streams:  # every queued one is answered after all
        assert len([c for c in sse_events(resp)]) >= 2
        conn.close()
    wait_for(lambda: engine.active == 0 and engine.queued == 0)


def test_client_that_disconnects_frees_its_slot(server):
    engine = server.engine
    body = {"model": "tiny", "messages": [user("Talk")], "max_tokens": 1000}
    for attempt in range(3):  # the answer must still be running when we pause (it takes ~80 steps)
        conn, resp = open_stream(server, body)
        events = sse_events(resp)
        next(events), next(events)  # the role chunk, then text: decoding
        engine.pause()
        if engine.active == 1:
            break
        engine.resume()
        conn.close()
    else:
        pytest.fail("the answer always finished before the pause")
    try:
        conn.close()  # gone mid-stream; while paused only the cancellation can free the slot
        wait_for(lambda: engine.active == 0, timeout=10)
        # a non-streaming client that leaves while its request waits in the queue
        waiting = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        waiting.request("POST", "/v1/chat/completions", json.dumps(body),
                        {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        wait_for(lambda: engine.queued == 1, timeout=10)
        waiting.sock.shutdown(socket.SHUT_RDWR)
        waiting.close()
        wait_for(lambda: engine.queued == 0, timeout=10)
    finally:
        engine.resume()


# -- clients nobody here wrote -------------------------------------------------------------------
def test_official_openai_client(server, expect):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, timeout=TIMEOUT, max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    messages = [user("What is in the image?", data_url(image(3)))]
    reply = client.chat.completions.create(model="tiny", messages=messages, temperature=0)
    assert reply.choices[0].message.content == expect("What is in the image?", image(3))
    assert reply.usage.completion_tokens <= ANSWER_TOKENS
    pieces = [c.choices[0].delta.content or "" for c in
              client.chat.completions.create(model="tiny", messages=messages, temperature=0, stream=True)
              if c.choices]
    assert "".join(pieces) == reply.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="n=1"):
        client.chat.completions.create(model="tiny", messages=messages, n=2)


def test_chat_page_in_headless_chromium(server, expect, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        missing = f"{CHROMIUM} is missing: apt-get install chromium"
        if os.environ.get("LLAVA_MINI_REQUIRE_BROWSER"):  # .ci/run sets it: CI never skips this test
            pytest.fail(missing)
        pytest.skip(missing)
    picture = tmp_path / "picture.png"
    image(4).save(picture)
    first_answer = expect("What do you see?", image(4))
    second_answer = expect("And then?", image(4), history=[("What do you see?", first_answer)])
    outside = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(  # a fresh user-data-dir, Debian's chromium, no download
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT * 1000)
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("data:", server.url)) else None)
            page.goto(server.url + "/")
            page.fill("#api-key", KEY)
            page.dispatch_event("#api-key", "change")
            page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
            page.set_input_files("#file", str(picture))
            page.wait_for_selector("#preview img")
            for turn, (question, answer) in enumerate([("What do you see?", first_answer),
                                                        ("And then?", second_answer)]):
                page.fill("#prompt", question)
                page.click("#send")
                bubble = page.locator(".msg.assistant").nth(turn)
                page.wait_for_function(f"document.querySelectorAll('.msg.assistant')[{turn}]?.dataset.done === 'true'")
                assert bubble.locator(".text").text_content() == answer
            assert page.locator(".msg.error").count() == 0
            assert "first token" in page.text_content("#status")
            shot = tmp_path / "chat_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 1000
        finally:
            browser.close()
    assert outside == []  # nothing from elsewhere
