"""lmlib.dialogue (chapter 5, the assistant): conversations from HH-RLHF, Self-Instruct and GSM8K,
malformed rows counted, the held-out split by conversation, and fitting to the context."""
import gzip
import json
from collections import Counter

import pytest
import torch

import lmlib.data
from lmlib import dialogue as D
from lmlib.chat import CHAT_TOKENS, END, calculate, chat_example, encode_chat
from lmlib.data import IGNORE_INDEX
from lmlib.recipes import EOT
from lmlib.tokenizers import ByteBPE

TEXT = ("Hello! How are you? I am fine, thank you. What is the capital of France? Paris is the capital. "
        "She sold 48 clips in April and half as many in May. The answer is 72.")


@pytest.fixture(scope="module")
def tok() -> ByteBPE:
    return ByteBPE.train(TEXT, 300, special_tokens=[EOT, *CHAT_TOKENS], progress=False)


def test_hh_messages_parses_turns_and_names_what_is_wrong():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: A joke?\n\nAssistant:  Knock knock. "
    assert D.hh_messages(text) == [
        {"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "A joke?"}, {"role": "assistant", "content": "Knock knock."}]
    assert D.hh_messages("\n\nHuman: Human: is a word here")[0]["content"] == "Human: is a word here"
    for bad, why in [("Preamble\n\nHuman: hi", "text before"), ("\n\nHuman: hi\n\nAssistant: ", "empty assistant"),
                     ("\n\nHuman: a\n\nHuman: b", "same speaker"), ("\n\nAssistant: hi", "open with the human"),
                     ("no markers at all", "text before"), ("", "no Human/Assistant")]:
        with pytest.raises(ValueError, match=why):
            D.hh_messages(bad)


def write_gz(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")


def test_load_hh_rlhf_counts_every_malformed_row(tmp_path, monkeypatch):
    good = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
    rows = [
        good,
        "{not json",
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Yes", "rejected": "\n\nHuman: Other\n\nAssistant: No"},  # prompts differ
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Same", "rejected": "\n\nHuman: Hi\n\nAssistant: Same"},
        {"chosen": "\n\nHuman: a\n\nHuman: b\n\nAssistant: c", "rejected": "\n\nHuman: a\n\nHuman: b\n\nAssistant: d"},
        {"chosen": "\n\nHuman: Hi\n\nAssistant: ", "rejected": "\n\nHuman: Hi\n\nAssistant: No"},
        {"chosen": "", "rejected": "x"},
        {"chosen": "\n\nHuman: Q\n\nAssistant: A\n\nHuman: Q2\n\nAssistant: A2",
         "rejected": "\n\nHuman: Q\n\nAssistant: A\n\nHuman: Q2\n\nAssistant: B2"},
    ]
    file = tmp_path / "test.jsonl.gz"
    write_gz(file, rows)
    monkeypatch.setattr(lmlib.data, "path", lambda name, file_=None, **kw: file)
    conversations, report = D.load_hh_rlhf()
    assert [c["rejected"] for c in conversations] == ["Go away.", "B2"]
    assert conversations[1]["messages"][-1] == {"role": "assistant", "content": "A2"}
    assert report.lines == len(rows) and report.kept == 2 and report.n_rejected == len(rows) - 2
    reasons = " | ".join(report.rejected)
    for why in ("not valid JSON", "do not share", "identical", "same speaker", "missing or empty 'chosen'"):
        assert why in reasons, reasons
    assert D.preference_pair(conversations[1]) == (conversations[1]["messages"][:-1], "A2", "B2")
    with pytest.raises(ValueError, match="no rejected reply"):
        D.preference_pair({"id": "x", "messages": []})


def test_gsm8k_solution_keeps_calls_as_the_tool_writes_them():
    answer = ("Half of 48 is 48/2 = <<48/2=24.0>>24 clips.\nIn all <<48+24=72>>72.\nOdd <<3 apples=3>>3 and "
              "<<10/3=3.33>>3.33.\n#### 1,072")
    counts = Counter()
    text = D.gsm8k_solution(answer, counts)
    assert text == ("Half of 48 is 48/2 = <<48/2=24>>24 clips.\nIn all <<48+24=72>>72.\nOdd 3 and "
                    "<<10/3=3.3333>>3.33.\nThe answer is 1072.")
    assert counts == Counter({"calculator calls": 3, "calculator results rewritten": 2,
                              "annotations the calculator cannot compute, removed": 1})
    for call in D.TOOL_CALL.finditer(text):  # every call is what the tool would write
        assert calculate(call.group(1)) == call.group(2)
    assert D.final_answer(text) == "1072"
    with pytest.raises(ValueError, match="no '####'"):
        D.gsm8k_solution("no final line")
    conversations, rewrites = D.gsm8k_conversations([{"question": " Q? ", "answer": answer}], "test")
    assert conversations[0]["answer"] == "1072" and conversations[0]["id"] == "gsm8k-test-0"
    assert conversations[0]["messages"][0] == {"role": "user", "content": "Q?"} and rewrites == counts


@pytest.mark.parametrize("text, number", [
    ("so 5 + 3 = 8. The answer is 8.", "8"), ("The answer is 3. No wait, The answer is $1,200.50.", "1200.5"),
    ("The answer is -4", "-4"), ("#### 72", None), ("The answer is unknown.", None), ("", None)])
def test_final_answer(text, number):
    assert D.final_answer(text) == number


def test_self_instruct_conversations():
    rows = [{"instruction": "Add them. ", "input": " 2 and 3 ", "output": " 5 "},
            {"instruction": "Say hi.", "input": "", "output": "Hi!"}]
    a, b = D.self_instruct_conversations(rows)
    assert a["messages"] == [{"role": "user", "content": "Add them.\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert b["messages"][0]["content"] == "Say hi." and b["source"] == "self-instruct"


def conv(i, first):
    return {"id": f"c{i}", "source": "test", "messages": [{"role": "user", "content": first},
                                                          {"role": "assistant", "content": "ok"}]}


def test_split_heldout_is_by_conversation_seeded_and_without_overlap():
    convs = [conv(i, f"Question number {i % 150}?") for i in range(600)]  # each opening appears 4 times
    convs.append(conv(999, "  QUESTION   number 7? "))  # the same opening, spelled differently
    train, held = D.split_heldout(convs, 0.2, seed=3)
    assert len(train) + len(held) == len(convs) and 0.1 < len(held) / len(convs) < 0.3
    assert not {D.conversation_key(c) for c in train} & {D.conversation_key(c) for c in held}
    assert not {c["id"] for c in train} & {c["id"] for c in held}
    again = D.split_heldout(list(reversed(convs)), 0.2, seed=3)[1]
    assert sorted(c["id"] for c in again) == sorted(c["id"] for c in held)  # order does not matter
    assert {c["id"] for c in D.split_heldout(convs, 0.2, seed=4)[1]} != {c["id"] for c in held}
    kept, dropped = D.drop_overlap(held + train[:5], map(D.conversation_key, train))
    assert kept == held and dropped == 5
    with pytest.raises(ValueError, match="fraction"):
        D.split_heldout(convs, 1.5)


def test_fit_to_context_cuts_at_turn_boundaries(tok):
    messages = [{"role": "user", "content": "Hello! How are you?"}, {"role": "assistant", "content": "I am fine."},
                {"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris is the capital of France, thank you."}]
    full = len(encode_chat(tok, messages)) - 1
    first = len(encode_chat(tok, messages[:2])) - 1
    assert D.fit_to_context(tok, messages, full) == (messages, "whole")
    assert D.fit_to_context(tok, messages, full - 1) == (messages[:2], "cut")
    assert D.fit_to_context(tok, messages, first) == (messages[:2], "cut")
    assert D.fit_to_context(tok, messages, first - 1) == (None, "dropped")
    examples, counts = D.conversation_examples(tok, [{"messages": messages}] * 2 + [{"messages": messages[:2]}], full - 1)
    assert counts == Counter({"cut": 2, "whole": 1}) and all(len(x) <= full - 1 for x, _ in examples)


def test_reply_example_learns_only_the_last_reply(tok):
    prompt = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."},
              {"role": "user", "content": "How are you?"}]
    x, y = D.reply_example(tok, prompt, "I am fine.")
    assert tok.decode(y[y != IGNORE_INDEX]) == "I am fine." + END
    x_all, y_all = chat_example(tok, [*prompt, {"role": "assistant", "content": "I am fine."}])
    assert torch.equal(x, x_all) and tok.decode(y_all[y_all != IGNORE_INDEX]) == "Hi." + END + "I am fine." + END
    assert D.reply_example(tok, prompt, "I am fine.", max_len=5) is None
    pairs, counts = D.pair_examples(tok, [(prompt, "I am fine.", "Go away."), (prompt, "x" * 400, "no")], len(x) - 1)
    assert counts == Counter({"cut": 1, "dropped": 1})
    chosen, rejected = pairs[0]
    assert tok.decode(chosen[1][chosen[1] != IGNORE_INDEX]) == "I am fine." + END
    assert tok.decode(rejected[0]).startswith("<|user|>How are you?")  # the first exchange was left out


def test_the_real_sources(mirror):
    hh, report = D.load_hh_rlhf()
    assert report.kept == len(hh) > 2000 and report.kept + report.n_rejected == report.lines == 2354
    assert all(c["messages"][-1]["role"] == "assistant" and c["rejected"] for c in hh)
    assert len({c["id"] for c in hh}) == len(hh)
    train, held = D.split_heldout(hh, 0.1)
    assert not {D.conversation_key(c) for c in train} & {D.conversation_key(c) for c in held}
