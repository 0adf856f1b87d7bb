"""Model directories laid out exactly as ModelScope releases them (the artifacts users download).

`write_released_model_dir` writes what `snapshot_download('damo/speech_mossformer_separation_temporal_8k')`
or `...mossformer2...` puts on disk:

* MossFormer: ``configuration.json`` with the ``model``, ``pipeline``, ``preprocessor``, ``train`` and
  ``evaluation`` sections, the SpeechBrain 0.5 ``hparams.yaml`` that ModelScope's built-in trainer reads,
  and the weights as three state dicts ``encoder.bin`` / ``decoder.bin`` / ``masknet.bin``;
* MossFormer2: ``configuration.json`` without a ``train`` section and one ``pytorch_model.pt``.

The weights are saved by ModelScope's own classes (randomly initialised, seeded), so every test that uses
these directories proves that this package reads the real thing, not its own output.  The released key sets
(ModelScope 1.40.2's ``SeparationTrainer`` reads ``train.max_epochs``, ``train.seed``,
``train.optimizer.{lr, weight_decay, clip_grad_norm}`` and ``train.lr_scheduler.{factor, patience,
dont_halve_until_epoch}``; the model classes read the ``model`` keys below) are spelled out here once.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Union

import torch

from modelscope_mossformer.models import MossFormer2Config, MossFormerConfig

from modelscope_mossformer.models.reference import reference_model

MOSSFORMER_TYPE = 'speech_mossformer_separation_temporal_8k'
MOSSFORMER2_TYPE = 'speech_mossformer2_separation_temporal_8k'
HUB_IDS = {'mossformer': 'damo/speech_mossformer_separation_temporal_8k',
           'mossformer2': 'damo/speech_mossformer2_separation_temporal_8k'}

# The `model` sections as released (released sizes).
RELEASED_MOSSFORMER_MODEL = {
    'type': MOSSFORMER_TYPE, 'num_spks': 2, 'kernel_size': 16, 'in_channels': 512, 'out_channels': 512,
    'stride': 8, 'bias': False, 'num_blocks': 24, 'd_model': 512, 'attn_dropout': 0.1, 'group_size': 256,
    'query_key_dim': 128, 'expansion_factor': 4.0, 'causal': False, 'norm': 'ln',
}
RELEASED_MOSSFORMER2_MODEL = {
    'type': MOSSFORMER2_TYPE, 'num_spks': 2, 'kernel_size': 16, 'in_channels': 512, 'out_channels': 512,
    'num_blocks': 24, 'norm': 'ln', 'skip_around_intra': True, 'use_global_pos_enc': True, 'max_length': 20000,
}
# The released MossFormer `train` section: what ModelScope's built-in trainer reads.
RELEASED_TRAIN = {
    'max_epochs': 200,
    'seed': 10,
    'optimizer': {'type': 'Adam', 'lr': 1.5e-4, 'weight_decay': 0, 'clip_grad_norm': 5},
    'lr_scheduler': {'factor': 0.5, 'patience': 2, 'dont_halve_until_epoch': 85},
}
RELEASED_PREPROCESSOR = {'sample_rate': 8000}
RELEASED_EVALUATION = {'metrics': ['si-snr']}

# Tiny sizes keep the released key set and change only widths and depths.
TINY_MOSSFORMER = {'in_channels': 32, 'out_channels': 32, 'd_model': 32, 'num_blocks': 2, 'group_size': 16,
                   'query_key_dim': 16}
TINY_MOSSFORMER2 = {'in_channels': 32, 'out_channels': 32, 'num_blocks': 1}

# SpeechBrain 0.5 syntax, as shipped next to the released MossFormer (abridged: the classes it names were
# removed in SpeechBrain 1.x, which is why ModelScope's built-in trainer fails there).  This package never
# parses it.
RELEASED_HPARAMS = """\
# Generated 2022-11-29 from:
# hparams/mossformer.yaml
seed: 10
__set_seed: !apply:torch.manual_seed [!ref <seed>]
output_folder: !ref results/mossformer/<seed>
save_folder: !ref <output_folder>/save
train_log: !ref <output_folder>/train_log.txt
num_spks: 2
sample_rate: 8000
N_epochs: 200
batch_size: 1
lr: 0.00015
clip_grad_norm: 5
loss_upper_lim: 999999
limit_training_signal_len: false
training_signal_len: 32000000
threshold_byloss: true
threshold: -30
use_speedperturb: true
use_rand_shift: false
min_shift: -8000
max_shift: 8000
use_wavedrop: false
speedperturb: !new:speechbrain.lobes.augment.TimeDomainSpecAugment
    perturb_prob: 1.0
    drop_freq_prob: 0.0
    drop_chunk_prob: 0.0
    sample_rate: !ref <sample_rate>
    speeds: [95, 100, 105]
