"""Model suite I: GAN, AE, DAE, VAE, VQ-VAE, VQ-VAE-2 and its PixelCNN prior — shapes,
gradients, one step lowers the loss, save -> load round trip, tiny sampling, prior causality."""
import dataclasses

import pytest
import torch

from dalle2_fast.models.categorical import sample_categorical
from dalle2_fast.models.pixelcnn import CausalSelfAttention, convert_v1_state_dict
from dalle2_fast.models import (GAN, VAE, VQVAE, VQVAE2, AEConfig, AutoEncoder, DAEConfig, DenoisingAutoEncoder,
                                GANConfig, PixelCNN, PixelCNNConfig, VAEConfig, VQVAE2Config, VQVAE2Generator,
                                VQVAEConfig)

R = 16  # tiny resolution keeps every test fast


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, R, R, generator=g) * 2 - 1  # fresh random images, never zeros


AUTOENCODERS = {
    "ae": lambda: AutoEncoder(AEConfig(resolution=R, channels=16)),
    "ae_vector": lambda: AutoEncoder(AEConfig(resolution=R, channels=16, z_dim=8)),  # vector bottleneck path
    "dae_gauss": lambda: DenoisingAutoEncoder(DAEConfig(resolution=R, channels=16, corruption="gaussian")),
    "dae_mask": lambda: DenoisingAutoEncoder(DAEConfig(resolution=R, channels=16, corruption="mask", mask_patch=3)),
    "vae": lambda: VAE(VAEConfig(resolution=R, channels=16, z_dim=8)),
    "vae_spatial": lambda: VAE(VAEConfig(resolution=R, channels=16, z_dim=0)),  # spatial latent path
    "vqvae": lambda: VQVAE(VQVAEConfig(resolution=R, channels=16, num_codes=32, code_dim=8)),
    "vqvae_noema": lambda: VQVAE(VQVAEConfig(resolution=R, channels=16, num_codes=32, code_dim=8, ema=False)),
    "vqvae2": lambda: VQVAE2(VQVAE2Config(resolution=R, channels=16, num_codes=32, code_dim=8)),
}


def _loss(model, x, seed=123):
    torch.manual_seed(seed)  # same corruption / reparameterisation noise before and after the step
    return model(x).loss


@pytest.mark.parametrize("name", sorted(AUTOENCODERS))
def test_autoencoder_shapes_grads_and_one_step(name):
    torch.manual_seed(0)
    model = AUTOENCODERS[name]()
    x = _batch()
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), "every parameter gets a finite gradient"
    assert sum(g.abs().sum() for g in grads) > 0
    # one Adam step lowers the loss on this fixed batch (eval mode for VQ: no EMA drift in the comparison)
    model.zero_grad()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = _loss(model, x)
    before.backward()
    opt.step()
    assert _loss(model, x).item() < before.item()
    assert model.reconstruct(x).shape == x.shape


@pytest.mark.parametrize("name", sorted(AUTOENCODERS))
def test_autoencoder_save_load_identical(name, tmp_path):
    torch.manual_seed(1)
    model = AUTOENCODERS[name]()
    model(_batch())  # a training forward: moves EMA / init buffers away from their initial values
    model.eval()
    model.save_pretrained(tmp_path / "ck")
    back = type(model).from_pretrained(tmp_path / "ck").eval()
    x = _batch(seed=5)
    assert torch.equal(model.reconstruct(x), back.reconstruct(x))
    assert back.config == model.config


def test_dae_corruptions_differ_from_input_and_are_off_in_eval():
    x = _batch()
    for corr in ("gaussian", "mask"):
        m = DenoisingAutoEncoder(DAEConfig(resolution=R, channels=16, corruption=corr, mask_prob=0.5))
        c = m.corrupt(x)
        assert c.shape == x.shape and not torch.equal(c, x)
        if corr == "mask":  # masked patches are exactly zero, kept ones exactly x
            assert ((c == 0) | (c == x)).all()
    with pytest.raises(ValueError, match="corruption"):
        DenoisingAutoEncoder(DAEConfig(resolution=R, corruption="blur"))


