"""lmlib.device: every branch of the device, precision and scale policies (capabilities simulated)."""
import pytest
import torch

from lmlib import device as dev
from lmlib import presets


@pytest.mark.parametrize(
    "capability, dtype, scaler",
    [((9, 0), torch.bfloat16, False), ((8, 0), torch.bfloat16, False), ((8, 6), torch.bfloat16, False),
     ((7, 5), torch.float16, True), ((7, 0), torch.float16, True), ((6, 1), torch.float16, True)],
)
def test_cuda_policy_follows_compute_capability(capability, dtype, scaler):
    policy = dev.choose_precision("cuda", capability)
    assert policy.dtype == dtype
    assert policy.grad_scaler is scaler


def test_t4_never_gets_bf16_even_if_torch_claims_support(monkeypatch):
    # torch.cuda.is_bf16_supported() can say True on a T4 (emulation); the policy ignores it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.choose_precision("cuda", (7, 5)).dtype == torch.float16


def test_mps_and_cpu_use_float32():
    for kind in ("mps", "cpu"):
        policy = dev.choose_precision(kind)
        assert policy.dtype == torch.float32 and not policy.grad_scaler
        with policy.autocast():  # a no-op context
            assert torch.ones(2).dtype == torch.float32


def test_requested_precision_overrides_and_is_validated():
    assert dev.choose_precision("cpu", request="bf16").dtype == torch.bfloat16
    assert dev.choose_precision("cuda", (7, 5), request="fp32").dtype == torch.float32
    with pytest.raises(ValueError, match="choose one of"):
        dev.choose_precision("cpu", request="fp8")
    with pytest.raises(ValueError, match="no bf16"):
        dev.choose_precision("cuda", (7, 5), request="bf16")


def test_cuda_policy_needs_a_capability():
    with pytest.raises(ValueError, match="compute capability"):
        dev.choose_precision("cuda")


def test_cpu_bf16_autocast_really_casts():
    policy = dev.choose_precision("cpu", request="bf16")
    with policy.autocast():
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    assert not policy.make_grad_scaler().is_enabled()


def test_best_device_on_this_machine(monkeypatch):
    monkeypatch.delenv("LMLIB_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if dev._mps_available() else "cpu")
    assert dev.best_device().type == expected


def test_best_device_order_is_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("LMLIB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.best_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.best_device().type == "mps"
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert dev.best_device().type == "cpu"


def test_device_requests(monkeypatch):
    monkeypatch.setenv("LMLIB_DEVICE", "cpu")
    assert dev.best_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="Unknown device 'tpu9'"):
        dev.best_device("tpu9")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
        dev.best_device("cuda")
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    with pytest.raises(RuntimeError, match="'mps' was requested"):
        dev.best_device("mps")


def test_scale_presets(monkeypatch):
    for name in presets.SCALES:
        monkeypatch.setenv("LMLIB_SCALE", name)
        assert presets.scale() == name
        assert presets.scaled(smoke=1, cpu=2, gpu=3) == {"smoke": 1, "cpu": 2, "gpu": 3}[name]
    monkeypatch.setenv("LMLIB_SCALE", "huge")
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        presets.scale()
    monkeypatch.delenv("LMLIB_SCALE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert presets.scale() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert presets.scale() == "gpu"


def test_seed_everything_reproduces():
    dev.seed_everything(3)
    a = torch.randn(5)
    g = dev.seed_everything(3)
    assert torch.equal(a, torch.randn(5))
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=torch.Generator().manual_seed(3)))


def test_report_names_device_precision_and_scale(capsys, monkeypatch):
    monkeypatch.setenv("LMLIB_DEVICE", "cpu")
    monkeypatch.setenv("LMLIB_SCALE", "smoke")
    assert dev.report() == torch.device("cpu")
    out = capsys.readouterr().out
    assert "device: cpu" in out and "precision: fp32" in out and "scale: smoke" in out


def test_peak_flops_table():
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    assert dev.peak_flops("NVIDIA H100 80GB HBM3", bf16) == pytest.approx(989.5e12)
    assert dev.peak_flops("NVIDIA H100 PCIe", bf16) == pytest.approx(756.5e12)
    assert dev.peak_flops("NVIDIA H200", bf16) == pytest.approx(989.5e12)
    assert dev.peak_flops("NVIDIA A100-SXM4-80GB", bf16) == pytest.approx(312e12)
    assert dev.peak_flops("NVIDIA A100-SXM4-80GB", fp32, tf32=True) == pytest.approx(156e12)
    assert dev.peak_flops("NVIDIA A100-SXM4-80GB", fp32) == pytest.approx(19.5e12)
    assert dev.peak_flops("NVIDIA A10G", bf16) == pytest.approx(125e12)
    assert dev.peak_flops("NVIDIA L4", bf16) == pytest.approx(121e12)
    assert dev.peak_flops("NVIDIA L40S", bf16) == pytest.approx(366.5e12)
    assert dev.peak_flops("Tesla T4", fp16) == pytest.approx(65e12)
    assert dev.peak_flops("Tesla T4", bf16) is None  # no bf16 tensor cores
    assert dev.peak_flops("Tesla V100-SXM2-16GB", fp16) == pytest.approx(125e12)
    assert dev.peak_flops("Tesla V100-PCIE-32GB", fp16) == pytest.approx(112e12)
    assert dev.peak_flops("NVIDIA GeForce RTX 4090", bf16) == pytest.approx(165.2e12)
    assert dev.peak_flops("NVIDIA GeForce RTX 4090 Laptop GPU", bf16) is None  # a different chip
    assert dev.peak_flops("NVIDIA GeForce RTX 3090", fp16) == pytest.approx(71e12)
    assert dev.peak_flops("Some Future GPU", bf16) is None


def test_runtime_decides_device_and_precision_once(monkeypatch):
    monkeypatch.delenv("LMLIB_PRECISION", raising=False)
    rt = dev.runtime("cpu")
    assert rt.device == torch.device("cpu") and rt.precision.dtype == torch.float32
    assert (rt.rank, rt.world_size, rt.is_main, rt.peak_flops) == (0, 1, True, None)
    assert dev.runtime("cpu", precision="bf16").precision.dtype == torch.bfloat16
    monkeypatch.setenv("LMLIB_PRECISION", "fp16")
    assert dev.runtime("cpu").precision.dtype == torch.float16  # the variable, when no argument
    with pytest.raises(ValueError, match="Unknown precision"):
        dev.runtime("cpu", precision="fp8")


def test_eval_mode_restores_the_old_mode():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    for mode in (True, False):
        model.train(mode)
        with dev.eval_mode(model):
            assert not model.training and not model[1].training
        assert model.training is mode and model[1].training is mode
    model.train()
    with pytest.raises(RuntimeError):
        with dev.eval_mode(model):
            raise RuntimeError("boom")
    assert model.training  # restored even when the body raises
    with dev.eval_mode(lambda ids: ids) as fn:  # a plain function passes through
        assert fn(3) == 3


def test_model_device():
    assert dev.model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert dev.model_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters at all
