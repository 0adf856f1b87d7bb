"""Build ModelScope's own MossFormer classes (the reference) for a config of ours.

Tests and benchmarks use this to prove numerical parity and checkpoint compatibility against the
implementation installed with `modelscope` (imported inside the functions: this module loads without it).
"""
from __future__ import annotations

import torch

from .checkpoint import released_key, released_state_dict
from .configs import MossFormer2Config, MossFormerConfig

# ModelScope's MossFormer2 fixes these inside its classes.
REFERENCE_M2_FIXED = dict(group_size=256, query_key_dim=128, expansion_factor=4.0, fsmn_inner_channels=256,
                          fsmn_memory_order=20, fsmn_dilated_layers=2, conv_kernel_size=17, attn_dropout=0.1)


def reference_model(config: MossFormerConfig, model_dir: str = '/nonexistent') -> torch.nn.Module:
    """ModelScope's class for `config`, randomly initialised, in eval mode."""
    if isinstance(config, MossFormer2Config):
        from modelscope.models.audio.separation.m2.mossformer import MossFormer2 as Reference

        for key, value in REFERENCE_M2_FIXED.items():
            if getattr(config, key) != value:
                raise ValueError(f'ModelScope MossFormer2 fixes {key}={value}; config has {getattr(config, key)}')
        model = Reference(model_dir=model_dir, in_channels=config.enc_channels, out_channels=config.model_dim,
                          num_blocks=config.num_blocks, kernel_size=config.enc_kernel_size, norm=config.norm,
                          num_spks=config.num_spks, skip_around_intra=config.skip_around_seq,
                          use_global_pos_enc=config.use_global_pos_enc)
    else:
        from modelscope.models.audio.separation.mossformer import MossFormer as Reference

        if config.stride != config.enc_kernel_size // 2:
            raise ValueError('ModelScope MossFormer fixes the encoder stride to enc_kernel_size // 2')

        model = Reference(model_dir=model_dir, in_channels=config.enc_channels, out_channels=config.model_dim,
                          kernel_size=config.enc_kernel_size, stride=config.stride, bias=config.dec_bias,
                          num_blocks=config.num_blocks, d_model=config.model_dim, attn_dropout=config.attn_dropout,
                          group_size=config.group_size, query_key_dim=config.query_key_dim,
                          expansion_factor=config.expansion_factor, causal=config.causal, norm=config.norm,
                          num_spks=config.num_spks)
    return model.eval()


def reference_with_weights_of(ours: torch.nn.Module) -> torch.nn.Module:
    """A reference model carrying exactly the weights of our separator `ours`."""
    reference = reference_model(ours.config)
    reference.load_state_dict(released_state_dict(ours), strict=True)
    return reference


def reference_forward(reference: torch.nn.Module, mix: torch.Tensor) -> torch.Tensor:
    """Reference output in this package's layout [B, C, T] (the reference returns [B, T, C])."""
    return reference(mix).permute(0, 2, 1)


def paired_gradients(ours: torch.nn.Module, reference: torch.nn.Module):
    """(name, our gradient, the reference's gradient) for each of our parameters that has a gradient."""
    family = 'mossformer2' if isinstance(ours.config, MossFormer2Config) else 'mossformer'
    reference_parameters = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        if parameter.grad is not None:
            yield name, parameter.grad, reference_parameters[released_key(name, family)].grad