def test_vae_kl_and_sampling():
    torch.manual_seed(0)
    m = VAE(VAEConfig(resolution=R, channels=16, z_dim=8, beta=4.0))
    out = m(_batch())
    assert out.kl.item() > 0
    s = m.sample(3, generator=torch.Generator().manual_seed(0))
    assert s.shape == (3, 3, R, R) and s.abs().max() <= 1
    s2 = m.sample(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, s2)  # sampling is deterministic by generator


def test_vq_models_use_codes_and_decode_indices():
    torch.manual_seed(0)
    m = VQVAE(VQVAEConfig(resolution=R, channels=16, num_codes=32, code_dim=8))
    m(_batch(8))  # data-dependent codebook init on the first training batch
    assert bool(m.quantizer.initialised)
    m.eval()
    idx = m.encode(_batch())
    assert idx.shape == (4, R // 4, R // 4) and idx.dtype == torch.long
    assert m.decode_indices(idx).shape == (4, 3, R, R)
    m2 = VQVAE2(VQVAE2Config(resolution=R, channels=16, num_codes=32, code_dim=8)).eval()
    t, b = m2.encode(_batch())
    assert t.shape == (4, R // 8, R // 8) and b.shape == (4, R // 4, R // 4)
    assert m2.decode_indices(t, b).shape == (4, 3, R, R)


@pytest.mark.parametrize("loss,d_norm", [("ns", "batch"), ("hinge", "spectral"), ("ns", "none")])
def test_gan_shapes_steps_and_round_trip(loss, d_norm, tmp_path):
    torch.manual_seed(0)
    gan = GAN(GANConfig(resolution=R, z_dim=8, g_width=8, d_width=8, loss=loss, d_norm=d_norm))
    real = _batch(6)
    z = gan.noise(6)
    fake = gan.generator(z)
    assert fake.shape == real.shape and fake.abs().max() <= 1
    assert gan.discriminator(real).shape == (6,)
    gan.eval()  # BatchNorm in eval: D's output on a batch does not depend on the other batch
    opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=1e-3)
    d0 = gan.d_loss(gan.discriminator(real), gan.discriminator(fake.detach()))
    d0.backward()
    opt_d.step()
    d1 = gan.d_loss(gan.discriminator(real), gan.discriminator(fake.detach()))
    assert d1.item() < d0.item()
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=1e-3)
    g0 = gan.g_loss(gan.discriminator(gan.generator(z)))
    g0.backward()
    opt_g.step()
    assert gan.g_loss(gan.discriminator(gan.generator(z))).item() < g0.item()
    gan.save_pretrained(tmp_path / "gan")
    back = GAN.from_pretrained(tmp_path / "gan").eval()
    assert torch.equal(gan.generator(z), back.generator(z))
    assert torch.equal(gan.discriminator(real), back.discriminator(real))
    assert gan.sample(2, generator=torch.Generator().manual_seed(3)).shape == (2, 3, R, R)


def test_gan_rejects_bad_config():
    with pytest.raises(ValueError, match="resolution"):
        GAN(GANConfig(resolution=24))
    with pytest.raises(ValueError, match="loss"):
        GAN(GANConfig(loss="wgan"))
    with pytest.raises(ValueError, match="d_norm"):
        GAN(GANConfig(d_norm="layer"))


PIXELCNN = {
    # kernel 5 + code-map conditioning (the bottom prior); 10 x 4 is non-square on purpose
    "bottom": PixelCNNConfig(num_codes=11, height=10, width=4, channels=16, n_layers=4, kernel=5,
                             cond_codes=7, cond_up=1, label="class", num_classes=30),
    # attention in the top prior; odd 6 x 5 map
    "top_attn": PixelCNNConfig(num_codes=11, height=6, width=5, channels=16, n_layers=4, attention_every=2,
                               label="caption", vocab_size=20),
    "uncond": PixelCNNConfig(num_codes=5, height=3, width=3, channels=8, n_layers=2, label="none", heads=2),
}


