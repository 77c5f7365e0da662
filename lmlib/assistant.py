"""The course assistant: the course model taught to chat (SFT), then tuned on preferences (DPO).

Derived in chapter 5 ("Applications", the assistant notebook), which runs each step in the open;
:func:`train_course_assistant` runs the same steps in one go and writes a release folder that
:func:`lmlib.chat.load_assistant` loads and ``python -m lmlib.chat --model FOLDER`` chats with.

1. Data (:func:`load_data`): HH-RLHF helpful-base, the Self-Instruct seed tasks and GSM8K as
   conversations (:mod:`lmlib.dialogue`), split by conversation into training and held-out sets.
2. SFT (:func:`finetune`): :class:`lmlib.train.Trainer` on the mixture, loss on the assistant's
   turns only, conversations too long for the context cut at a turn boundary.
3. DPO (:func:`preference_tune`): the objective as a module, :class:`DPO`, whose forward pass
   takes a batch of chosen replies followed by the rejected ones and returns DPO's loss, so the
   same Trainer runs it; the reference is a frozen copy of the SFT model.
4. Evaluation (:func:`eval_set`, :mod:`lmlib.evals`) of the base, SFT and DPO models.

The recipe fine-tunes every weight rather than a LoRA adapter: the model has 2.2M parameters,
so a full copy and its optimizer state cost nothing worth saving, and the new chat tokens need
trained embedding rows, which LoRA on the linear layers would leave at their initial mean.

API summary
-----------
AssistantData(train, heldout, reports, rewrites, overlap)   sources -> conversations, reports
    .all_train() -> list  .all_heldout() -> list
load_data(recipe) -> AssistantData             loaded, parsed, split by conversation, sampled
eval_set(data, recipe, documents) -> lmlib.evals.EvalSet   held-out sets; multiple choice from ``documents``
finetune(model, examples, pad_id, recipe, val_examples=None, progress=True) -> History   SFT
DPO(policy, reference, beta=0.1)               forward(x, targets) -> (policy logits, DPO loss)
    x holds 2B rows: B chosen replies, then their B rejected ones; .log per training batch: margin, accuracy
dpo_batches(pairs, batch_size, pad_id) -> batch_fn for lmlib.train.Trainer
preference_tune(policy, reference, pairs, pad_id, recipe, progress=True) -> (DPO, History)
transcript(model, tok, user_turns, temperature=0.7, max_new_tokens=120, seed=0) -> messages
COURSE_ASSISTANT                               the presets: smoke, cpu, full (the release)
course_assistant(scale=None) -> dict           a copy of one preset (default: the scale in force)
RELEASE_COMMAND                                the command that makes the release
ASSISTANT_RELEASE                              its registry metadata, for lmlib.recipes.registry_entry
train_course_assistant(recipe, out_dir, base=None, documents=None, progress=True, command=None) -> log
ChatBox(model, tok, temperature=0.7, max_new_tokens=120, seed=0)   a chat in the notebook (ipywidgets)
    .send(message) -> str  .reset()  .widget  .messages
main(argv=None)                                ``python -m lmlib.assistant --scale full --out FOLDER [--base FOLDER]``
"""
from __future__ import annotations

import argparse
import copy
import html
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lmlib.chat import ASSISTANT_NAME, CHAT_TOKENS, END, load_assistant, reply
from lmlib.data import random_batches
from lmlib.device import eval_mode
from lmlib.dialogue import (conversation_examples, conversation_key, drop_overlap, gsm8k_conversations, load_hh_rlhf,
                            pair_examples, preference_pair, self_instruct_conversations, split_heldout)
from lmlib.evals import EvalSet, cloze_items, dpo_diagnostics, evaluate, markdown_table, preference_accuracy
from lmlib.generate import lm_logits, target_logprobs
from lmlib.instruct import dpo_loss, load_gsm8k, load_self_instruct, pad_examples, sequence_logprob, sft_batches
from lmlib.model import GPT
from lmlib.presets import recipe_for
from lmlib.recipes import course_heldout, load_course_gpt, save_release
from lmlib.tokenizers import ByteBPE
from lmlib.train import History, TrainConfig, Trainer

