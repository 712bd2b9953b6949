"""The hand-written backward pass against central finite differences and PyTorch autograd."""

from __future__ import annotations

import numpy as np
import pytest

from mugpt.model import GPT, ModelConfig

torch = pytest.importorskip("torch", reason="install torch==2.13.0 (the CI installs it)")


def _case(cfg: ModelConfig, b: int = 2, t: int = 7, seed: int = 1):
    rng = np.random.default_rng(seed)
    model = GPT(cfg)
    # perturb the unit RMSNorm gains so their gradients are exercised away from 1
    for name in model.params:
        if name.endswith(("ln1", "ln2", "ln_f")):
            model.params[name][...] += rng.normal(0, 0.1, size=model.params[name].shape)
    idx = rng.integers(0, 257, size=(b, t))
    idx[:, 0] = 256
    targets = rng.integers(0, 256, size=(b, t))
    weights = (rng.random((b, t)) > 0.2).astype(np.float64)
    weights[0, -1] = 1.0
    return model, idx, targets, weights


def _loss(model: GPT, idx, targets, weights) -> float:
    acts = model.forward(idx)
    w = weights / weights.sum()
    picked = acts.probs[np.arange(idx.shape[0])[:, None], np.arange(idx.shape[1]), targets]
    return float(-(w * np.log(picked)).sum())


CONFIGS = {
    "two-layer-relu": ModelConfig(
        n_layers=2, d_model=8, n_heads=2, d_ff=12, context=8, dtype="float64", init_std=0.3
    ),
    "two-layer-gelu-tied": ModelConfig(
        n_layers=2,
        d_model=8,
        n_heads=4,
        d_ff=16,
        context=8,
        activation="gelu",
        tied_head=True,
        dtype="float64",
        init_std=0.3,
    ),
    "silu": ModelConfig(
        n_layers=1,
        d_model=6,
        n_heads=3,
        d_ff=10,
        context=8,
        activation="silu",
        dtype="float64",
        init_std=0.3,
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_backward_matches_central_finite_differences(name: str) -> None:
    cfg = CONFIGS[name]
    model, idx, targets, weights = _case(cfg)
    grads = model.params.like()
    acts = model.forward(idx)
    loss = model.backward(acts, targets, weights, grads)
    assert loss == pytest.approx(_loss(model, idx, targets, weights), rel=1e-12)

    eps = 1e-6
    flat = model.params.flat
    rng = np.random.default_rng(0)
    for pname in model.params:
        view_offset = model.params.offsets[pname]
        size = model.params[pname].size
        # every entry of small tensors, a random sample of 40 for the large ones
        picks = np.arange(size) if size <= 64 else rng.choice(size, 40, replace=False)
        numeric = np.empty(len(picks))
        for j, i in enumerate(picks):
            old = flat[view_offset + i]
            flat[view_offset + i] = old + eps
            up = _loss(model, idx, targets, weights)
            flat[view_offset + i] = old - eps
            down = _loss(model, idx, targets, weights)
            flat[view_offset + i] = old
            numeric[j] = (up - down) / (2 * eps)
        analytic = grads.flat[view_offset + picks]
        # the tolerance reached: max |analytic − numeric| ≤ 1e-7 relative to the tensor's scale
        scale = max(np.abs(numeric).max(), 1e-3)
        assert np.abs(analytic - numeric).max() / scale < 1e-7, pname


def _torch_loss(cfg: ModelConfig, params: dict, idx, targets, weights):
    """The same architecture written with torch ops, independent of our layer code."""
    x = params["wte"][idx] + params["wpe"][: idx.shape[1]]
    b, t, c = x.shape
    h, d = cfg.n_heads, cfg.head_dim
    act = {
        "relu": torch.relu,
        "gelu": lambda a: torch.nn.functional.gelu(a, approximate="tanh"),
        "silu": torch.nn.functional.silu,
    }[cfg.activation]

    def rms(z, g):
        return z * torch.rsqrt((z * z).mean(-1, keepdim=True) + 1e-5) * g

    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    for layer in range(cfg.n_layers):
        p = f"h{layer}."
        qkv = rms(x, params[p + "ln1"]) @ params[p + "attn.w_qkv"]
        q, k, v = qkv.view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
        s = (q @ k.transpose(-1, -2)) / d**0.5
        a = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1) @ v
        x = x + a.transpose(1, 2).reshape(b, t, c) @ params[p + "attn.w_o"]
        x = x + act(rms(x, params[p + "ln2"]) @ params[p + "mlp.w_in"]) @ params[p + "mlp.w_out"]
    head = params["wte"].T if cfg.tied_head else params["lm_head"]
    logits = rms(x, params["ln_f"]) @ head
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 257), targets.reshape(-1), reduction="none"
    ).view(b, t)
    return (nll * weights).sum() / weights.sum()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_backward_matches_pytorch_autograd(name: str) -> None:
    cfg = CONFIGS[name]
    model, idx, targets, weights = _case(cfg, b=3, t=8, seed=2)
    grads = model.params.like()
    loss = model.backward(model.forward(idx), targets, weights, grads)

    tparams = {n: torch.tensor(model.params[n], requires_grad=True) for n in model.params}
    tloss = _torch_loss(
        cfg, tparams, torch.tensor(idx), torch.tensor(targets), torch.tensor(weights)
    )
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-10)
    for n in model.params:
        np.testing.assert_allclose(
            grads[n], tparams[n].grad.numpy(), rtol=1e-8, atol=1e-10, err_msg=n
        )


def test_seed_config_float32_gradients_agree_with_float64() -> None:
    cfg64 = ModelConfig(dtype="float64")
    cfg32 = ModelConfig(dtype="float32")
    m64, idx, targets, weights = _case(cfg64, b=1, t=32)
    m32 = GPT(cfg32)
    m32.params.flat[:] = m64.params.flat
    g64, g32 = m64.params.like(), m32.params.like()
    m64.backward(m64.forward(idx), targets, weights, g64)
    m32.backward(m32.forward(idx), targets, weights, g32)
    assert g32.flat.dtype == np.float32
    np.testing.assert_allclose(g32.flat, g64.flat, atol=2e-5)
