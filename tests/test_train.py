"""lmlib.train: config checks, parameter grouping, schedule, MFU table, and the loop against a plain one."""
from __future__ import annotations

import math

import matplotlib
import pytest
import torch
from torch import nn

from lmlib import train as T

matplotlib.use("Agg")

V, D = 16, 32


class RMSNorm(nn.Module):
    """A hand-written norm: the grouping must recognise it by its name."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class TinyLM(nn.Module):
    """Embedding + residual MLP next-token model following the (logits, loss) convention."""

    def __init__(self, vocab: int = V, dim: int = D, dropout: float = 0.0, tied: bool = False):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(64, dim))  # a 2-D parameter outside any module: decayed
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.rms = RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, idx, targets=None):
        h = self.emb(idx) + self.pos[: idx.shape[1]]
        h = h + self.mlp(self.norm(h))
        logits = self.head(self.rms(h))
        return logits, (None if targets is None else T.lm_loss(logits, targets))


def tokens(n: int = 4000) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, V, (n,), generator=g)


def make(cfg: T.TrainConfig, seed: int = 0, **model_kw) -> T.Trainer:
    torch.manual_seed(seed)
    data = tokens()
    return T.Trainer(TinyLM(**model_kw), cfg, T.token_batches(data, 8, 4), T.token_batches(data, 8, 4))


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(max_steps=0), "max_steps"),
        (dict(max_steps=2.5), "max_steps"),
        (dict(warmup_steps=2000, max_steps=100), "warmup_steps"),
        (dict(min_lr=1.0, lr=1e-3), "min_lr"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(betas=(0.9,)), "betas"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(grad_clip=0.0), "grad_clip"),
        (dict(grad_accum_steps=0), "grad_accum_steps"),
        (dict(eval_every=0), "eval_every"),
        (dict(checkpoint_every=10), "checkpoint_dir"),
        (dict(precision="fp8"), "precision"),
        (dict(log_every=True), "log_every"),
        (dict(seed=-1), "seed"),
    ],
)
def test_config_rejects_bad_values_with_the_field_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        T.TrainConfig(**kwargs)


def test_config_defaults_and_plain_dict():
    cfg = T.TrainConfig(lr=1e-3, checkpoint_dir="/tmp/x", betas=[0.8, 0.9])
    assert cfg.min_lr == pytest.approx(1e-4)
    assert cfg.betas == (0.8, 0.9)
    d = cfg.as_dict()
    assert d["checkpoint_dir"] == "/tmp/x" and d["betas"] == [0.8, 0.9]


# ----------------------------------------------------------------------------- parameter groups
def test_no_decay_on_biases_norms_and_embeddings():
    model = TinyLM()
    decay, no_decay = T.param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert sorted(decay["names"]) == ["head.weight", "mlp.0.weight", "mlp.3.weight", "pos"]
    assert sorted(no_decay["names"]) == [
        "emb.weight", "mlp.0.bias", "mlp.3.bias", "norm.bias", "norm.weight", "rms.weight",
    ]
    # Every trainable parameter is in exactly one group.
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_tied_weight_counts_once_as_an_embedding():
    model = TinyLM(tied=True)
    decay, no_decay = T.param_groups(model, 0.1)
    assert "head.weight" not in decay["names"] + no_decay["names"]
    assert "emb.weight" in no_decay["names"]


def test_frozen_parameters_are_left_out_and_all_frozen_is_an_error():
    model = TinyLM()
    model.emb.weight.requires_grad_(False)
    assert "emb.weight" not in T.param_groups(model, 0.1)[1]["names"]
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        T.param_groups(model, 0.1)


def test_trainer_optimizer_uses_the_groups():
    tr = make(T.TrainConfig(max_steps=2, warmup_steps=0, progress=False, weight_decay=0.05))
    assert isinstance(tr.optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in tr.optimizer.param_groups] == [0.05, 0.0]


# ----------------------------------------------------------------------------- schedule
def test_warmup_then_cosine():
    lr, lo, warm, steps = 1.0, 0.1, 10, 111
    values = [T.lr_at(s, lr, lo, warm, steps) for s in range(steps)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(values[:10], values[1:10]))  # rising during warmup
    assert all(b <= a for a, b in zip(values[10:], values[11:]))  # falling after
    assert values[-1] == pytest.approx(lo)
    assert values[60] == pytest.approx(lo + 0.5 * (lr - lo))  # half-way through the cosine
    assert T.lr_at(500, lr, lo, warm, steps) == pytest.approx(lo)  # past the end: stays at min
    assert T.lr_at(0, lr, lo, 0, 1) == lr  # degenerate: a single step


def test_warmup_then_trapezoid():
    lr, lo, warm, steps = 1.0, 0.1, 10, 100
    values = [T.lr_at(s, lr, lo, warm, steps, schedule="trapezoid", cooldown_frac=0.4) for s in range(steps)]
    assert values[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # the same warmup
    assert values[10:60] == pytest.approx([lr] * 50)  # stable until the last 40% of the steps
    assert values[60:] == pytest.approx([lr + (lo - lr) * (s + 1) / 40 for s in range(40)])  # linear cool-down
    assert values[-1] == pytest.approx(lo)
    assert T.lr_at(500, lr, lo, warm, steps, schedule="trapezoid") == pytest.approx(lo)
    no_cooldown = [T.lr_at(s, lr, lo, 0, 20, schedule="trapezoid", cooldown_frac=0.0) for s in range(20)]
    assert no_cooldown == [lr] * 20
    with pytest.raises(ValueError, match="schedule"):
        T.TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="cooldown_frac"):
        T.TrainConfig(schedule="trapezoid", cooldown_frac=1.5)


def test_trainer_follows_the_trapezoid():
    cfg = T.TrainConfig(max_steps=12, warmup_steps=2, lr=1e-2, min_lr=1e-3, log_every=1, progress=False,
                        schedule="trapezoid", cooldown_frac=0.5)
    h = make(cfg).fit()
    assert h.lr == pytest.approx([T.lr_at(s, 1e-2, 1e-3, 2, 12, "trapezoid", 0.5) for s in range(12)])


def test_reschedule_moves_the_end_of_the_schedule_from_the_current_step():
    cfg = T.TrainConfig(max_steps=6, warmup_steps=2, lr=1e-2, min_lr=1e-3, log_every=1, progress=False,
                        schedule="trapezoid", cooldown_frac=0.5)
    trainer = make(cfg)
    trainer.fit()
    trainer.reschedule(20)  # the run turns out to have time for 20 steps
    cfg.max_steps = 20
    h = trainer.fit()
    expected = [T.lr_at(s, 1e-2, 1e-3, 2, 12 if s < 6 else 20, "trapezoid", 0.5) for s in range(20)]
    assert h.lr[6:] == pytest.approx(expected[6:]) and h.lr[:6] == pytest.approx(
        [T.lr_at(s, 1e-2, 1e-3, 2, 6, "trapezoid", 0.5) for s in range(6)])
    with pytest.raises(ValueError, match="warmup_steps"):
        trainer.reschedule(1)


def test_trainer_follows_the_schedule():
    cfg = T.TrainConfig(max_steps=12, warmup_steps=3, lr=1e-2, min_lr=1e-3, log_every=1, progress=False)
    h = make(cfg).fit()
    expected = [T.lr_at(s, 1e-2, 1e-3, 3, 12) for s in range(12)]
    assert h.lr == pytest.approx(expected)


# ----------------------------------------------------------------------------- MFU table
def test_cpu_reports_speed_but_no_mfu():
    h = make(T.TrainConfig(max_steps=4, warmup_steps=1, log_every=2, progress=False)).fit()
    assert h.step == [2, 4]
    assert all(s > 0 for s in h.tokens_per_s)
    assert h.mfu == [None, None]


# ----------------------------------------------------------------------------- the loop itself
def plain_loop(model, batches, cfg: T.TrainConfig, micro: int):
    """The textbook loop the trainer must reproduce: AdamW groups, schedule, accumulation, clipping."""
    groups = T.param_groups(model, cfg.weight_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    for step in range(cfg.max_steps):
        for g in opt.param_groups:
            g["lr"] = T.lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
        for _ in range(micro):
            x, y = next(batches)
            _, loss = model(x, y)
            (loss / micro).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad()
    return model


@pytest.mark.parametrize("accum", [1, 3])
def test_trainer_equals_a_plain_loop(accum):
    cfg = T.TrainConfig(max_steps=8, warmup_steps=2, lr=5e-3, grad_clip=0.05, grad_accum_steps=accum,
                        eval_every=None, progress=False)
    data = tokens()
    torch.manual_seed(0)
    tr = T.Trainer(TinyLM(), cfg, T.token_batches(data, 8, 4))
    tr.fit()
    torch.manual_seed(0)
    ref_model = TinyLM()
    gen = torch.Generator().manual_seed(T.data_seed(cfg.seed, 0))
    batches = iter(lambda: T.token_batches(data, 8, 4)(gen), None)
    plain_loop(ref_model, batches, cfg, accum)
    for (name, a), b in zip(tr.raw_model.state_dict().items(), ref_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} differs from the plain loop")


def test_accumulation_equals_one_big_batch():
    data = tokens()
    results = []
    for accum, batch in ((1, 8), (2, 4)):
        # Same windows either way: the big batch is the two small ones stacked.
        gen = torch.Generator().manual_seed(5)
        windows = [T.token_batches(data, 8, 4)(gen) for _ in range(12)]
        if accum == 1:
            windows = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(windows[::2], windows[1::2])]
        cfg = T.TrainConfig(max_steps=6, warmup_steps=1, lr=5e-3, grad_accum_steps=accum, eval_every=None, progress=False)
        torch.manual_seed(0)
        tr = T.Trainer(TinyLM(), cfg, windows)
        tr.fit()
        results.append(tr.raw_model.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)


def test_clipping_bounds_the_update():
    # With a tiny clip, Adam's first step still moves each weight by about lr (Adam normalises),
    # but the clipped gradient handed to the optimizer has norm <= grad_clip.
    cfg = T.TrainConfig(max_steps=1, warmup_steps=0, grad_clip=1e-3, progress=False, eval_every=None)
    tr = make(cfg)
    seen = []
    tr.optimizer.register_step_pre_hook(
        lambda opt, *a: seen.append(torch.norm(torch.stack([p.grad.norm() for g in opt.param_groups for p in g["params"]])))
    )
    tr.fit()
    assert seen[0] <= 1e-3 * (1 + 1e-4)


def test_training_learns_a_pattern_and_plots():
    data = torch.arange(3000) % V  # a deterministic cycle: loss must fall towards 0
    cfg = T.TrainConfig(max_steps=40, warmup_steps=5, lr=1e-2, eval_every=20, eval_steps=2, log_every=10, progress=False)
    torch.manual_seed(0)
    tr = T.Trainer(TinyLM(), cfg, T.token_batches(data, 8, 8), T.token_batches(data, 8, 8))
    h = tr.fit()
    assert h.train_loss[0] > 1.0 and h.train_loss[-1] < 0.1
    assert h.val_step == [20, 40] and h.val_loss[-1] < 0.1
    assert tr.evaluate() == pytest.approx(h.val_loss[-1])  # the same validation batches each time
    axes = T.plot_history(h)
    assert len(axes[0].lines) == 2 and len(axes[1].lines) == 1


def test_fit_again_after_the_end_does_nothing():
    tr = make(T.TrainConfig(max_steps=3, warmup_steps=0, progress=False, eval_every=None))
    tr.fit()
    before = {k: v.clone() for k, v in tr.raw_model.state_dict().items()}
    tr.fit()
    assert tr.step == 3
    assert all(torch.equal(before[k], v) for k, v in tr.raw_model.state_dict().items())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_override_runs_on_cpu(precision):
    cfg = T.TrainConfig(max_steps=3, warmup_steps=0, precision=precision, progress=False, eval_every=None, log_every=1)
    tr = make(cfg)
    assert tr.precision.name == precision
    assert tr.scaler.is_enabled() == (precision == "fp16")
    h = tr.fit()
    assert all(math.isfinite(v) for v in h.train_loss)


# ----------------------------------------------------------------------------- bad input
def test_model_with_the_wrong_output_convention():
    class LogitsOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, V)

        def forward(self, idx, targets=None):
            return self.emb(idx)

    tr = T.Trainer(LogitsOnly(), T.TrainConfig(max_steps=1, warmup_steps=0, progress=False), T.token_batches(tokens(), 8, 2))
    with pytest.raises(TypeError, match=r"\(logits, loss\)"):
        tr.fit()


def test_bad_batches_and_arguments():
    cfg = T.TrainConfig(max_steps=2, warmup_steps=0, progress=False)
    with pytest.raises(TypeError, match="nn.Module"):
        T.Trainer("model", cfg, T.token_batches(tokens(), 8, 2))
    with pytest.raises(TypeError, match="TrainConfig"):
        T.Trainer(TinyLM(), {"lr": 1}, T.token_batches(tokens(), 8, 2))
    with pytest.raises(TypeError, match="train_batches"):
        T.Trainer(TinyLM(), cfg, 42)
    tr = T.Trainer(TinyLM(), cfg, lambda g: torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(TypeError, match=r"\(x, y\) pairs"):
        tr.fit()
    short = [(torch.zeros(2, 8, dtype=torch.long), torch.zeros(2, 8, dtype=torch.long))]
    with pytest.raises(RuntimeError, match="ran out"):
        T.Trainer(TinyLM(), cfg, short).fit()
    with pytest.raises(ValueError, match="val_batches"):
        T.Trainer(TinyLM(), cfg, short).evaluate()
    with pytest.raises(ValueError, match="block_size"):
        T.token_batches(torch.arange(5), 8, 2)
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        T.lm_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_mfu_uses_the_peak_and_flops_per_token():
    tr = make(T.TrainConfig(max_steps=2, warmup_steps=0, log_every=1, progress=False, eval_every=None))
    assert tr.flops_per_token == 6 * sum(p.numel() for p in tr.raw_model.parameters())
    tr._peak = 1e9  # pretend to be a GPU with a 1 GFLOP/s peak
    h = tr.fit()
    for speed, mfu in zip(h.tokens_per_s, h.mfu):
        assert mfu == pytest.approx(tr.flops_per_token * speed / 1e9)


def test_second_ctrl_c_stops_at_once_and_the_handler_is_restored():
    import os
    import signal

    data = T.token_batches(tokens(), 8, 4)

    def twice(gen):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return data(gen)

    before = signal.getsignal(signal.SIGINT)
    tr = make(T.TrainConfig(max_steps=3, warmup_steps=0, progress=False, eval_every=None))
    tr.train_batches = twice
    with pytest.raises(KeyboardInterrupt):
        tr.fit()
    assert signal.getsignal(signal.SIGINT) is before


def test_compile_option_wraps_the_model(monkeypatch):
    # Real compilation takes ~30 s on a small CPU (benchmarks/train_char_gpt.py compiles for real
    # in its Trainer + compile rows); here we check the wiring: the training and evaluation models are compiled.
    compiled = []

    def fake_compile(module, **kwargs):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    tr = make(T.TrainConfig(max_steps=2, warmup_steps=0, compile=True, progress=False, eval_every=None))
    assert compiled == [tr.raw_model, tr.raw_model]
    tr.fit()


def test_gpt_compiles_to_one_graph_and_the_trainer_still_checks_token_ids(monkeypatch):
    # Reading idx.min() inside the forward pass would split a compiled graph in two at every step.
    from lmlib.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=16))
    x = torch.randint(V, (2, 8))
    explained = torch._dynamo.explain(model)(x, x)
    assert explained.graph_break_count == 0, explained.break_reasons
    # Inside a compiled graph the model skips the range check (an id == V would reach the
    # embedding as an IndexError, or a device-side assert on CUDA): the trainer checks each batch first.
    class AsIfCompiled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            with pytest.MonkeyPatch.context() as tracing:
                tracing.setattr(torch.compiler, "is_compiling", lambda: True)
                return self.inner(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: AsIfCompiled(module))
    bad = x.clone()
    bad[0, 0] = V
    with pytest.raises(IndexError):
        AsIfCompiled(model)(bad, bad)
    cfg = T.TrainConfig(max_steps=1, warmup_steps=0, compile=True, progress=False, eval_every=None)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 16\)"):
        T.Trainer(model, cfg, lambda g: (bad, bad)).fit()
