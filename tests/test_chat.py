"""The chat layer and `llava-mini-jax chat`: prompts, preprocessing from the config, streaming."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cli.main import main as cli_main
from llava_mini_jax import IMAGE_TOKEN_INDEX
from llava_mini_jax.chat import ChatSession, default_template
from llava_mini_jax.generate import generate
from media import video_file


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
    video = video_file(tmp_path / "long.mkv", frames=20, fps=4)
    session.set_video(video)
    assert session.pixels.dtype == np.uint8 and session.pixels.shape == (5, 1, 16, 16, 3)
    floats = session.load_pixels(video=video)
    ids = np.asarray([session.prompt_ids("What happens?")])
    want = generate(session.model.clone(video_chunk_size=2), session.params, ids, images=floats[None],
                    max_new_tokens=6, eos_token_ids=session.eos_ids(), pad_token_id=-1)
    answer = session.ask("What happens?")
    assert answer == session.tokenizer.decode([int(t) for t in want[0] if t >= 0]).split("</s>")[0].strip()


def test_batch_answers_equal_single_answers(session, image, tmp_path):
    video = video_file(tmp_path / "clip.mkv")
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
    video = video_file(tmp_path / "v.mkv", frames=6, fps=3)
    r = subprocess.run([sys.executable, "-m", "cli", "chat", "--model", str(ckpt), "--video",
                        str(video), "--max-new-tokens", "3"], input="first?\nsecond?\n\n", capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("ASSISTANT:") == 2 and "vicuna_v1" in r.stdout


def test_cli_chat_quantize_answers_as_a_quantized_session(ckpt, image, capsys):
    from llava_mini_jax.quantize import model_quantize_config
    want = ChatSession(ckpt, max_new_tokens=4, quantize="int8")
    assert model_quantize_config(want.model).mode == "int8"
    want.set_image(image)
    expected = want.ask("Hi?")
    assert cli_main(["chat", "--model", str(ckpt), "--image", str(image), "--prompt", "Hi?",
                     "--max-new-tokens", "4", "--quantize", "int8"]) == 0
    assert capsys.readouterr().out.strip() == expected.strip()


def _text(session, ids):
    return session.tokenizer.decode([i for i in ids if i >= 0])


def test_typed_image_tags_are_text_except_where_the_image_goes(session, image):
    from llava_mini_jax.chat import prompt_ids
    tpl, tok = session.template, session.tokenizer
    # the turn carrying the image: its first typed <image> is where the image goes (LLaVA's convention)
    assert prompt_ids("<image>\nWhat is it?", tpl, tok, with_image=True) == prompt_ids("What is it?", tpl, tok,
                                                                                     with_image=True)
    ids = prompt_ids("Is <image> like <image>?", tpl, tok, with_image=True)
    at = ids.index(IMAGE_TOKEN_INDEX)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and _text(session, ids[at:]).strip() == "like <image>? ASSISTANT:"
    assert _text(session, ids[:at]).rstrip().endswith("USER: Is")
    # no image, later turns, answers, <image-placeholder>: all text, never a media position
    ids = prompt_ids("What is <image>?", tpl, tok, history=[("<image-placeholder> hi", "I see <image>")],
                     with_image=False)
    assert IMAGE_TOKEN_INDEX not in ids
    assert "USER: <image-placeholder> hi ASSISTANT: I see <image>USER: What is <image>? ASSISTANT:" in \
        _text(session, ids)
    ids = prompt_ids("And <image>?", tpl, tok, history=[("Q", "A")], with_image=True)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and _text(session, ids).endswith("USER: And <image>? ASSISTANT:")
    session.set_image(image)
    session.ask("What is in <image>?")  # the session answers instead of failing on two placeholders
    assert session.ask("Compare <image> and <image>.") is not None and len(session.history) == 2


def test_a_long_conversation_drops_its_oldest_turns_and_says_so(session, image, monkeypatch):
    from llava_mini_jax import chat
    session.set_image(image)
    session.history = [(f"question {i} " + "word " * 20, f"answer {i}") for i in range(4)]
    positions = chat.prompt_positions(session.model.config, session.prompt_ids("newest?"), session.pixels)
    one_turn = positions - chat.prompt_positions(
        session.model.config, chat.prompt_ids("newest?", session.template, session.tokenizer, session.history[1:],
                                              with_image=True), session.pixels)
    # room for the question, the answer and two old turns: the two oldest go
    monkeypatch.setattr(chat, "max_prompt_tokens", lambda config, max_new_tokens: positions - 2 * one_turn)
    notes = []
    ids, dropped = session.fitting_prompt("newest?")
    assert dropped == 2 and ids.count(IMAGE_TOKEN_INDEX) == 1  # the image moves to the first kept turn
    assert "question 2" in _text(session, ids) and "question 1" not in _text(session, ids)
    session.ask("newest?", on_notice=notes.append)
    assert notes == [f"dropped the 2 oldest turn(s) of the conversation to fit the model's context "
                     f"({positions - 2 * one_turn} prompt positions, {session.max_new_tokens} kept for the answer)"]
    assert [q[:10] for q, _ in session.history] == ["question 2", "question 3", "newest?"]
    before = list(session.history)
    with pytest.raises(ValueError, match=r"the question alone needs \d+ positions .*more than the model's context leaves"):
        session.ask("word " * 400)
    assert session.history == before  # nothing lost on an error


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(ckpt, session):
    import dataclasses
    import types
    cfg = session.model.config
    small = types.SimpleNamespace(config=dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, vocab_size=1000)))
    with pytest.raises(ValueError, match=r"tokenizer .*model has 2000 ids .* vocabulary of 1000 .*ids 1000..1999 "
                                         r"have no embedding"):
        ChatSession(ckpt, model=small, params={})


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(ckpt, tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "nope.png")
    for argv, named in ((["chat", "--model", str(ckpt), "--image", missing, "--prompt", "hi"], missing),
                        (["chat", "--model", str(tmp_path / "no_model"), "--prompt", "hi"], "no_model"),
                        (["demo", "--model", str(tmp_path / "no_model"), "--image", missing], "no_model"),
                        (["eval", "pope", "--data", str(tmp_path / "no_data")], "no_data"),
                        (["serve", "--model", str(tmp_path / "no_model")], "no_model")):
        assert cli_main(argv) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"llava-mini-jax {argv[0]}: error: "), (argv, err)
        assert named in err[0], (argv, err)
    with pytest.raises(FileNotFoundError):
        cli_main(["chat", "--model", str(ckpt), "--image", missing, "--prompt", "hi", "--debug"])
    monkeypatch.setenv("LLAVA_MINI_JAX_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli_main(["chat", "--model", str(ckpt), "--image", missing, "--prompt", "hi"])


def test_cli_interactive_chat_keeps_its_history_through_errors(ckpt, image, capsys, monkeypatch):
    questions = iter(["first?", "word " * 5000, "stop me", "third?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(questions))
    seen = []
    real_ask = ChatSession.ask

    def ask(self, question, **kw):
        seen.append((question[:8], len(self.history)))
        if question == "stop me":
            raise KeyboardInterrupt
        return real_ask(self, question, **kw)
    monkeypatch.setattr(ChatSession, "ask", ask)
    assert cli_main(["chat", "--model", str(ckpt), "--image", str(image), "--max-new-tokens", "3"]) == 0
    assert seen == [("first?", 0), ("word wor", 1), ("stop me", 1), ("third?", 1)]  # history kept throughout
    out = capsys.readouterr()
    assert out.err.count("llava-mini-jax chat: error: the question alone needs") == 1
    assert "(the conversation goes on)" in out.err and "[answer stopped" in out.out
