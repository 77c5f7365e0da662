"""lmlib.assistant (chapter 5): DPO as a model the Trainer trains, the chat box, the data of the
recipe, and the smoke recipe end to end into a release that loads and chats through a pipe."""
import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmlib import assistant as A
from lmlib import chat, dialogue
from lmlib.chat import CHAT_TOKENS, END
from lmlib.data import path as data_path
from lmlib.dialogue import reply_example
from lmlib.model import GPT, GPTConfig
from lmlib.recipes import EOT, save_release
from lmlib.tokenizers import ByteBPE

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("Hello! How are you? I am fine, thank you. What is the capital of France? Paris is the capital. "
        "She sold 48 clips in April and half as many in May, so she sold 72 clips. The answer is 72. "
        "Can you help me with my homework? Sure, what is the question? Thanks for asking.")


@pytest.fixture(scope="module")
def tok() -> ByteBPE:
    return ByteBPE.train(TEXT, 320, special_tokens=[EOT, *CHAT_TOKENS], progress=False)


def tiny(vocab: int, block: int = 128) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, n_embd=16))


def test_dpo_objective_trains_with_the_trainer(tok):
    prompt = [{"role": "user", "content": "How are you?"}]
    pairs = [(reply_example(tok, prompt, "I am fine, thank you."), reply_example(tok, prompt, "Go away.")),
             (reply_example(tok, [{"role": "user", "content": "Help me?"}], "Sure, what is the question?"),
              reply_example(tok, [{"role": "user", "content": "Help me?"}], "No."))]
    policy = tiny(tok.vocab_size)
    reference = copy.deepcopy(policy)
    frozen = {k: v.clone() for k, v in reference.state_dict().items()}
    pad = tok.special_tokens[END]
    recipe = dict(A.course_assistant("smoke"), dpo_steps=30, dpo_batch=2, dpo_lr=3e-3, dpo_beta=0.5)
    objective, history = A.preference_tune(policy, reference, pairs, pad, recipe, progress=False)
    assert history.train_loss[0] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as the reference
    assert history.train_loss[-1] < 0.5 and objective.log["accuracy"][-1] == 1.0
    assert len(objective.log["margin"]) == 30 and objective.log["margin"][-1] > 0
    assert all(torch.equal(frozen[k], v) for k, v in reference.state_dict().items())  # the reference never moves
    assert not any(p.requires_grad for p in reference.parameters())
    X, Y = A.dpo_batches(pairs, 3, pad)(torch.Generator().manual_seed(0))
    assert X.shape[0] == 6 and X.shape == Y.shape
    with pytest.raises(ValueError, match="two models"):
        A.DPO(policy, policy)
    with pytest.raises(ValueError, match="chosen rows then"):
        objective(X[:3], Y[:3])


