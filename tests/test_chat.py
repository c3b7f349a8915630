"""The chat layer and `llava-mini-jax chat`: prompts, preprocessing from the config, streaming."""
from __future__ import annotations

import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from cli.main import main as cli_main
from llava_mini_jax import IMAGE_TOKEN_INDEX
from llava_mini_jax.chat import ChatSession, default_template
from llava_mini_jax.generate import generate


@pytest.fixture(scope="module")
def ckpt(tiny_hf_checkpoint):
    return tiny_hf_checkpoint


@pytest.fixture(scope="module")
def session(ckpt):
    return ChatSession(ckpt, max_new_tokens=6)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(path)
    return path


def write_video(path, frames=10, fps=4, size=(24, 16)):
    """A lossless FFV1 clip, `frames` frames at `fps`."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "bgr0"
        for i in range(frames):
            arr = np.full((size[1], size[0], 3), (i * 20) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_defaults_from_checkpoint(session):
    assert session.template == "vicuna_v1" == default_template(session.tokenizer)
    assert (session.processor.crop_height, session.processor.shortest_edge) == (16, 16)


def test_first_turn_carries_the_image_later_turns_do_not(session, image):
    session.set_image(image)
    assert session.pixels.shape == (1, 3, 16, 16)
    ids = session.prompt_ids("What is this?")
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    text = session.tokenizer.decode([i for i in ids if i >= 0])
    assert text.startswith("A chat between") and text.endswith("ASSISTANT:")
    pieces = []
    answer = session.ask("What is this?", on_text=pieces.append)
    assert answer == "".join(pieces).strip()
    ids2 = session.prompt_ids("And then?")
    assert ids2.count(IMAGE_TOKEN_INDEX) == 1 and len(ids2) > len(ids)  # history kept, one image


def test_ask_equals_generate_on_the_same_prompt(session, image):
    session.set_image(image)
    ids = np.asarray([session.prompt_ids("Describe it.")])
    want = generate(session.model, session.params, ids, images=session.pixels[None], max_new_tokens=6,
                    eos_token_ids=session.eos_ids(), pad_token_id=-1)
    answer = session.ask("Describe it.")
    toks = [int(t) for t in want[0] if t >= 0]
    assert answer == session.tokenizer.decode(toks).split("</s>")[0].strip()


def test_video_stays_uint8_and_streams_to_the_same_answer(session, tmp_path):
    """`set_video` keeps uint8 frames (a quarter of float32's bytes) that `ask` streams to the device in
    chunks; the answer is the one float32 pixels give."""
    video = write_video(tmp_path / "long.mkv", frames=20, fps=4)
    session.set_video(video)
    assert session.pixels.dtype == np.uint8 and session.pixels.shape == (5, 1, 16, 16, 3)
    floats = session.load_pixels(video=video)
    ids = np.asarray([session.prompt_ids("What happens?")])
    want = generate(session.model.clone(video_chunk_size=2), session.params, ids, images=floats[None],
                    max_new_tokens=6, eos_token_ids=session.eos_ids(), pad_token_id=-1)
    answer = session.ask("What happens?")
    assert answer == session.tokenizer.decode([int(t) for t in want[0] if t >= 0]).split("</s>")[0].strip()


def test_batch_answers_equal_single_answers(session, image, tmp_path):
    video = write_video(tmp_path / "clip.mkv")
    pixels = [session.load_pixels(image=image), None, session.load_pixels(video=video), session.load_pixels(image=image)]
    questions = ["Colour?", "What is two plus two?", "What happens?", "Is it big?"]
    batch = session.answer_batch(questions, pixels, max_new_tokens=5)
    single = [session.answer_batch([q], [p], max_new_tokens=5)[0] for q, p in zip(questions, pixels)]
    assert batch == single
    assert pixels[2].shape[0] == 2  # 10 frames at 4 fps -> 2 frames (1 per second)


def test_cli_chat_one_prompt_prints_the_answer(ckpt, image, capsys):
    want = ChatSession(ckpt, max_new_tokens=4)
    want.set_image(image)
    expected = want.ask("Hi?")
    assert cli_main(["chat", "--model", str(ckpt), "--image", str(image), "--prompt", "Hi?",
                     "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip() == expected.strip()


def test_cli_chat_interactive_video(ckpt, tmp_path):
    video = write_video(tmp_path / "v.mkv", frames=6, fps=3)
    r = subprocess.run([sys.executable, "-m", "cli", "chat", "--model", str(ckpt), "--video",
                        str(video), "--max-new-tokens", "3"], input="first?\nsecond?\n\n", capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("ASSISTANT:") == 2 and "vicuna_v1" in r.stdout
