"""MossFormer: encoder / mask net / decoder separation with gated attention blocks.

Zhao et al., "MossFormer: Pushing the Performance Limit of Monaural Speech
Separation using Gated Single-Head Transformer with Convolution-Augmented Joint
Self-Attentions", ICASSP 2023.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .configs import MossFormerConfig
from . import gemm
from .layers import (TILE_FRAMES, ConvDecoder, ConvEncoder, GatedAttentionUnit, ScaledSinusoidalEmbedding,
                     at_least_float32, channel_norm, float32_region, frames_first_norm, frames_first_norm_rows,
                     inference_tiles, reused_buffers)


class MossFormerLayer(nn.Module):
    """One MossFormer block, optionally followed by a recurrent module (MossFormer2)."""

    def __init__(self, attention: nn.Module, recurrent: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.attention = attention
        self.recurrent = recurrent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        if self.recurrent is not None:
            x = self.recurrent(x)
        return x


class SequenceModel(nn.Module):
    """R stacked layers on [B, L, D] followed by a LayerNorm.

    With ``activation_checkpointing`` on, training keeps only each layer's input and
    recomputes the layer during the backward pass (torch.utils.checkpoint, with the
    dropout RNG state replayed, so gradients are those of a plain run).
    """

    def __init__(self, layers: Sequence[nn.Module], dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)
        self.activation_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        with reused_buffers():  # (inference only: see layers.reusable)
            for layer in self.layers:
                if recompute:
                    x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
                else:
                    x = layer(x)
        return self.final_norm(x)


class MaskNet(nn.Module):
    """Estimates one mask per speaker from the encoder output.

    norm -> 1x1 conv -> + scaled sinusoidal positions -> sequence model -> norm
    (+ skip) -> PReLU -> 1x1 conv to C x D -> tanh/sigmoid gate -> 1x1 conv to N -> ReLU.
    """

    def __init__(self, enc_channels: int, model_dim: int, num_spks: int, sequence: nn.Module, norm: str = 'ln',
                 use_global_pos_enc: bool = True, skip_around_seq: bool = True) -> None:
        super().__init__()
        self.num_spks = num_spks
        self.skip_around_seq = skip_around_seq
        self.in_norm = channel_norm(norm, enc_channels)
        self.in_proj = nn.Conv1d(enc_channels, model_dim, 1, bias=False)
        self.pos_enc = ScaledSinusoidalEmbedding(model_dim) if use_global_pos_enc else None
        self.sequence = sequence
        self.seq_norm = channel_norm(norm, model_dim)
        self.prelu = nn.PReLU()
        self.out_proj = nn.Conv1d(model_dim, model_dim * num_spks, 1)
        self.gate_tanh = nn.Conv1d(model_dim, model_dim, 1)
        self.gate_sigmoid = nn.Conv1d(model_dim, model_dim, 1)
        self.mask_proj = nn.Conv1d(model_dim, enc_channels, 1, bias=False)
        # frames per tile of the head at inference (0: never tile)
        self.tile_frames = TILE_FRAMES

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Encoder frames [B, L, N] -> masks [B, L, C, N]."""
        b, num_frames, _ = frames.shape
        # under reduced-precision autocast only the sequence model runs in it: the mask head is
        # float32 (a sixtieth of the FLOPs; rounding its weights alone costs about 10 dB of fidelity).
        # Frames-first throughout: the 1x1 convs are GEMMs on [.., L, channels] (oneDNN's 1x1 conv on
        # [B, C, L] ran at less than half the GEMMs' rate), and the sequence model's input and output
        # are not transposed
        with float32_region(frames):
            normed = frames_first_norm(self.in_norm, at_least_float32(frames))
            x = gemm.linear(normed, self.in_proj.weight.squeeze(-1))  # [B, L, D]
            if self.pos_enc is not None:
                x = x + self.pos_enc(num_frames)  # + [L, D]
        h = self.sequence(x)  # [B, L, D]
        tiles = inference_tiles(self, h, self.tile_frames)  # (none under autocast, decided outside its float32 region)
        with float32_region(frames):
            normed = frames_first_norm_rows(self.seq_norm, at_least_float32(h))
            if not tiles:
                return self._head(normed(0, num_frames), x)
            # at inference on long inputs the head runs tile by tile of frames (every step after the
            # norm's statistics is frame by frame): its [B, L, C, 2D] and [B, L, C*D] temporaries stay
            # one tile wide (see layers.GatedAttentionUnit._tiled_forward)
            masks = None
            for start, stop in tiles:
                rows = self._head(normed(start, stop), x[:, start:stop])
                if masks is None:
                    masks = rows.new_empty((b, num_frames, *rows.shape[2:]))
                masks[:, start:stop] = rows
            return masks

    def _head(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Masks [B, L, C, N] from the normalised sequence output h and the sequence input x, frame by frame."""
        b, num_frames, _ = h.shape
        if self.skip_around_seq:
            h = h + x
        h = gemm.linear(self.prelu(h), self.out_proj.weight.squeeze(-1), self.out_proj.bias)  # [B, L, C*D]
        h = h.view(b, num_frames, self.num_spks, -1)  # [B, L, C, D]
        gates = gemm.linear(h, torch.cat((self.gate_tanh.weight, self.gate_sigmoid.weight)).squeeze(-1),
                            torch.cat((self.gate_tanh.bias, self.gate_sigmoid.bias)))  # [B, L, C, 2D]
        tanh, sigmoid = gates.chunk(2, dim=-1)
        if torch.is_grad_enabled():
            h = torch.tanh(tanh) * torch.sigmoid(sigmoid)
        else:
            h = tanh.tanh_().mul_(sigmoid.sigmoid_())
        return gemm.linear(h, self.mask_proj.weight.squeeze(-1), None, 'relu')  # [B, L, C, N]

    def channels_first(self, frames: torch.Tensor) -> torch.Tensor:
        """The same masks from channels-first frames: [B, N, L] -> [B, C, N, L], with 1x1 convolutions.

        The graph traced, exported and compiled: it has no views whose shapes depend on the batch
        or the length (torch.export would turn those into guards that pin the batch size).
        """
        b, _, num_frames = frames.shape
        with float32_region(frames):
            x = self.in_proj(self.in_norm(at_least_float32(frames)))  # [B, D, L]
            if self.pos_enc is not None:
                x = x + self.pos_enc(num_frames).transpose(0, 1)  # + [D, L]
        h = self.sequence(x.transpose(1, 2)).transpose(1, 2)  # [B, D, L]
        with float32_region(frames):
            h = self.seq_norm(at_least_float32(h))
            if self.skip_around_seq:
                h = h + x
            h = self.out_proj(self.prelu(h))  # [B, C*D, L]
            h = h.reshape(b * self.num_spks, -1, num_frames)  # [B*C, D, L]
            h = torch.tanh(self.gate_tanh(h)) * torch.sigmoid(self.gate_sigmoid(h))
            masks = F.relu(self.mask_proj(h))  # [B*C, N, L]
        return masks.reshape(b, self.num_spks, -1, num_frames)


class MossFormer(nn.Module):
    """MossFormer separator: mixture [B, T] -> sources [B, C, T].

    Args:
        config: hyper-parameters; MossFormer(L) at 8 kHz for 2 speakers when None.

    Example:
        >>> model = MossFormer(mossformer_small(num_blocks=2))
        >>> model(torch.randn(2, 8000)).shape
        torch.Size([2, 2, 8000])
    """

    config_class = MossFormerConfig

    def __init__(self, config: Optional[MossFormerConfig] = None) -> None:
        super().__init__()
        config = config if config is not None else self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f'{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}')
        self.config = config
        self.num_spks = config.num_spks
        self.encoder = ConvEncoder(config.enc_channels, config.enc_kernel_size, config.stride)
        sequence = SequenceModel(self._build_layers(config), config.model_dim)
        self.masker = MaskNet(config.enc_channels, config.model_dim, config.num_spks, sequence, norm=config.norm,
                              use_global_pos_enc=config.use_global_pos_enc, skip_around_seq=config.skip_around_seq)
        self.decoder = ConvDecoder(config.enc_channels, config.enc_kernel_size, config.stride, bias=config.dec_bias)

    @property
    def activation_checkpointing(self) -> bool:
        """Recompute each layer in the backward pass instead of storing its activations."""
        return self.masker.sequence.activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, enabled: bool) -> None:
        self.masker.sequence.activation_checkpointing = bool(enabled)

    @staticmethod
    def _attention_blocks(config: MossFormerConfig) -> List[GatedAttentionUnit]:
        from rotary_embedding_torch import RotaryEmbedding

        rotary = RotaryEmbedding(dim=config.rotary_width)  # one table shared by every block
        return [
            GatedAttentionUnit(config.model_dim, rotary, group_size=config.group_size,
                               query_key_dim=config.query_key_dim, expansion_factor=config.expansion_factor,
                               causal=config.causal, dropout=config.attn_dropout,
                               conv_kernel_size=config.conv_kernel_size)
            for _ in range(config.num_blocks)
        ]

    def _build_layers(self, config: MossFormerConfig) -> List[nn.Module]:
        return [MossFormerLayer(block) for block in self._attention_blocks(config)]

    def sources(self, mix: torch.Tensor) -> torch.Tensor:
        """Encoder, mask net and decoder without checks: [B, T] -> [B, C, T'], T' = (L - 1) * S + K <= T."""
        if gemm.capturing():  # traced, exported or compiled
            return self.channels_first_sources(mix)
        with float32_region(mix):  # the filterbanks stay float32 under reduced-precision autocast
            frames = self.encoder.frames_first(at_least_float32(mix))  # [B, L, N]
        masks = self.masker(frames)  # [B, L, C, N]
        with float32_region(mix):
            # (without autograd the masks' own buffer takes the product: one [B, L, C, N] tensor fewer)
            masked = frames.unsqueeze(2) * masks if torch.is_grad_enabled() else masks.mul_(frames.unsqueeze(2))
            return self.decoder.frames_first(masked)  # [B, C, T']

    def channels_first_sources(self, mix: torch.Tensor) -> torch.Tensor:
        """`sources` through the channels-first graph (the encoder's Conv1d, 1x1 convs in the mask head,
        the decoder's ConvTranspose1d): what traced, exported and compiled graphs run."""
        with float32_region(mix):
            frames = self.encoder(at_least_float32(mix))  # [B, N, L]
        masks = self.masker.channels_first(frames)  # [B, C, N, L]
        with float32_region(mix):
            separated = (frames.unsqueeze(1) * masks).flatten(0, 1)  # [B*C, N, L]
            return self.decoder(separated).reshape(mix.shape[0], self.num_spks, -1)  # [B, C, T']

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate a batch of mixtures.

        Args:
            mix: [B, T] waveforms.

        Returns:
            [B, C, T] estimated sources, cropped or zero-padded to T.
        """
        if mix.dim() != 2:
            raise ValueError(f'{type(self).__name__} expects mixtures shaped [batch, time], got {tuple(mix.shape)}')
        num_samples = mix.shape[-1]
        if num_samples < self.config.enc_kernel_size:
            raise ValueError(f'input has {num_samples} samples; at least enc_kernel_size='
                             f'{self.config.enc_kernel_size} are needed')
        est_sources = self.sources(mix)  # [B, C, T']
        excess = est_sources.shape[-1] - num_samples
        if excess > 0:
            est_sources = est_sources[..., :num_samples]
        elif excess < 0:
            est_sources = F.pad(est_sources, (0, -excess))
        return est_sources