wavedrop: !new:speechbrain.lobes.augment.TimeDomainSpecAugment
    perturb_prob: 0.0
    drop_freq_prob: 1.0
    drop_chunk_prob: 1.0
    sample_rate: !ref <sample_rate>
optimizer: !name:torch.optim.Adam
    lr: !ref <lr>
    weight_decay: !ref <weight_decay>
weight_decay: 0
loss: !name:speechbrain.nnet.losses.get_si_snr_with_pitwrapper
factor: 0.5
patience: 2
dont_halve_until_epoch: 85
lr_scheduler: !new:speechbrain.nnet.schedulers.ReduceLROnPlateau
    factor: !ref <factor>
    patience: !ref <patience>
    dont_halve_until_epoch: !ref <dont_halve_until_epoch>
epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter
    limit: !ref <N_epochs>
dataloader_opts:
    batch_size: !ref <batch_size>
    num_workers: 0
checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
    checkpoints_dir: !ref <save_folder>
train_logger: !new:speechbrain.utils.train_logger.FileTrainLogger
    save_file: !ref <train_log>
"""


def released_configuration(family: str, size: str = 'tiny', num_spks: int = 2) -> Dict[str, Any]:
    """The configuration.json content of a released model dir (`size` 'tiny' or 'released')."""
    if size not in ('tiny', 'released'):
        raise ValueError(f"size must be 'tiny' or 'released', got {size!r}")
    if family == 'mossformer':
        model = dict(RELEASED_MOSSFORMER_MODEL, **(TINY_MOSSFORMER if size == 'tiny' else {}))
    elif family == 'mossformer2':
        model = dict(RELEASED_MOSSFORMER2_MODEL, **(TINY_MOSSFORMER2 if size == 'tiny' else {}))
    else:
        raise ValueError(f"family must be 'mossformer' or 'mossformer2', got {family!r}")
    model['num_spks'] = num_spks
    configuration: Dict[str, Any] = {
        'framework': 'pytorch', 'task': 'speech-separation', 'pipeline': {'type': model['type']}, 'model': model,
        'preprocessor': copy.deepcopy(RELEASED_PREPROCESSOR),
    }
    if family == 'mossformer':
        configuration['train'] = copy.deepcopy(RELEASED_TRAIN)
        configuration['evaluation'] = copy.deepcopy(RELEASED_EVALUATION)
    return configuration


def released_config_object(family: str, size: str = 'tiny', num_spks: int = 2) -> MossFormerConfig:
    """This package's config for the same model (to compare against)."""
    model = released_configuration(family, size, num_spks)['model']
    cls = MossFormerConfig if family == 'mossformer' else MossFormer2Config
    return cls.from_model_kwargs({k: v for k, v in model.items() if k != 'type'})


def write_released_model_dir(directory: Union[str, Path], family: str = 'mossformer', size: str = 'tiny',
                             num_spks: int = 2, seed: int = 0, weights: bool = True) -> Path:
    """Write a model dir exactly as released; the weights come from ModelScope's own class, seeded."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    configuration = released_configuration(family, size, num_spks)
    (directory / 'configuration.json').write_text(json.dumps(configuration, indent=4))
    if family == 'mossformer':
        (directory / 'hparams.yaml').write_text(RELEASED_HPARAMS.replace('num_spks: 2', f'num_spks: {num_spks}'))
    if weights:
        torch.manual_seed(seed)
        reference = reference_model(released_config_object(family, size, num_spks))
        if family == 'mossformer':
            torch.save(reference.encoder.state_dict(), directory / 'encoder.bin')
            torch.save(reference.decoder.state_dict(), directory / 'decoder.bin')
            torch.save(reference.mask_net.state_dict(), directory / 'masknet.bin')
        else:
            torch.save(reference.state_dict(), directory / 'pytorch_model.pt')
    return directory