def _pixel_inputs(cfg, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.num_codes, (n, cfg.height, cfg.width), generator=g)
    label = {"class": torch.randint(0, 30, (n,), generator=g),
             "caption": torch.randint(1, 20, (n, 7), generator=g), "none": None}[cfg.label]
    cond = torch.randint(0, cfg.cond_codes, (n, cfg.height >> cfg.cond_up, cfg.width >> cfg.cond_up),
                         generator=g) if cfg.cond_codes else None
    return x, label, cond


def _rows(t, sl):
    return None if t is None else t[sl]


@pytest.mark.parametrize("name", sorted(PIXELCNN))
def test_pixelcnn_is_causal(name):
    """Changing code k changes no logit at positions <= k (raster order) and some logit after."""
    torch.manual_seed(0)
    cfg = PIXELCNN[name]
    m = PixelCNN(cfg).eval()
    x, label, cond = _pixel_inputs(cfg)
    base = m(x, label, cond)
    assert base.shape == (2, cfg.num_codes, cfg.height, cfg.width)
    n = cfg.height * cfg.width
    for k in (0, n // 2, n - 2):
        x2 = x.clone()
        x2.view(2, -1)[:, k] = (x2.view(2, -1)[:, k] + 1) % cfg.num_codes
        d = (m(x2, label, cond) - base).abs().amax(1).flatten(1)  # (B, HW)
        assert (d[:, : k + 1] == 0).all(), f"position <= {k} saw code {k}"
        assert d[:, k + 1 :].max() > 0, f"no position after {k} sees code {k}"


@pytest.mark.parametrize("name", ["bottom", "uncond"])
def test_pixelcnn_fast_row_path_matches_full_forward(name):
    torch.manual_seed(0)
    cfg = PIXELCNN[name]
    m = PixelCNN(cfg).eval()
    x, label, cond = _pixel_inputs(cfg)
    full = m(x, label, cond)
    conds = m.conditioning(2, label, cond)
    for i in range(cfg.height):  # rows past the receptive-field band exercise the cropping
        fast, _ = m.row_logits_fast(x, i, conds)
        torch.testing.assert_close(fast, full[:, :, i], rtol=1e-5, atol=1e-5)


def test_pixelcnn_row_cropped_forward_matches_full_with_attention():
    """The attention prior samples row i from a forward over rows <= i only: must be exact."""
    torch.manual_seed(0)
    cfg = PIXELCNN["top_attn"]
    m = PixelCNN(cfg).eval()
    x, label, cond = _pixel_inputs(cfg)
    full = m(x, label, cond)
    conds = m.conditioning(2, label, cond)
    for i in range(cfg.height):
        torch.testing.assert_close(m._forward_rows(x[:, : i + 1], conds)[:, :, i], full[:, :, i],
                                   rtol=1e-5, atol=1e-5)


class OldCausalSelfAttention(torch.nn.Module):
    """The v1 attention layer (1x1 conv qkv/proj, ops-free float64 causal softmax): the layout
    ``pixelcnn.convert_v1_state_dict`` converts from."""

    def __init__(self, C, heads):
        super().__init__()
        self.heads = heads
        self.norm = torch.nn.LayerNorm(C)
        self.qkv = torch.nn.Conv2d(C, 3 * C, 1)
        self.proj = torch.nn.Conv2d(C, C, 1)

    def forward(self, h):
        B, C, H, W = h.shape
        hn = self.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        q, k, v = self.qkv(hn).view(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        s = (q.double() @ k.double().transpose(-1, -2)) / (C // self.heads) ** 0.5
        s = s.masked_fill(~torch.ones(H * W, H * W, dtype=torch.bool).tril(), float("-inf"))
        o = (s.softmax(-1) @ v.double()).float()
        return h + self.proj(o.transpose(-1, -2).reshape(B, C, H, W))


def test_pixelcnn_v1_attention_converts_to_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    old = OldCausalSelfAttention(16, 4)
    with torch.no_grad():
        for p in old.parameters():
            p.normal_(0, 0.3)  # LayerNorm too, so a dropped tensor shows
    new = CausalSelfAttention(16, 4)
    state = convert_v1_state_dict({f"attn.3.{k}": v for k, v in old.state_dict().items()})
    new.load_state_dict({k[len("attn.3."):]: v for k, v in state.items()}, strict=True)
    h = torch.randn(2, 16, 3, 5)  # 15 positions in raster order
    torch.testing.assert_close(new(h), old(h), rtol=1e-5, atol=1e-5)
    # the hook is wired: a whole v1 file of the attention prior loads into the current class
    cfg = PIXELCNN["top_attn"]
    m = PixelCNN(cfg).eval()
    path = m.save_pretrained(tmp_path / "p.safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    v1 = {}
    for k, v in load_file(str(path)).items():  # back to the v1 names and conv shapes
        if ".attn.to_qkv." in k or ".attn.to_out." in k:
            k = k.replace(".attn.to_qkv.", ".qkv.").replace(".attn.to_out.", ".proj.")
            v = v[:, :, None, None] if v.dim() == 2 else v
        v1[k] = v
    save_file(v1, str(path), metadata=meta)
    x, label, cond = _pixel_inputs(cfg)
    torch.testing.assert_close(PixelCNN.from_pretrained(path).eval()(x, label, cond), m(x, label, cond))


def test_sample_categorical_follows_the_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, -30.0, 0.5, 1.0, -1.0]]).expand(40000, -1)
    u = torch.rand(40000, generator=g)
    idx = sample_categorical(logits, u)
    freq = torch.bincount(idx, minlength=5).float() / 40000
    torch.testing.assert_close(freq, torch.softmax(logits[0], -1), atol=0.01, rtol=0)
    assert int((idx == 1).sum()) == 0  # a ~1e-14 probability is never drawn
    hot = sample_categorical(logits[:3], torch.tensor([0.0, 0.5, 0.9999999]), temperature=1e-3)
    assert hot.tolist() == [0, 0, 0]  # temperature -> 0 is the argmax, whatever u
    edge = sample_categorical(torch.tensor([[-1000.0, 0.0, 0.0]]), torch.tensor([0.0]))  # exp underflows to 0
    assert edge.tolist() == [1]  # u = 0 picks the first category with mass, not a zero-mass one


@pytest.mark.parametrize("name", sorted(PIXELCNN))
def test_pixelcnn_step_lowers_loss_sampling_and_round_trip(name, tmp_path):
    torch.manual_seed(0)
    cfg = PIXELCNN[name]
    m = PixelCNN(cfg)
    x, label, cond = _pixel_inputs(cfg, n=4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    l0 = m.loss(x, label, cond)
    l0.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    opt.step()
    assert m.loss(x, label, cond).item() < l0.item()
    m.eval()
    seeds = [3, 1, 4, 1_000_000_007]
    s = m.sample(4, label, cond, seeds=seeds)
    assert s.shape == (4, cfg.height, cfg.width) and s.dtype == torch.long
    assert 0 <= s.min() and s.max() < cfg.num_codes
    # map i depends only on seeds[i]: the same maps drawn two at a time, in another order
    part = m.sample(2, _rows(label, [3, 0]), _rows(cond, [3, 0]), seeds=[seeds[3], seeds[0]])
    assert torch.equal(part, s[[3, 0]])
    gen = m.sample(4, label, cond, generator=torch.Generator().manual_seed(1))  # one stream for the batch
    assert torch.equal(gen, m.sample(4, label, cond, generator=torch.Generator().manual_seed(1)))
    m.save_pretrained(tmp_path / "p.safetensors")  # the single-file checkpoint form
    back = PixelCNN.from_pretrained(tmp_path / "p.safetensors").eval()
    assert torch.equal(m(x, label, cond), back(x, label, cond))
    assert torch.equal(s, back.sample(4, label, cond, seeds=seeds))
    with pytest.raises(ValueError, match="4 seeds"):
        m.sample(4, label, cond, seeds=[1, 2])
    with pytest.raises(ValueError, match="seeds or generator"):
        m.sample(4, label, cond, seeds=seeds, generator=torch.Generator())


def test_pixelcnn_errors_name_the_argument():
    m = PixelCNN(PIXELCNN["bottom"])
    x, label, cond = _pixel_inputs(PIXELCNN["bottom"])
    with pytest.raises(ValueError, match="needs a label"):
        m(x, None, cond)
    with pytest.raises(ValueError, match="cond must be a code map"):
        m(x, label, None)
    with pytest.raises(ValueError, match="codes must be int64"):
        m(x.float(), label, cond)
    with pytest.raises(ValueError, match="kernel"):
        PixelCNN(PixelCNNConfig(kernel=4))
    with pytest.raises(ValueError, match="num_classes must be given"):
        PixelCNN(PixelCNNConfig(label="class"))
    with pytest.raises(ValueError, match="vocab_size must be given"):
        PixelCNN(PixelCNNConfig(label="caption"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.config.channels = 8


def test_vqvae2_generator_samples_and_round_trips(tmp_path):
    torch.manual_seed(0)
    vq = VQVAE2(VQVAE2Config(resolution=R, channels=16, num_codes=16, code_dim=8))
    vq(_batch(8))
    gen = VQVAE2Generator.from_vqvae(vq, channels=16, n_layers=2, attention_every=2, num_classes=30).eval()
    assert torch.equal(gen.vqvae.quant_b.embedding, vq.quant_b.embedding)
    terms = gen.loss({"image": _batch(4), "label": torch.tensor([0, 1, 2, 3])})
    assert set(terms) == {"loss", "top_nll", "bottom_nll"}
    assert torch.isclose(terms["loss"], terms["top_nll"] + terms["bottom_nll"])
    top, bottom = gen.vqvae.encode(_batch(4))
    torch.testing.assert_close(terms["top_nll"], gen.top_prior.loss(top, torch.tensor([0, 1, 2, 3])))
    with pytest.raises(ValueError, match="needs 'label'"):
        gen.loss({"image": _batch(4)})
    labels = torch.tensor([0, 7, 29])
    imgs = gen.sample(3, labels, seeds=[10, 11, 12])
    assert imgs.shape == (3, 3, R, R)
    torch.testing.assert_close(gen.sample(1, labels[2:], seeds=[12]), imgs[2:])  # image i: seeds[i] only
    gen.save_pretrained(tmp_path / "g")
    back = VQVAE2Generator.from_pretrained(tmp_path / "g").eval()
    assert back.config == gen.config  # nested dataclass configs survive JSON
    assert torch.equal(imgs, back.sample(3, labels, seeds=[10, 11, 12]))
    g_imgs = gen.sample(3, labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g_imgs, back.sample(3, labels, generator=torch.Generator().manual_seed(0)))


def test_vqvae_large_codebook():
    """The largest codebook the issue names (8192 x 768) runs through nearest_code in chunks."""
    torch.manual_seed(0)
    m = VQVAE(VQVAEConfig(resolution=R, channels=16, num_codes=8192, code_dim=768))
    out = m(_batch(2))
    assert out.indices.shape == (2, R // 4, R // 4) and int(out.indices.max()) < 8192
    out.loss.backward()
