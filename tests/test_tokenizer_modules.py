"""Waveform autoencoder tokenizer: front-end, encoders, bottlenecks, decoder, losses,
discriminators, the Tokenizer API and its pretrained-folder format, and the shipped configs."""

import itertools
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from lodit.config import from_dict, load_yaml
from lodit.errors import ConfigError, LoditError
from lodit.latent_tokenizer.blocks import DepthwiseConv1d
from lodit.latent_tokenizer.bottleneck import BottleneckConfig, build_bottleneck, gaussian_kl
from lodit.latent_tokenizer.decoder import DecoderConfig
from lodit.latent_tokenizer.discriminators import DiscriminatorConfig, Discriminators
from lodit.latent_tokenizer.encoder import EncoderConfig
from lodit.latent_tokenizer.frontend import LogMel
from lodit.latent_tokenizer.losses import (
    FrameLevelLoss,
    MultiResolutionMelLoss,
    MultiResolutionSTFTLoss,
    TokenizerLoss,
    TokenizerLossConfig,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from lodit.latent_tokenizer.tokenizer import ENCODERS, Tokenizer, TokenizerConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "tokenizer"
SR = 16000
HOP = 640


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def tiny_config(latent_dim=16, encoder="mel_convnext", bottleneck="noise_norm", upsample=2, **bottleneck_options):
    return TokenizerConfig(
        sample_rate=SR,
        latent_rate=25.0,
        latent_dim=latent_dim,
        encoder=EncoderConfig(
            name=encoder,
            n_mels=32,
            n_fft=512,
            mel_hop=160,
            dim=16,
            intermediate_dim=32,
            depth=1,
            post_depth=1,
            channels=4,
            max_channels=16,
            strides=[4, 4, 5, 8],
            dilations=[1],
        ),
        bottleneck=BottleneckConfig(name=bottleneck, **bottleneck_options),
        decoder=DecoderConfig(
            dim=16,
            intermediate_dim=32,
            depth=1,
            upsample=upsample,
            hop_length=HOP // upsample,
            n_fft=4 * HOP // upsample,
        ),
    )


def chord(seconds=1.0, freqs=(220.0, 277.18, 329.63)):
    t = torch.arange(int(seconds * SR)) / SR
    return sum(0.2 * torch.sin(2 * math.pi * f * t) for f in freqs)[None, None]  # (1, 1, S)


# ----------------------------------------------------------------------------- front-end


def test_log_mel_shape_and_floor():
    mel = LogMel(SR, n_fft=512, hop_length=160, n_mels=40)
    out = mel(torch.zeros(2, 1, 1600))
    assert out.shape == (2, 40, 1600 // 160 + 1)
    assert torch.allclose(out, torch.full_like(out, math.log(1e-5)))  # silence sits on the floor
    tone = mel(chord())
    assert tone.max() > math.log(1e-5) + 5


def test_mel_encoder_feeds_the_standardised_log_mel_to_its_first_layer():
    cfg = tiny_config()
    cfg.encoder.mel_mean, cfg.encoder.mel_std = -6.0, 2.5
    encoder = ENCODERS.get("mel_convnext")(cfg.encoder, sample_rate=cfg.sample_rate, hop_length=cfg.hop_length,
                                            latent_dim=cfg.latent_dim)
    seen = []
    encoder.embed.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    wav = chord(seconds=0.64)  # 16 latent frames -> 64 mel frames at hop 160
    encoder(wav)
    expected = (encoder.mel_input.log_mel(wav)[..., :64] + 6.0) / 2.5
    torch.testing.assert_close(seen[0], expected)
    with pytest.raises(ValueError, match="mel_std must be > 0"):
        EncoderConfig(mel_std=0.0)


def test_default_decoder_head_reaches_a_full_scale_steady_tone():
    from lodit.latent_tokenizer.decoder import ISTFTHead

    cfg = DecoderConfig()
    head = ISTFTHead(1, cfg.n_fft, cfg.hop_length, cfg.max_magnitude)
    bins = cfg.n_fft // 2 + 1
    k = 40  # a bin centre; with hop = n_fft / 4 and k a multiple of 4 every frame's spectrum is the same
    t = torch.arange(cfg.n_fft * 8) / cfg.n_fft
    unit_tone = torch.cos(2 * math.pi * k * t)
    frame = torch.stft(unit_tone, cfg.n_fft, cfg.hop_length, window=torch.hann_window(cfg.n_fft),
                       return_complex=True)[:, 4]  # (bins,): peak magnitude ~n_fft / 4 at bin k
    assert frame.abs()[k] > 100
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias[:bins] = frame.abs().clamp(min=1e-9).log()  # log-magnitudes
        head.proj.bias[bins:] = frame.angle()  # phases
        wav = head(torch.zeros(1, 16, 1))[0, 0]  # every frame predicts the tone's spectrum: (16 * hop,)
    middle = wav[cfg.n_fft: -cfg.n_fft]
    assert middle.abs().max() == pytest.approx(1.0, abs=0.02)  # the old clamp (100) gave 0.42


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("encoder", ["mel_convnext", "conv"])  # losatok needs a teacher: tests/test_losatok.py
@pytest.mark.parametrize("latent_dim", [16, 128, 1280])
def test_encoder_and_decoder_shapes(encoder, latent_dim):
    model = Tokenizer(tiny_config(latent_dim, encoder))
    wav = torch.randn(2, 1, 3 * HOP + 100)  # not a multiple of the hop: padded to 4 frames
    out = model(wav)
    assert out.latent.shape == (2, 4, latent_dim)
    assert out.recon.shape == wav.shape  # forward trims to the input length
    assert model.decode(out.latent).shape == (2, 1, 4 * HOP)  # decode returns T * hop samples


def test_waveform_encoder_stack_keeps_the_signal_at_init():
    from lodit.latent_tokenizer.encoder import ConvEncoder

    torch.manual_seed(0)
    encoder = ConvEncoder(EncoderConfig(name="conv", channels=16, max_channels=256, strides=[2, 4, 8, 10]),
                          sample_rate=SR, hop_length=640, latent_dim=128)
    wav = 0.3 * torch.randn(1, 1, 6400)
    with torch.no_grad():
        stack = encoder.convs(wav)  # (1, dim, 10)
    # 0.02 weights throughout left 1e-5 of the input here, under LayerNorm's eps: the encoder never learned
    assert 0.1 < stack.std().item() / wav.std().item() < 100


@pytest.mark.parametrize("bottleneck", ["noise_norm", "vae", "identity"])
@pytest.mark.parametrize("upsample", [1, 2])
def test_tokenizer_api_shapes(bottleneck, upsample):
    model = Tokenizer(tiny_config(bottleneck=bottleneck, upsample=upsample)).eval()
    wav = torch.randn(SR + 1)
    for form in (wav, wav[None], wav[None, None]):
        assert model.encode(form).shape == (1, model.num_frames(SR + 1), 16) == (1, 26, 16)
    latent = model.encode(wav)
    assert model.decode(latent[0]).shape == (1, 1, 26 * HOP)
    assert model.reconstruct(wav).shape == (1, 1, SR + 1)
    assert model.hop_length == HOP and model.latent_rate == 25.0 and model.sample_rate == SR
    with pytest.raises(LoditError):
        model.decode(torch.randn(1, 5, 7))  # wrong latent width
    with pytest.raises(LoditError):
        model.encode(torch.randn(1, 2, SR))  # stereo


def test_depthwise_conv_matches_torch_conv():
    conv = DepthwiseConv1d(6, 5)
    x = torch.randn(2, 11, 6)  # (B, T, C)
    reference = torch.nn.functional.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=2, groups=6)
    assert torch.allclose(conv(x), reference.transpose(1, 2), atol=1e-6)


# ----------------------------------------------------------------------------- bottlenecks


def test_noise_norm_channel_axis_statistics_and_noise():
    bottleneck = build_bottleneck(BottleneckConfig(name="noise_norm"), 64, 64)
    z = 3.0 + 5.0 * torch.randn(4, 10, 64)
    bottleneck.eval()
    out = bottleneck(z).latent
    assert torch.allclose(out.mean(-1), torch.zeros(4, 10), atol=1e-5)  # per frame over channels
    assert torch.allclose(out.std(-1, correction=0), torch.ones(4, 10), atol=1e-4)
    assert torch.equal(bottleneck(z).latent, out)  # eval is deterministic
    bottleneck.train()
    noisy_a, noisy_b = bottleneck(z).latent, bottleneck(z).latent
    assert not torch.allclose(noisy_a, out) and not torch.allclose(noisy_a, noisy_b)  # noise only in training
    assert (noisy_a - out).std() < 1.0  # alpha ~ U(0, 1): the added noise has std < 1
    assert torch.equal(bottleneck(z, stochastic=False).latent, out)  # the explicit deterministic path
    assert list(bottleneck.parameters()) == []  # affine is off by default


def test_noise_norm_time_axis_gamma_zero_and_affine():
    bottleneck = build_bottleneck(BottleneckConfig(name="noise_norm", axis="time", gamma=0.0, affine=True), 8, 8)
    z = torch.randn(2, 50, 8) * torch.arange(1, 9) + torch.arange(8)
    bottleneck.train()
    out = bottleneck(z).latent
    assert torch.allclose(out.mean(1), torch.zeros(2, 8), atol=1e-5)  # per channel over time
    assert torch.allclose(out.std(1, correction=0), torch.ones(2, 8), atol=1e-4)
    assert torch.equal(bottleneck(z).latent, out)  # gamma = 0: no noise even in training
    assert sum(p.numel() for p in bottleneck.parameters()) == 16  # per-channel scale and shift


def test_gaussian_kl_hand_value():
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    # 0.5 * [(1 + 1 - 1 - 0) + (0 + 2 - 1 - log 2)]
    assert gaussian_kl(mu, logvar).item() == pytest.approx(0.5 * (2.0 - math.log(2.0)), rel=1e-6)
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


def test_vae_mean_at_eval_sample_in_training_and_clamp():
    vae = build_bottleneck(BottleneckConfig(name="vae", logvar_clamp=20.0), 4, 2)  # Linear(4 -> 2 * 2)
    with torch.no_grad():
        vae.proj.weight.zero_()
        vae.proj.bias.copy_(torch.tensor([1.0, 0.0, 0.0, math.log(2.0)]))  # mu = (1, 0), logvar = (0, log 2)
    z = torch.randn(3, 5, 4)
    vae.eval()
    out = vae(z)
    assert torch.allclose(out.latent, torch.tensor([1.0, 0.0]).expand(3, 5, 2))
    assert out.losses["kl"].item() == pytest.approx(0.5 * (2.0 - math.log(2.0)), rel=1e-5)
    vae.train()
    sampled = vae(z).latent
    assert not torch.allclose(sampled, out.latent)
    with torch.no_grad():
        vae.proj.bias.copy_(torch.tensor([0.0, 0.0, 100.0, -100.0]))
    kl = vae(z, stochastic=False).losses["kl"].item()
    assert kl == pytest.approx(0.5 * ((math.exp(20) - 1 - 20) + (math.exp(-20) - 1 + 20)), rel=1e-4)


def test_identity_and_width_mismatch():
    identity = build_bottleneck(BottleneckConfig(name="identity"), 6, 6)
    z = torch.randn(2, 3, 6)
    assert torch.equal(identity(z).latent, z)
    with pytest.raises(LoditError, match="latent_dim"):
        build_bottleneck(BottleneckConfig(name="noise_norm"), 32, 16)
    with pytest.raises(LoditError, match="choose one of"):
        build_bottleneck(BottleneckConfig(name="nope"), 6, 6)


def test_tokenizer_encode_is_deterministic_in_train_mode():
    model = Tokenizer(tiny_config()).train()
    wav = torch.randn(1, 1, SR // 2)
    assert torch.equal(model.encode(wav), model.encode(wav))
    assert not torch.equal(model(wav).latent, model(wav).latent)  # forward in training mode is noisy


# ----------------------------------------------------------------------------- losses


def test_reconstruction_losses_zero_when_equal_positive_otherwise():
    target = chord()
    mel = MultiResolutionMelLoss(SR, [(256, 64, 32), (1024, 256, 64)])
    stft = MultiResolutionSTFTLoss([(512, 128), (1024, 256)])
    other = chord(freqs=(440.0,))
    for loss in (mel, stft):
        assert loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
        assert loss(other, target).item() > 0.1


def test_relative_floor_makes_faint_noise_over_silence_cost_nothing():
    # A click track: one loud click in digital silence. With the absolute floor, the true clicks plus
    # noise 90 dB below the peak score worse than a near-silent output; with an 80 dB range they don't.
    target = torch.zeros(1, 1, SR)
    target[..., SR // 2 : SR // 2 + 40] = 0.8
    faint = target + 10 ** (-90 / 20) * 0.8 * torch.randn_like(target)
    silent = 1e-4 * target
    resolutions = [(512, 128, 40), (1024, 256, 64)]
    absolute = MultiResolutionMelLoss(SR, resolutions)
    relative = MultiResolutionMelLoss(SR, resolutions, dynamic_range_db=80.0)
    assert absolute(faint, target) > absolute(silent, target)  # the trap: silence is cheaper
    assert relative(faint, target).item() == pytest.approx(0.0, abs=1e-3)
    assert relative(silent, target) > 0.1  # 80 dB down is still heard as wrong
    stft = MultiResolutionSTFTLoss([(512, 128)], dynamic_range_db=80.0)
    assert stft(faint, target) < stft(silent, target)


def test_relative_floor_is_per_example_and_loud_content_is_unchanged():
    loud = chord()
    quiet = 1e-3 * chord()
    mel = MultiResolutionMelLoss(SR, [(512, 128, 40)], dynamic_range_db=200.0)  # floor below every bin: plain L1
    plain = MultiResolutionMelLoss(SR, [(512, 128, 40)])
    batch = torch.cat([loud, quiet])  # (2, 1, S): the quiet example keeps its own floor
    other = torch.cat([chord(freqs=(440.0,)), 1e-3 * chord(freqs=(440.0,))])
    assert mel(other, batch).item() == pytest.approx(plain(other, batch).item(), rel=1e-4)
    with pytest.raises(ValueError, match="dynamic_range_db"):
        TokenizerLossConfig(dynamic_range_db=0.0)


def test_phase_loss_zero_for_the_target_and_blind_to_level_but_not_to_phase():
    from lodit.latent_tokenizer.losses import PhaseCoherenceLoss

    target = chord()
    loss = PhaseCoherenceLoss([(512, 128)], group_delay=1.0, inst_frequency=1.0, absolute=1.0)
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-3)
    assert loss(0.25 * target, target).item() == pytest.approx(0.0, abs=1e-3)  # phase only: level is free
    shifted = torch.roll(target, 37, dims=-1)  # same magnitudes, other phases
    assert loss(shifted, target).item() > 0.1
    noise = 0.3 * torch.randn_like(target)
    values = [loss(target + scale * noise, target).item() for scale in (1.0, 0.3, 0.1)]
    assert values[0] > values[1] > values[2]
    fake = torch.zeros_like(target, requires_grad=True)  # exactly silent output: finite loss and gradients
    loss(fake, target).backward()
    assert torch.isfinite(fake.grad).all()


def test_phase_loss_joins_the_total_with_its_weight():
    cfg = TokenizerLossConfig(mel=0.0, stft=0.0, phase=3.0, phase_absolute=0.0, phase_resolutions=[(512, 128)])
    loss = TokenizerLoss(cfg, SR, {})
    real, fake = chord(), torch.roll(chord(), 37, dims=-1)
    total, terms = loss.generator_loss(real, fake)
    assert set(terms) == {"phase"}
    assert total.item() == pytest.approx(3.0 * terms["phase"].item(), rel=1e-6)


def test_the_total_computes_each_stft_once_and_equals_its_terms_on_waveforms(monkeypatch):
    from lodit.latent_tokenizer import frontend
    from lodit.latent_tokenizer.losses import PhaseCoherenceLoss

    cfg = TokenizerLossConfig(mel=45.0, stft=1.0, level=10.0, phase=30.0)  # default resolutions: 4 distinct
    loss = TokenizerLoss(cfg, SR, {})
    real = chord()
    fake = (real + 0.05 * torch.randn_like(real)).requires_grad_(True)
    calls = []
    counted = frontend.stft

    def counting_stft(wav, n_fft, hop_length, win_length=None):
        calls.append((n_fft, hop_length))
        return counted(wav, n_fft, hop_length, win_length)

    monkeypatch.setattr(frontend, "stft", counting_stft)
    total, terms = loss.generator_loss(real, fake)
    distinct = {(n, h) for n, h, _ in cfg.mel_resolutions} | set(cfg.stft_resolutions)
    distinct |= set(cfg.phase_resolutions) | {cfg.level_resolution}
    assert sorted(calls) == sorted(2 * list(distinct))  # one STFT per resolution for fake and for real
    alone = {
        "mel": MultiResolutionMelLoss(SR, cfg.mel_resolutions, 80.0)(fake, real),
        "stft": MultiResolutionSTFTLoss(cfg.stft_resolutions, 80.0)(fake, real),
        "level": FrameLevelLoss(cfg.level_resolution, 80.0)(fake, real),
        "phase": PhaseCoherenceLoss(cfg.phase_resolutions)(fake, real),
    }
    for name, value in alone.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-6)
    assert total.item() == pytest.approx(sum(getattr(cfg, n) * v.item() for n, v in alone.items()), rel=1e-6)
    total.backward()
    assert torch.isfinite(fake.grad).all() and fake.grad.abs().sum() > 0


def test_frame_level_loss_measures_level_not_spectral_detail():
    level = FrameLevelLoss((1024, 256), dynamic_range_db=80.0)
    real = chord()
    assert level(real, real).item() == 0.0
    assert level(0.5 * real, real).item() == pytest.approx(math.log(2.0), rel=1e-3)  # every frame 6 dB down
    # the same power spread as noise: far from the chord in spectrum, next to nothing in level
    noise = torch.randn_like(real)
    noise = noise * real.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt()
    assert level(noise, real).item() < 0.1
    assert MultiResolutionMelLoss(SR, [(1024, 256, 80)], 80.0)(noise, real).item() > 1.0
    total, terms = TokenizerLoss(TokenizerLossConfig(mel=0.0, stft=0.0, level=10.0), SR, {}).generator_loss(
        real, 0.5 * real)
    assert set(terms) == {"level"} and total.item() == pytest.approx(10.0 * math.log(2.0), rel=1e-3)


def test_centred_head_phase_puts_each_frame_under_its_window():
    from lodit.latent_tokenizer.decoder import ISTFTHead

    n_fft, hop = 256, 64
    outputs = {}
    for centred in (False, True):
        head = ISTFTHead(1, n_fft, hop, 1000.0)
        with torch.no_grad():
            head.proj.weight.zero_()
            head.proj.bias.zero_()  # flat unit magnitudes, zero phases
        if centred:
            head.centre_frames()
        frame = torch.fft.irfft(torch.polar(torch.ones(n_fft // 2 + 1), head.proj.bias[n_fft // 2 + 1 :].detach()))
        outputs[centred] = (frame.abs().argmax().item(), head(torch.zeros(1, 12, 1)).pow(2).mean().item())
    assert outputs[False][0] == 0 and outputs[True][0] == n_fft // 2  # the impulse moves to the window's centre
    assert outputs[True][1] > 10 * outputs[False][1]  # and the synthesis window no longer silences it


def test_stft_loss_decreases_as_signal_approaches_target():
    target = chord()
    noise = 0.3 * torch.randn_like(target)
    stft = MultiResolutionSTFTLoss([(512, 128), (1024, 256)])
    values = [stft(target + scale * noise, target).item() for scale in (1.0, 0.3, 0.1, 0.01)]
    assert all(a > b for a, b in itertools.pairwise(values)), values


def test_hinge_and_feature_matching_hand_values():
    real = [torch.tensor([2.0, 0.5]), torch.tensor([-1.0])]
    fake = [torch.tensor([-2.0, 0.0]), torch.tensor([1.0])]
    # disc 1: real (0 + 0.5) / 2, fake (0 + 1) / 2 -> 0.75; disc 2: 2 + 2 = 4; mean 2.375
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(2.375)
    # disc 1: (3 + 1) / 2 = 2; disc 2: 0; mean 1
    assert hinge_generator_loss(fake).item() == pytest.approx(1.0)
    real_features = [[torch.ones(2), torch.zeros(3)], [torch.full((1,), 2.0)]]
    fake_features = [[torch.zeros(2), torch.ones(3)], [torch.zeros(1)]]
    # disc 1: 1 + 1 (summed over layers); disc 2: 2; mean 2
    assert feature_matching_loss(real_features, fake_features).item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        hinge_discriminator_loss(real, fake[:1])


def test_tokenizer_loss_weights_and_adversarial_switch():
    tokenizer_cfg = tiny_config(bottleneck="vae", kl_weight=0.5)
    cfg = TokenizerLossConfig(
        mel=2.0,
        stft=0.0,
        adversarial=3.0,
        feature_matching=0.0,
        adversarial_start_step=10,
        mel_resolutions=[(512, 128, 40)],
    )
    loss = TokenizerLoss.from_configs(cfg, tokenizer_cfg)
    real, fake = chord(), chord(freqs=(440.0,))
    kl = torch.tensor(4.0)
    total, terms = loss.generator_loss(real, fake, {"kl": kl}, fake_logits=[torch.tensor([0.0, -1.0])])
    assert set(terms) == {"mel", "kl", "adversarial"}
    assert terms["adversarial"].item() == pytest.approx(1.5)
    assert total.item() == pytest.approx(2.0 * terms["mel"].item() + 0.5 * 4.0 + 3.0 * 1.5, rel=1e-5)
    assert not loss.adversarial_active(9) and loss.adversarial_active(10)
    with pytest.raises(LoditError, match="loss.model_losses.semantic"):
        loss.generator_loss(real, fake, {"semantic": kl})


# ----------------------------------------------------------------------------- discriminators


def test_discriminators_output_structure_and_gradients():
    cfg = DiscriminatorConfig(
        names=["mpd", "mrd", "mfd"], channels=4, max_channels=8, periods=[2, 3], resolutions=[(256, 64), (512, 128)]
    )
    discs = Discriminators(cfg)
    wav = torch.randn(2, 1, 4000, requires_grad=True)
    logits, features = discs(wav)
    assert len(logits) == len(features) == 2 + 2 + 2
    for logit, feats in zip(logits, features):
        assert logit.dim() == 2 and logit.shape[0] == 2
        assert len(feats) == 6 and all(f.shape[0] == 2 for f in feats)
    hinge_generator_loss(logits).backward()
    assert wav.grad is not None and wav.grad.abs().sum() > 0
    assert all(p.grad is not None for p in discs.parameters())
    with pytest.raises(LoditError, match="choose one of"):
        Discriminators(DiscriminatorConfig(names=["mpd", "nope"]))
    with pytest.raises(LoditError, match="twice"):
        Discriminators(DiscriminatorConfig(names=["mpd", "mpd"]))


# ----------------------------------------------------------------------------- configs


def test_config_validation():
    with pytest.raises(ConfigError, match="must be an integer"):
        from_dict(TokenizerConfig, {"latent_rate": 30.0}, source="t.yaml")
    with pytest.raises(ConfigError, match="decoder.hop_length"):
        from_dict(TokenizerConfig, {"decoder": {"hop_length": 160}}, source="t.yaml")
    with pytest.raises(ConfigError, match="n_fft"):
        from_dict(TokenizerConfig, {"decoder": {"n_fft": 400}}, source="t.yaml")
    with pytest.raises(ConfigError, match="t.yaml.*encoder.kernel must be odd"):
        from_dict(TokenizerConfig, {"encoder": {"kernel": 4}}, source="t.yaml")
    with pytest.raises(LoditError, match="strides"):
        Tokenizer(from_dict(TokenizerConfig, {"encoder": {"name": "conv", "strides": [2, 4, 8]}}))
    with pytest.raises(LoditError, match="mel_hop"):
        Tokenizer(from_dict(TokenizerConfig, {"encoder": {"mel_hop": 300}}))


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_build(path):
    from lodit.latent_tokenizer.train import TokenizerTrainConfig

    config = from_dict(TokenizerTrainConfig, load_yaml(path), source=str(path))
    tokenizer_cfg, loss_cfg, disc_cfg = config.tokenizer, config.loss, config.discriminator
    with torch.device("meta"):  # builds every module without allocating the GPU-size weights
        model = Tokenizer(tokenizer_cfg)
        Discriminators(disc_cfg)
    assert model.latent_dim == tokenizer_cfg.latent_dim and model.hop_length == 640
    assert loss_cfg.mel == 45.0


def test_required_config_family_exists():
    names = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert {"tiny", "default", "noise_norm_128", "noise_norm_64", "vae_128", "dim_1280"} <= names
    widths = {name: load_yaml(CONFIG_DIR / f"{name}.yaml")["tokenizer"]["latent_dim"] for name in names}
    assert widths["noise_norm_64"] == 64 and widths["dim_1280"] == 1280 and widths["vae_128"] == 128


# ----------------------------------------------------------------------------- persistence


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = Tokenizer(tiny_config(bottleneck="vae")).eval()
    wav = torch.randn(1, 1, SR // 2)
    model.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json", "model.safetensors"]
    loaded = Tokenizer.from_pretrained(tmp_path / "tok")
    assert not loaded.training
    assert loaded.config == model.config and loaded.identity() == model.identity()
    latent = model.encode(wav)
    assert torch.equal(loaded.encode(wav), latent)
    assert torch.equal(loaded.decode(latent), model.decode(latent))


def test_from_pretrained_prefers_ema_and_reads_training_configs(tmp_path):
    from safetensors.torch import save_file

    model = Tokenizer(tiny_config())
    folder = model.save_pretrained(tmp_path / "ckpt")
    # a training checkpoint: the config has the tokenizer under "tokenizer", EMA weights beside
    full = {"tokenizer": json.loads((folder / "config.json").read_text()), "loss": {}, "training": {"lr": 1e-4}}
    (folder / "config.json").write_text(json.dumps(full))
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file(ema, str(folder / "ema.safetensors"))
    key = "decoder.head.proj.bias"
    assert torch.equal(Tokenizer.from_pretrained(folder).state_dict()[key], ema[key])
    assert torch.equal(Tokenizer.from_pretrained(folder, use_ema=False).state_dict()[key], model.state_dict()[key])


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(LoditError, match="not found"):
        Tokenizer.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoditError, match="config.json"):
        Tokenizer.from_pretrained(tmp_path / "empty")
    small = Tokenizer(tiny_config(latent_dim=16)).save_pretrained(tmp_path / "a")
    large = Tokenizer(tiny_config(latent_dim=32)).save_pretrained(tmp_path / "b")
    shutil.copy(small / "model.safetensors", large / "model.safetensors")  # latent-16 weights, latent-32 config
    with pytest.raises(LoditError, match="do not fit"):
        Tokenizer.from_pretrained(large)
    (small / "model.safetensors").unlink()
    with pytest.raises(LoditError, match="missing"):
        Tokenizer.from_pretrained(small)
    (small / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoditError, match="unreadable"):
        Tokenizer.from_pretrained(small)


def test_identity_tracks_config():
    a, b = Tokenizer(tiny_config(16)), Tokenizer(tiny_config(32))
    ident = a.identity()
    assert set(ident) == {"name", "config_hash", "latent_dim", "frame_rate", "sample_rate", "weights_hash"}
    assert ident["latent_dim"] == 16 and ident["frame_rate"] == 25.0 and ident["sample_rate"] == SR
    assert ident["config_hash"] != b.identity()["config_hash"]
    torch.manual_seed(123)
    twin = Tokenizer(tiny_config(16))  # same config, other weights: same config hash, other identity
    assert twin.identity()["config_hash"] == ident["config_hash"]
    assert twin.identity()["weights_hash"] != ident["weights_hash"]
    assert a.identity()["weights_hash"] == ident["weights_hash"]  # a content hash: stable for the same weights


# ----------------------------------------------------------------------------- learning


def test_tiny_autoencoder_learns_a_chord():
    """150 Adam steps on one 1-s chord cut the multi-resolution mel distance at least 3x (~13x seen)."""
    model = Tokenizer.from_config(load_yaml(CONFIG_DIR / "tiny.yaml")["tokenizer"])
    wav = chord()
    mel = MultiResolutionMelLoss(SR, [(256, 64, 32), (1024, 256, 64)])
    stft = MultiResolutionSTFTLoss([(512, 128), (1024, 256)])

    def distance():
        with torch.no_grad():
            return mel(model.reconstruct(wav), wav).item()

    before = distance()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        recon = model(wav).recon
        loss = mel(recon, wav) + stft(recon, wav)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = distance()
    assert after < before / 3, (before, after)


def test_loading_models_for_inference_does_not_import_accelerate(tmp_path):
    """Tokenizer and DiT loading import no training machinery (accelerate comes with the Trainer only)."""
    import os
    import subprocess
    import sys

    Tokenizer(tiny_config()).save_pretrained(tmp_path / "tok")
    script = ("import sys\n"
              "from lodit.latent_tokenizer.tokenizer import Tokenizer\n"
              "import lodit.dit.generator\n"
              f"Tokenizer.from_pretrained({str(tmp_path / 'tok')!r})\n"
              "print('accelerate' in sys.modules)\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, check=True,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.stdout.strip() == "False"
