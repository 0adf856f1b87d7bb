"""Typed configurations for MossFormer and MossFormer2 with the papers' defaults.

Sample rate, number of speakers and model size are configuration, never code:
the same classes build every published variant.  `from_model_kwargs` reads both
this package's field names and the `model` section of the configuration.json
files released with ModelScope's MossFormer models (`in_channels`, `d_model`,
`kernel_size`, ...), so a released model directory builds unchanged.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Type, TypeVar, Union

MOSSFORMER = 'mossformer'
MOSSFORMER2 = 'mossformer2'
SUPPORTED_NORMS = ('ln', 'gln', 'cln')

# Keys that ModelScope's `Model.from_pretrained` / `build_model` put into the
# model kwargs and that carry no architecture information.
MODELSCOPE_PLUMBING_KEYS = frozenset({
    'type', 'model_type', 'model_dir', 'device', 'device_map',
    'trust_remote_code', 'cfg_dict', 'init_backbone', 'model_prefetched',
})

C = TypeVar('C', bound='MossFormerConfig')


@dataclass
class MossFormerConfig:
    """MossFormer (ICASSP 2023) hyper-parameters; defaults are MossFormer(L).

    Attributes:
        sample_rate: audio sample rate in Hz (8000 or 16000 for released models).
        num_spks: number of speakers C separated by the mask net.
        enc_channels: encoder filters N (`in_channels` in ModelScope configs).
        enc_kernel_size: encoder / decoder kernel K (`kernel_size`).
        enc_stride: encoder / decoder hop, K // 2 when None (`stride`).
        dec_bias: whether the transposed-conv decoder has a bias (`bias`).
        model_dim: width D of the sequence model (`d_model`, `out_channels`).
        num_blocks: number R of MossFormer blocks.
        group_size: attention group length g in frames.
        query_key_dim: shared query/key width s.
        expansion_factor: hidden expansion e of the gated attention unit.
        attn_dropout: dropout inside the gated attention unit.
        conv_kernel_size: kernel of the depthwise convolutions in each projection.
        rotary_dim: rotary embedding width, min(32, query_key_dim) when None.
        causal: causal attention (not used by released models).
        norm: mask-net normalisation: 'ln' (GroupNorm(1, N)), 'gln' or 'cln'.
        use_global_pos_enc: add the scaled sinusoidal position embedding.
        skip_around_seq: residual connection around the sequence model.
    """

    sample_rate: int = 8000
    num_spks: int = 2
    enc_channels: int = 512
    enc_kernel_size: int = 16
    enc_stride: Optional[int] = None
    dec_bias: bool = False
    model_dim: int = 512
    num_blocks: int = 24
    group_size: int = 256
    query_key_dim: int = 128
    expansion_factor: float = 4.0
    attn_dropout: float = 0.1
    conv_kernel_size: int = 17
    rotary_dim: Optional[int] = None
    causal: bool = False
    norm: str = 'ln'
    use_global_pos_enc: bool = True
    skip_around_seq: bool = True

    family = MOSSFORMER

    # Released ModelScope configuration keys -> field names.
    _ALIASES = {
        'in_channels': 'enc_channels',
        'kernel_size': 'enc_kernel_size',
        'stride': 'enc_stride',
        'bias': 'dec_bias',
        'd_model': 'model_dim',
        'out_channels': 'model_dim',  # MossFormer2 releases name the width only this way
        'skip_around_intra': 'skip_around_seq',
    }
    # Released keys accepted and ignored (no effect in the reference either).
    _IGNORED = frozenset({'max_length'})

    def __post_init__(self) -> None:
        if self.enc_stride is None and isinstance(self.enc_kernel_size, int):
            self.enc_stride = self.enc_kernel_size // 2
        self.validate()

    @property
    def stride(self) -> int:
        return self.enc_stride

    @property
    def rotary_width(self) -> int:
        return self.rotary_dim if self.rotary_dim is not None else min(32, self.query_key_dim)

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot build a model."""
        positive = ('sample_rate', 'num_spks', 'enc_channels', 'enc_kernel_size', 'model_dim',
                    'num_blocks', 'group_size', 'query_key_dim', 'conv_kernel_size')
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f'{type(self).__name__}.{name} must be a positive integer, got {value!r}')
        if self.enc_kernel_size < 2:
            raise ValueError(f'{type(self).__name__}.enc_kernel_size must be >= 2, got {self.enc_kernel_size}')
        if not isinstance(self.enc_stride, int) or self.enc_stride <= 0:
            raise ValueError(f'{type(self).__name__}.enc_stride must be positive, got {self.enc_stride!r}')
        if self.conv_kernel_size % 2 != 1:
            raise ValueError(f'{type(self).__name__}.conv_kernel_size must be odd, got {self.conv_kernel_size}')
        if self.norm not in SUPPORTED_NORMS:
            raise ValueError(f'{type(self).__name__}.norm must be one of {SUPPORTED_NORMS}, got {self.norm!r}')
        if not 0.0 <= self.attn_dropout < 1.0:
            raise ValueError(f'{type(self).__name__}.attn_dropout must be in [0, 1), got {self.attn_dropout}')
        if self.expansion_factor <= 0:
            raise ValueError(f'{type(self).__name__}.expansion_factor must be > 0, got {self.expansion_factor}')
        hidden = int(self.model_dim * self.expansion_factor)
        if hidden % 2:
            raise ValueError(f'{type(self).__name__}: model_dim * expansion_factor = {hidden} must be even')
        if self.rotary_width % 2 or self.rotary_width > self.query_key_dim:
            raise ValueError(f'{type(self).__name__}.rotary_dim must be even and <= query_key_dim, '
                             f'got {self.rotary_width}')

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict of every field plus the model family, JSON-serialisable."""
        out = dataclasses.asdict(self)
        out['family'] = self.family
        return out

    @classmethod
    def from_model_kwargs(cls: Type[C], kwargs: Mapping[str, Any], source: str = 'model config') -> C:
        """Build a config from a configuration.json `model` section.

        Args:
            kwargs: keys of this class or of the released ModelScope configs.
            source: where the keys came from, used in error messages.

        Raises:
            ValueError: on an unknown key, or keys that disagree.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values: Dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in MODELSCOPE_PLUMBING_KEYS or key in cls._IGNORED or key == 'family':
                continue
            if key in names:
                target = key
            elif key in cls._ALIASES:
                target = cls._ALIASES[key]
            else:
                known = sorted(names | set(cls._ALIASES))
                raise ValueError(f'{source}: unknown key {key!r} for {cls.__name__}; known keys: {known}')
            if target in values and values[target] != value:
                raise ValueError(f'{source}: {key!r}={value!r} conflicts with {target!r}={values[target]!r}')
            values[target] = value
        config = cls(**values)
        if 'in_channels' in kwargs and 'out_channels' in kwargs and kwargs['in_channels'] != kwargs['out_channels']:
            raise ValueError(f'{source}: the released models need in_channels == out_channels, '
                             f'got {kwargs["in_channels"]} and {kwargs["out_channels"]}')
        return config

    @classmethod
    def field_for(cls, key: str) -> str:
        """The field a configuration.json key sets (``d_model`` -> ``model_dim``; own names unchanged)."""
        return cls._ALIASES.get(key, key)

    def to_model_section(self) -> Dict[str, Any]:
        """The configuration.json ``model`` section (without ``type``): released key names where they
        exist, so that ModelScope's own classes read it, this package's names elsewhere."""
        written = {field: alias for alias, field in self._ALIASES.items() if alias != 'out_channels'}
        section = {written.get(key, key): value for key, value in self.to_dict().items() if key != 'family'}
        section['out_channels'] = self.model_dim  # the released MossFormer2 names the width this way only
        return section

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