try:
    import ipywidgets as W
except ImportError:  # pragma: no cover - ipywidgets is a course dependency
    W = None

Tensor = torch.Tensor
Example = tuple[Tensor, Tensor]

__all__ = [
    "AssistantData", "load_data", "eval_set", "finetune", "DPO", "dpo_batches", "preference_tune", "transcript",
    "COURSE_ASSISTANT", "course_assistant", "RELEASE_COMMAND", "ASSISTANT_RELEASE", "train_course_assistant", "ChatBox", "main",
]

SOURCES = ("hh-rlhf", "self-instruct", "gsm8k")


# --- data -----------------------------------------------------------------------------------------

@dataclass
class AssistantData:
    """Conversations by source (``train`` and ``heldout``), the loaders' reports, the rewrites made
    to GSM8K's solutions, and how many held-out GSM8K problems were left out as training questions."""

    train: dict[str, list]
    heldout: dict[str, list]
    reports: dict
    rewrites: Counter
    overlap: int

    def all_train(self) -> list:
        """Every training conversation, source after source."""
        return [c for source in self.train.values() for c in source]

    def all_heldout(self) -> list:
        """Every held-out conversation, source after source."""
        return [c for source in self.heldout.values() for c in source]


def _sample(items: list, n: int | None, rng: random.Random) -> list:
    return list(items) if n is None or n >= len(items) else rng.sample(items, n)


def load_data(recipe: dict) -> AssistantData:
    """The three sources as conversations, split by conversation (:func:`lmlib.dialogue.split_heldout`
    with the recipe's ``heldout`` share and ``seed``), the training sets sampled to the recipe's
    sizes (``hh``, ``self_instruct``, ``gsm8k``; None keeps all). GSM8K's held-out problems are its
    test split, less any question that is also a training question."""
    rng = random.Random(recipe["seed"])
    hh, hh_report = load_hh_rlhf()
    si_rows, si_report = load_self_instruct()
    gsm_rows, gsm_report = load_gsm8k("train")
    test_rows, test_report = load_gsm8k("test")
    hh_train, hh_held = split_heldout(hh, recipe["heldout"], recipe["seed"])
    si_train, si_held = split_heldout(self_instruct_conversations(si_rows), recipe["heldout"], recipe["seed"])
    gsm_train, rewrites = gsm8k_conversations(_sample(gsm_rows, recipe["gsm8k"], rng), "train")
    gsm_held, overlap = drop_overlap(gsm8k_conversations(test_rows, "test")[0], map(conversation_key, gsm_train))
    train = {"hh-rlhf": _sample(hh_train, recipe["hh"], rng), "self-instruct": _sample(si_train, recipe["self_instruct"], rng),
             "gsm8k": gsm_train}
    return AssistantData(train=train, heldout={"hh-rlhf": hh_held, "self-instruct": si_held, "gsm8k": gsm_held},
                         reports={"hh-rlhf": hh_report, "self-instruct": si_report, "gsm8k train": gsm_report,
                                  "gsm8k test": test_report}, rewrites=rewrites, overlap=overlap)


def eval_set(data: AssistantData, recipe: dict, documents: Sequence[str]) -> EvalSet:
    """The held-out sets of :func:`lmlib.evals.evaluate`, the first items of each held-out source:
    ``eval_conversations`` per source for the loss, ``eval_pairs`` HH-RLHF pairs (None: all),
    ``eval_prompts`` user messages per chat source, ``eval_problems`` GSM8K problems, and
    ``eval_choices`` multiple-choice items from ``documents`` (:func:`lmlib.evals.cloze_items`)."""
    held, n = data.heldout, recipe["eval_conversations"]
    return EvalSet(conversations=[c for s in SOURCES for c in held[s][:n]],
                   pairs=held["hh-rlhf"][: recipe["eval_pairs"]],
                   prompts=held["hh-rlhf"][: recipe["eval_prompts"]] + held["self-instruct"][: recipe["eval_prompts"]],
                   problems=held["gsm8k"][: recipe["eval_problems"]],
                   choices=cloze_items(documents, recipe["eval_choices"], 4, recipe["seed"]),
                   reply_tokens=recipe["reply_tokens"], answer_tokens=recipe["answer_tokens"])