def test_chat_box_streams_replies_without_a_frontend(tok):
    model = tiny(tok.vocab_size)
    box = A.ChatBox(model, tok, max_new_tokens=5, seed=1)
    answer = box.send("Hello!")
    assert box.messages == [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": answer}]
    shown = "".join(o["text"] for o in box.output.outputs)
    assert shown == f"you> Hello!\nassistant> {answer}\n"
    again = A.ChatBox(model, tok, max_new_tokens=5, seed=1).send("Hello!")
    assert again == answer  # the same seed, the same reply
    box.reset()
    assert box.messages == []
    bundle = box._repr_mimebundle_()
    assert "chat box runs in Jupyter" in bundle["text/html"] and "application/vnd.jupyter.widget-view+json" in bundle
    box.text.value = "  "  # a blank line sends nothing
    assert box.messages == []


def test_presets():
    for scale in ("smoke", "cpu", "full"):
        recipe = A.course_assistant(scale)
        assert recipe == A.COURSE_ASSISTANT[scale] and recipe is not A.COURSE_ASSISTANT[scale]
        assert recipe["dpo_beta"] > 0 and recipe["sft_steps"] >= recipe["eval_every"]
    assert A.course_assistant("full")["sft_steps"] > A.course_assistant("cpu")["sft_steps"]
    with pytest.raises(ValueError, match="scale must be one of"):
        A.course_assistant("huge")


def test_load_data_splits_by_conversation(mirror):
    recipe = A.course_assistant("smoke")
    data = A.load_data(recipe)
    assert {s: len(c) for s, c in data.train.items()} == {"hh-rlhf": 24, "self-instruct": 8, "gsm8k": 24}
    train_keys = {dialogue.conversation_key(c) for c in data.all_train()}
    assert not train_keys & {dialogue.conversation_key(c) for c in data.all_heldout()}
    assert len(data.heldout["gsm8k"]) + data.overlap == data.reports["gsm8k test"].kept > 1300
    assert data.rewrites["calculator calls"] > 0
    assert all(c["answer"] == dialogue.final_answer(c["messages"][1]["content"]) for c in data.heldout["gsm8k"])
    again = A.load_data(recipe)
    assert [c["id"] for c in again.all_train()] == [c["id"] for c in data.all_train()]


@pytest.fixture(scope="module")
def base_release(tmp_path_factory, tok):
    """A tiny stand-in for the course model: a release folder without chat tokens."""
    folder = tmp_path_factory.mktemp("base")
    base_tok = ByteBPE(tok.merges, [EOT], tok.pattern)
    save_release(tiny(base_tok.vocab_size, block=1024), base_tok, {}, {}, folder)
    return folder


def test_smoke_recipe_writes_a_release_that_chats(mirror, base_release, tmp_path):
    documents = [f"Document {d} starts here. " + " ".join(
        f"Sentence {s} of document {d} is about the item {d}x{s} and nothing else at all." for s in range(3))
        for d in range(8)]
    out = tmp_path / "assistant"
    log = A.train_course_assistant(A.course_assistant("smoke"), out, base=base_release, documents=documents,
                                   progress=False, command="test")
    assert [row["model"] for row in log["evals"]] == ["base", "SFT", "SFT + DPO"]
    assert log["sft"]["history"]["step"][-1] == 4 and log["dpo"]["history"]["step"][-1] == 2
    assert log["dpo"]["heldout_before"]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert [m["role"] for m in log["transcript"]] == ["user", "assistant"] * 3
    assert json.loads((out / "train_log.json").read_text())["table"] == log["table"]
    model, loaded, config = chat.load_assistant(out)
    assert list(loaded.special_tokens) == [EOT, *CHAT_TOKENS] and config["recipe"]["sft_steps"] == 4
    assert model.config.vocab_size == loaded.vocab_size
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "lmlib.chat", "--model", str(out), "--max-new-tokens", "5"],
                          input="Hello, how are you?\nWhat is 6 times 7?\n/quit\n", capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Chatting with") and done.stdout.count("assistant> ") == 2


def test_the_released_assistant_is_the_full_recipe():
    """The registered release (committed under models/) was made by the `full` recipe, loads as a
    chat model, and its log records what the page says fine-tuning does."""
    log = json.loads(data_path(chat.ASSISTANT_NAME, "train_log.json").read_text())
    full = json.loads(json.dumps(A.course_assistant("full")))
    assert log["recipe"] == full and log["command"] == A.RELEASE_COMMAND
    assert log["sft"]["history"]["step"][-1] == full["sft_steps"]
    assert log["dpo"]["history"]["step"][-1] == full["dpo_steps"]
    model, tok, _ = chat.load_assistant()
    assert list(tok.special_tokens) == [EOT, *CHAT_TOKENS] and model.config.vocab_size == tok.vocab_size
    base, sft, dpo = log["evals"]
    assert [base["model"], sft["model"], dpo["model"]] == ["base", "SFT", "SFT + DPO"]
    # SFT teaches the format: a lower held-out loss on assistant tokens, and turns that end
    assert sft["loss"] < base["loss"] and sft["adherence"] > base["adherence"]
    assert log["dpo"]["heldout_before"]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    # the default of `python -m lmlib.chat` is this release
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "lmlib.chat", "--max-new-tokens", "5"], input="Hello!\n/quit\n",
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("assistant> ") == 1