@dataclass
class MossFormer2Config(MossFormerConfig):
    """MossFormer2 (ICASSP 2024) hyper-parameters; defaults are the released model.

    Attributes (beyond MossFormerConfig):
        fsmn_inner_channels: width of the recurrent module (256 in the release).
        fsmn_memory_order: FSMN memory order; depthwise kernels are 2 * order - 1.
        fsmn_dilated_layers: layers of the dilated dense block (dilations 1, 2, ...).
    """

    fsmn_inner_channels: int = 256
    fsmn_memory_order: int = 20
    fsmn_dilated_layers: int = 2

    family = MOSSFORMER2

    def validate(self) -> None:
        super().validate()
        for name in ('fsmn_inner_channels', 'fsmn_memory_order', 'fsmn_dilated_layers'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f'{type(self).__name__}.{name} must be a positive integer, got {value!r}')


AnyConfig = Union[MossFormerConfig, MossFormer2Config]
CONFIG_CLASSES: Dict[str, Type[MossFormerConfig]] = {MOSSFORMER: MossFormerConfig, MOSSFORMER2: MossFormer2Config}


def config_from_dict(data: Mapping[str, Any], family: Optional[str] = None) -> MossFormerConfig:
    """Rebuild a config saved by `to_dict` (the `family` key picks the class)."""
    data = dict(data)
    family = data.pop('family', None) or family
    if family not in CONFIG_CLASSES:
        raise ValueError(f'unknown model family {family!r}; expected one of {sorted(CONFIG_CLASSES)}')
    return CONFIG_CLASSES[family].from_model_kwargs(data)


