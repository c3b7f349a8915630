"""`llava-mini-jax serve`: the subcommand's arguments, building the service, and the real command
answering on loopback."""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import time

import pytest

from cli.main import main as cli_main
from serve import cli as serve_cli


def parse(argv):
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve"] + argv)


def test_subcommand_is_registered(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--host", "--port", "--max-batch", "--max-context", "--api-key", "--allow-local-media"):
        assert flag in out


def test_build_from_arguments(tiny_hf_checkpoint, tmp_path):
    args = parse(["--model", str(tiny_hf_checkpoint), "--max-batch", "3", "--max-context", "96", "--api-key", "k",
                  "--allow-local-media", str(tmp_path), "--warmup", "none", "--max-tokens", "5"])
    service, _ = serve_cli.build(args)
    assert (service.engine.max_batch, service.engine.max_context) == (3, 96)
    o = service.options
    assert (o.model_name, o.api_key, o.allow_local_media) == (tiny_hf_checkpoint.name, "k", str(tmp_path))
    assert (o.max_tokens, o.temperature) == (5, 0.0)
    assert service.template == "vicuna_v1" and service.eos == (2,)
    with pytest.raises(ValueError, match="--warmup: unknown"):
        serve_cli.build(parse(["--model", str(tiny_hf_checkpoint), "--warmup", "text,audio"]))


def test_the_command_serves_on_loopback(tiny_hf_checkpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--model", str(tiny_hf_checkpoint),
                             "--port", str(port), "--max-context", "64", "--max-batch", "2", "--warmup", "none",
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()[-2000:]
            assert time.monotonic() < deadline, "the server did not come up in 120 s"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/v1/chat/completions", json.dumps(
            {"model": tiny_hf_checkpoint.name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
            {"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 200 and body["usage"]["completion_tokens"] == 2, body
    finally:
        proc.terminate()
        proc.wait(30)


def test_build_quantized(tiny_hf_checkpoint):
    from llava_mini_jax.quantize import model_quantize_config
    service, _ = serve_cli.build(parse(["--model", str(tiny_hf_checkpoint), "--quantize", "int4", "--warmup", "none"]))
    assert model_quantize_config(service.engine.model).mode == "int4"
    assert service.engine.params["llm"]["lm_head"]["qvalue"].dtype.name == "int4"
