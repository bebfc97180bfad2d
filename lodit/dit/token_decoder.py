"""Tokens back to audio: a flow-matching DiT that generates a lodit autoencoder's latents from a
discrete token sequence (UniAudio-Token's decoder, on lodit's own parts).

The token sequence ``(B, T)`` and the autoencoder's latents ``(B, T, D)`` share one frame rate
(25 Hz), so conditioning is frame by frame: each token's learned embedding (``token_dim``; a
width-3 convolution lets it see its neighbours) is the DiT's ``frame_cond`` for the latent frame
it covers. An optional **reference prompt** gives the voice / recording conditions that a
semantic token drops: the time-mean of a reference clip's normalised latents ``(B, 1, D)``,
attended to by cross-attention (the DiT's text input) and pooled into its global vector. In
training the reference is the clip itself; ``lodit reconstruct`` uses the input clip (or a
``--reference`` file).

Latents are normalised per channel with the training set's mean/std (buffers saved with the
model), the flow-matching objective and time sampling are :mod:`lodit.dit.flow`'s
(``t = 1`` noise, velocity ``eps - x0``), and generation integrates with :func:`lodit.samplers.sample`
(Euler, ``steps``), seeded. The autoencoder itself stays frozen and is not part of this module:
it is loaded from ``autoencoder`` (a tokenizer folder) to make the training latents and to
decode generated ones.

May import: torch, ``lodit.latent_tokenizer``, ``lodit.dit``, ``lodit.samplers``.
"""

from __future__ import annotations

import torch
from torch import nn

from lodit.dit.flow import FlowMatching, FlowMatchingConfig
from lodit.dit.model import DiT, DiTConfig
from lodit.latent_tokenizer.uniaudio import TokenDecoderConfig


class TokenDecoder(nn.Module):
    """Flow-matching DiT from token ids (and a reference prompt) to normalised autoencoder latents."""

    def __init__(self, codebook_size: int, latent_dim: int, config: TokenDecoderConfig):
        super().__init__()
        self.config = config
        self.latent_dim = int(latent_dim)
        self.embed = nn.Embedding(codebook_size, config.token_dim)
        self.smooth = nn.Conv1d(config.token_dim, config.token_dim, 3, padding=1)
        dit_config = DiTConfig(
            latent_dim=latent_dim, width=config.width, depth=config.depth, heads=config.heads,
            mlp_ratio=config.mlp_ratio, text_dim=latent_dim if config.prompt else 0,
            frame_cond_dim=config.token_dim, duration_cond=False,
        )
        self.dit = DiT(dit_config)
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_std", torch.ones(latent_dim))
        self.flow = FlowMatching(FlowMatchingConfig(cond_dropout=0.0))

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std.clamp_min(1e-5))

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.latent_mean) / self.latent_std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.latent_std + self.latent_mean

    def token_condition(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` ids -> ``(B, T, token_dim)`` frame conditioning."""
        e = self.embed(ids)  # (B, T, E)
        return e + self.smooth(e.transpose(1, 2)).transpose(1, 2)

    def prompt_of(self, latents: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """The reference prompt ``(B, 1, D)`` of raw latents ``(B, T, D)`` (None without prompts)."""
        if not self.config.prompt:
            return None
        z = self.normalize(latents)
        if mask is None:
            return z.mean(1, keepdim=True)
        w = mask.to(z.dtype)[..., None]
        return (z * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor, prompt: torch.Tensor | None,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        text_mask = None if prompt is None else torch.ones(prompt.shape[:2], dtype=torch.bool, device=x.device)
        return self.dit(x, t, text=prompt, text_mask=text_mask, frame_cond=self.token_condition(ids), mask=mask)

    def loss(self, ids: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching loss of raw latents ``(B, T, D)`` given ``ids (B, T)``, ``mask (B, T)``."""
        prompt = self.prompt_of(latents, mask)
        x0 = self.normalize(latents)
        inputs = self.flow.training_inputs(x0, mask, generator)
        pred = self.velocity(inputs.x_t, inputs.t, ids, prompt, mask)
        return self.flow.loss(pred, inputs.target, mask)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, prompt: torch.Tensor | None = None, *, seed: int = 0,
                 steps: int | None = None) -> torch.Tensor:
        """Raw (denormalised) latents ``(B, T, D)`` for ``ids (B, T)``; ``prompt`` from :meth:`prompt_of`."""
        from lodit.samplers.sample import SamplerConfig, initial_noise, sample

        if self.config.prompt and prompt is None:
            raise ValueError("this decoder was trained with a reference prompt; pass one (prompt_of(latents))")
        generator = torch.Generator().manual_seed(seed)
        noise = initial_noise((*ids.shape, self.latent_dim), generator, device=ids.device)
        result = sample(lambda x, t, cond: self.velocity(x, t, ids, cond), noise, prompt,
                        cfg=SamplerConfig(sampler="euler", steps=steps or self.config.steps))
        return self.denormalize(result.x0)