# Published sizes.  MossFormer(S)/(M) configurations are not published; these
# choices land near the paper's parameter counts (10.8 M and 25.3 M).
def mossformer_large(**overrides: Any) -> MossFormerConfig:
    """MossFormer(L): N = D = 512, 24 blocks, 42.1 M parameters."""
    return MossFormerConfig(**overrides)


def mossformer_medium(**overrides: Any) -> MossFormerConfig:
    """MossFormer(M): D = 384, 24 blocks (about 25 M parameters)."""
    return MossFormerConfig(**{'enc_channels': 384, 'model_dim': 384, **overrides})


def mossformer_small(**overrides: Any) -> MossFormerConfig:
    """MossFormer(S): D = 256, 24 blocks (about 11 M parameters)."""
    return MossFormerConfig(**{'enc_channels': 256, 'model_dim': 256, **overrides})


def mossformer2_base(**overrides: Any) -> MossFormer2Config:
    """MossFormer2 at the released size: 512 wide, 24 blocks, 55.7 M parameters."""
    return MossFormer2Config(**overrides)


def mossformer_tiny(**overrides: Any) -> MossFormerConfig:
    """A MossFormer of a few hundred thousand parameters for tests, smoke runs and demos (32 wide, 2 blocks,
    groups of 16 frames); not a published size."""
    return MossFormerConfig(**{'enc_channels': 32, 'model_dim': 32, 'num_blocks': 2, 'group_size': 16,
                               'query_key_dim': 16, **overrides})


def mossformer2_tiny(**overrides: Any) -> MossFormer2Config:
    """A MossFormer2 for tests: 32 wide, one block, ModelScope's fixed internals (qk 128, groups of 256,
    FSMN 256) so that its reference class can be built at the same size; not a published size."""
    return MossFormer2Config(**{'enc_channels': 32, 'model_dim': 32, 'num_blocks': 1, **overrides})


NAMED_SIZES = {
    'mossformer_s': mossformer_small,
    'mossformer_m': mossformer_medium,
    'mossformer_l': mossformer_large,
    'mossformer2': mossformer2_base,
}

__all__ = [
    'MossFormerConfig', 'MossFormer2Config', 'AnyConfig', 'config_from_dict', 'mossformer_tiny', 'mossformer2_tiny',
    'mossformer_small',
    'mossformer_medium', 'mossformer_large', 'mossformer2_base', 'NAMED_SIZES', 'MOSSFORMER', 'MOSSFORMER2',
]