# --- supervised fine-tuning -----------------------------------------------------------------------

def _config(recipe: dict, stage: str, eval_every: int | None, progress: bool) -> TrainConfig:
    return TrainConfig(max_steps=recipe[f"{stage}_steps"], lr=recipe[f"{stage}_lr"], weight_decay=recipe["weight_decay"],
                       grad_clip=recipe["grad_clip"], eval_every=eval_every, eval_steps=recipe["eval_batches"],
                       seed=recipe["seed"], progress=progress)


def finetune(model: nn.Module, examples: Sequence[Example], pad_id: int, recipe: dict,
             val_examples: Sequence[Example] | None = None, progress: bool = True) -> History:
    """Supervised fine-tuning of every weight of ``model`` on ``examples`` (from
    :func:`lmlib.dialogue.conversation_examples`): ``sft_steps`` AdamW steps of ``sft_batch``
    random examples at a peak learning rate of ``sft_lr`` (warmup, then cosine to a tenth), with
    the held-out loss of ``val_examples`` every ``eval_every`` steps."""
    val = sft_batches(val_examples, recipe["sft_batch"], pad_id) if val_examples else None
    config = _config(recipe, "sft", recipe["eval_every"] if val else None, progress)
    return Trainer(model, config, sft_batches(examples, recipe["sft_batch"], pad_id), val).fit()


# --- direct preference optimisation ---------------------------------------------------------------

class DPO(nn.Module):
    """DPO's objective as a model the course's Trainer can train: ``forward(x, targets) -> (logits, loss)``.

    A batch holds ``2B`` rows: the ``B`` chosen replies, then the ``B`` rejected ones in the same
    order, with targets only on each reply (:func:`lmlib.dialogue.reply_example`). The forward
    pass scores every row under the policy and, without gradients, under the frozen reference,
    and returns :func:`lmlib.instruct.dpo_loss`. Only the policy's weights train. ``log`` keeps
    the mean reward margin and the share of pairs ranked right of every training batch.
    """

    def __init__(self, policy: nn.Module, reference: nn.Module, beta: float = 0.1):
        super().__init__()
        if not beta > 0:
            raise ValueError(f"beta must be positive, got {beta!r}.")
        if policy is reference:
            raise ValueError("policy and reference must be two models: pass a frozen copy as the reference.")
        self.policy, self.reference, self.beta = policy, reference, beta
        self.reference.requires_grad_(False)
        self.config = policy.config
        self.log: dict[str, list[float]] = {"margin": [], "accuracy": []}

    def forward(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[0] % 2:
            raise ValueError(f"a DPO batch holds chosen rows then as many rejected rows; got {x.shape[0]} rows.")
        logits = lm_logits(self.policy, x)
        logp = target_logprobs(logits, targets).sum(dim=1)
        with torch.no_grad(), eval_mode(self.reference):
            ref = sequence_logprob(self.reference, x, targets)
        n = x.shape[0] // 2
        loss, margin = dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], self.beta)
        if self.training:
            self.log["margin"].append(float(margin.mean()))
            self.log["accuracy"].append(float((margin > 0).float().mean()))
        return logits, loss


