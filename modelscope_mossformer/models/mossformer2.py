"""MossFormer2: MossFormer blocks, each followed by an RNN-free recurrent module.

Zhao et al., "MossFormer2: Combining Transformer and RNN-Free Recurrent Network
for Enhanced Time-Domain Monaural Speech Separation", ICASSP 2024 (arXiv 2312.11825).
"""
from __future__ import annotations

from typing import List

from torch import nn

from .configs import MossFormer2Config
from .layers import RecurrentModule
from .mossformer import MossFormer, MossFormerLayer


class MossFormer2(MossFormer):
    """MossFormer2 separator: mixture [B, T] -> sources [B, C, T]."""

    config_class = MossFormer2Config

    def _build_layers(self, config: MossFormer2Config) -> List[nn.Module]:
        return [
            MossFormerLayer(block, RecurrentModule(config.model_dim, inner_channels=config.fsmn_inner_channels,
                                                   memory_order=config.fsmn_memory_order,
                                                   num_layers=config.fsmn_dilated_layers,
                                                   conv_kernel_size=config.conv_kernel_size))
            for block in self._attention_blocks(config)
        ]