def dpo_batches(pairs: Sequence[tuple[Example, Example]], batch_size: int,
                pad_id: int) -> Callable[[torch.Generator], tuple[Tensor, Tensor]]:
    """A batch function for :class:`DPO`: ``batch_size`` random pairs, chosen rows first, padded together."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("dpo_batches needs at least one (chosen, rejected) pair.")
    return random_batches(len(pairs), batch_size, lambda rows: pad_examples(
        [pairs[i][0] for i in rows] + [pairs[i][1] for i in rows], pad_id))


def preference_tune(policy: nn.Module, reference: nn.Module, pairs: Sequence[tuple[Example, Example]], pad_id: int,
                    recipe: dict, progress: bool = True) -> tuple[DPO, History]:
    """DPO on ``pairs`` (:func:`lmlib.dialogue.pair_examples`): ``dpo_steps`` steps of ``dpo_batch``
    pairs at a peak learning rate of ``dpo_lr``, strength ``dpo_beta``; ``policy`` is trained in place."""
    objective = DPO(policy, reference, recipe["dpo_beta"])
    trainer = Trainer(objective, _config(recipe, "dpo", None, progress), dpo_batches(pairs, recipe["dpo_batch"], pad_id))
    return objective, trainer.fit()


def transcript(model: nn.Module, tok: ByteBPE, user_turns: Sequence[str], temperature: float = 0.7,
               max_new_tokens: int = 120, seed: int = 0) -> list[dict]:
    """A chat with ``model``: each user turn, then its reply (:func:`lmlib.chat.reply`, calculator on),
    sampled with one generator seeded with ``seed``, so the same model gives the same transcript."""
    generator, messages = torch.Generator().manual_seed(seed), []
    for turn in user_turns:
        messages.append({"role": "user", "content": turn})
        messages.append({"role": "assistant", "content": reply(model, tok, messages, max_new_tokens, temperature,
                                                                generator=generator)})
    return messages


# --- the recipe -----------------------------------------------------------------------------------

#: The user turns of the sample chat written into the training log (and shown in the notebook).
TRANSCRIPT = ("Hi! Can you help me plan a picnic?",
              "Tom has 3 boxes with 12 apples in each box. How many apples does he have?",
              "Thank you. What should I do on a rainy day?")
_COMMON = dict(seed=0, heldout=0.1, weight_decay=0.0, grad_clip=1.0, dpo_beta=0.1, transcript=TRANSCRIPT)

#: The presets of :func:`course_assistant`. Sizes: ``hh``, ``self_instruct`` and ``gsm8k`` are the
#: training conversations per source (None: all), ``dpo_pairs`` the HH-RLHF training conversations
#: used as DPO pairs; the ``eval_*`` sizes are those of :func:`eval_set`. ``full`` makes the released
#: assistant: all the training data, 1200 SFT steps (about 2.5 passes over the 7,640 examples) and 120
#: DPO steps. The SFT length is measured, not guessed: a 3000-step run of the same recipe on 2 CPU
#: cores reached its lowest held-out loss near step 1000 (2.87 nats per assistant token) and rose
#: to 2.93 by step 3000 while its training loss fell to 1.22, so longer SFT only memorised the
#: training conversations. DPO gets about one pass over its 1,965 training pairs: after 400 steps
#: (3.3 passes) the training loss was 0.35 but the held-out DPO loss had risen from 0.693 to 0.717,
#: held-out preference accuracy stayed at chance (48.9%), and the share of replies that end their
#: turn fell from 90% to 31%. ``cpu`` keeps the notebook within minutes: a fifth of GSM8K, 300 SFT
#: steps and 60 DPO steps.
COURSE_ASSISTANT = {
    "smoke": dict(**_COMMON, hh=24, self_instruct=8, gsm8k=24, sft_steps=4, sft_batch=4, sft_lr=1e-3, eval_every=2,
                  eval_batches=1, dpo_pairs=16, dpo_steps=2, dpo_batch=2, dpo_lr=1e-4, eval_conversations=3,
                  eval_pairs=4, eval_prompts=1, eval_problems=2, eval_choices=4, reply_tokens=8, answer_tokens=8),
    "cpu": dict(**_COMMON, hh=None, self_instruct=None, gsm8k=1500, sft_steps=120, sft_batch=16, sft_lr=1e-3,
                eval_every=40, eval_batches=4, dpo_pairs=None, dpo_steps=60, dpo_batch=8, dpo_lr=1e-4,
                eval_conversations=50, eval_pairs=120, eval_prompts=8, eval_problems=8, eval_choices=150,
                reply_tokens=128, answer_tokens=160),
    "full": dict(**_COMMON, hh=None, self_instruct=None, gsm8k=None, sft_steps=1200, sft_batch=16, sft_lr=1e-3,
                 eval_every=200, eval_batches=10, dpo_pairs=None, dpo_steps=120, dpo_batch=16, dpo_lr=5e-5,
                 eval_conversations=200, eval_pairs=None, eval_prompts=40, eval_problems=100, eval_choices=400,
                 reply_tokens=160, answer_tokens=200),
}

#: The command that makes the released assistant (written into its training log).
RELEASE_COMMAND = f"python -m lmlib.assistant --scale full --out models/{ASSISTANT_NAME}"
#: What the registry says about the released assistant (:func:`lmlib.recipes.registry_entry` writes it).
ASSISTANT_RELEASE = dict(
    name=ASSISTANT_NAME,
    title="The course assistant: the course model fine-tuned to chat (SFT) and on preferences (DPO) (chapter 5)",
    licence=("Weights: MIT, like the course code; trained on Wikipedia (CC BY-SA 3.0), HH-RLHF (MIT), the "
             "Self-Instruct seed tasks (Apache-2.0) and GSM8K (MIT)"),
    citation=f"The course's own release, made by lmlib.assistant ({RELEASE_COMMAND})",
)


def course_assistant(scale: str | None = None) -> dict:
    """The assistant recipe for ``scale`` (``smoke``/``cpu``/``full``; default: the preset in force,
    where the ``gpu`` preset means ``full``). A copy."""
    return recipe_for(COURSE_ASSISTANT, scale)


def _base(base: str | Path | None) -> tuple[GPT, ByteBPE]:
    model, tok, _ = load_assistant(base) if base is not None else load_course_gpt(special_tokens=CHAT_TOKENS)
    return model, tok


def train_course_assistant(recipe: dict, out_dir: str | Path, base: str | Path | None = None,
                           documents: Sequence[str] | None = None, progress: bool = True,
                           command: str | None = None) -> dict:
    """Fine-tune the course model into the assistant and write a release folder; returns the log.

    ``base`` is a release folder to start from (default: the released course model, with the
    chat tokens added); ``documents`` the texts of the multiple-choice test (default: the course
    model's held-out Wikipedia documents, :func:`lmlib.recipes.course_heldout`). ``out_dir``
    receives the files of :func:`lmlib.recipes.save_release` (fp16 weights, the tokenizer with
    its chat tokens, config, and ``train_log.json`` with the data counts, both training curves,
    the DPO diagnostics, the evaluation table of the base, SFT and DPO models, and a sample chat).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base_model, tok = _base(base)
    block, pad = base_model.config.block_size, tok.special_tokens[END]
    data = load_data(recipe)
    evalset = eval_set(data, recipe, course_heldout() if documents is None else documents)
    examples, fit = [], {}
    for source, conversations in data.train.items():
        found, fit[source] = conversation_examples(tok, conversations, block)
        examples += found
    val_examples = evalset.prepared(tok, block)["examples"]

    sft = copy.deepcopy(base_model)
    sft_history = finetune(sft, examples, pad, recipe, val_examples, progress)
    sft.eval()
    hh_train = data.train["hh-rlhf"]
    if recipe["dpo_pairs"] is not None:
        hh_train = hh_train[: recipe["dpo_pairs"]]
    pairs, pair_fit = pair_examples(tok, [preference_pair(c) for c in hh_train], block)
    held_pairs = evalset.prepared(tok, block)["pairs"]
    reference, policy = copy.deepcopy(sft), copy.deepcopy(sft)
    before = dpo_diagnostics(policy, reference, held_pairs, pad, recipe["dpo_beta"])
    before["accuracy"] = preference_accuracy(policy, held_pairs, pad)
    objective, dpo_history = preference_tune(policy, reference, pairs, pad, recipe, progress)
    policy.eval()
    after = dpo_diagnostics(policy, reference, held_pairs, pad, recipe["dpo_beta"])
    after["accuracy"] = preference_accuracy(policy, held_pairs, pad)

    rows = [evaluate(name, model, tok, evalset, progress)
            for name, model in (("base", base_model), ("SFT", sft), ("SFT + DPO", policy))]
    log = dict(
        name=ASSISTANT_NAME, recipe=recipe, command=command or RELEASE_COMMAND, base=str(base) if base else "course-gpt",
        data=dict(train={s: len(c) for s, c in data.train.items()}, heldout={s: len(c) for s, c in data.heldout.items()},
                  rejected_rows={name: r.n_rejected for name, r in data.reports.items()},
                  gsm8k_rewrites=dict(data.rewrites), overlap_dropped=data.overlap),
        sft=dict(examples=len(examples), fit={s: dict(c) for s, c in fit.items()}, history=sft_history.as_dict()),
        dpo=dict(pairs=len(pairs), fit=dict(pair_fit), history=dpo_history.as_dict(), batches=objective.log,
                 heldout_pairs=len(held_pairs), heldout_before=before, heldout_after=after),
        evals=rows, table=markdown_table(rows),
        transcript=transcript(policy, tok, recipe["transcript"], seed=recipe["seed"]),
        params=policy.num_params(), seconds=time.perf_counter() - started,
    )
    save_release(policy.cpu(), tok, recipe, log, out_dir)
    return log


# --- a chat box for the notebooks -----------------------------------------------------------------

class ChatBox:
    """A chat in a notebook: a text field (Enter sends), the conversation above it, streamed as it is
    written, and a button that starts over. :meth:`send` is the same step without the widget.

    A page built without a running kernel cannot call the model; there the box shows a short note
    instead (its ``text/html``), and the notebook's static transcript stands in for it.
    """

    def __init__(self, model: nn.Module, tok: ByteBPE, temperature: float = 0.7, max_new_tokens: int = 120,
                 seed: int = 0):
        if W is None:
            raise ImportError("The chat box needs ipywidgets: pip install ipywidgets (Colab has it).")
        self.model, self.tok = model, tok
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.messages: list[dict] = []
        self.output = W.Output(layout=W.Layout(border="1px solid #ccc", min_height="6em", padding="4px"))
        self.text = W.Text(placeholder="Type a message and press Enter", continuous_update=False,
                           layout=W.Layout(width="70%"))
        self.text.observe(self._submitted, names="value")
        restart = W.Button(description="New chat")
        restart.on_click(lambda _: self.reset())
        self.widget = W.VBox([self.output, W.HBox([self.text, restart])])

    def _submitted(self, change: dict) -> None:
        message = change["new"].strip()
        if message:
            self.text.value = ""
            self.send(message)

    def send(self, message: str) -> str:
        """Add the user's ``message``, stream the reply into the box, and return it."""
        self.messages.append({"role": "user", "content": message})
        self.output.append_stdout(f"you> {message}\nassistant> ")
        answer = reply(self.model, self.tok, self.messages, self.max_new_tokens, self.temperature,
                       on_token=self.output.append_stdout, generator=self.generator)
        self.output.append_stdout("\n")
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def reset(self) -> None:
        """Forget the conversation and clear the box."""
        self.messages.clear()
        self.output.clear_output()

    def _repr_mimebundle_(self, **kwargs) -> dict:
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["text/html"] = ("<p><em>" + html.escape("The chat box runs in Jupyter or Colab, where the model can "
                                                      "answer; this page shows the transcript above instead.")
                               + "</em></p>")
        return bundle


def main(argv: list[str] | None = None) -> None:
    """``python -m lmlib.assistant --scale full --out models/course-assistant`` trains and writes a release."""
    parser = argparse.ArgumentParser(prog="python -m lmlib.assistant", description=main.__doc__)
    parser.add_argument("--scale", choices=sorted(COURSE_ASSISTANT), default="full")
    parser.add_argument("--out", required=True, help="release folder to write")
    parser.add_argument("--base", help="release folder of the model to start from (default: the course model)")
    args = parser.parse_args(argv)
    command = f"python -m lmlib.assistant --scale {args.scale} --out {args.out}" + (
        f" --base {args.base}" if args.base else "")
    log = train_course_assistant(course_assistant(args.scale), args.out, base=args.base, command=command)
    print(log["table"])
    print(f"{log['seconds'] / 60:.1f} minutes; chat with it: python -m lmlib.chat --model {args.out}")


if __name__ == "__main__":
    main()
