"""Every entry point on model directories laid out exactly as released, and ModelScope's own test contract.

The directories come from `tests/released.py`: the released configuration.json (with the MossFormer
``train`` section, none for MossFormer2), the SpeechBrain 0.5 hparams.yaml, weights saved by ModelScope's
own classes.  ModelScope's tests for this feature (tests/trainers/audio/test_separation_trainer.py and
tests/pipelines/test_speech_separation.py in the modelscope repository) express the contract re-tested
here with a local copy instead of the hub id:

* `trainer.model.load_check_point(device=trainer.device)` before `train()`; after `max_epochs=2`,
  ``work_dir/train_log.txt`` exists and ``work_dir/save/`` holds the latest and the best checkpoint (one
  entry when the last epoch is the best, two when it is not);
* `evaluate(None)` with ``train_dataset=None`` returns a dict with ``si-snr``;
* the pipeline returns ``output_pcm_list`` with one int16 entry per speaker for both released model types.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import socket
import textwrap

import numpy as np
import pytest
import soundfile
import torch
from modelscope.metainfo import Trainers
from modelscope.models import Model
from modelscope.msdatasets import MsDataset
from modelscope.outputs import OutputKeys
from modelscope.pipelines import pipeline
from modelscope.preprocessors.audio import AudioBrainPreprocessor as ModelScopeAudioBrainPreprocessor
from modelscope.trainers import build_trainer
from modelscope.utils.constant import Tasks

from modelscope_mossformer import AudioBrainPreprocessor
from modelscope_mossformer.cli import main
from modelscope_mossformer.data import sources
from modelscope_mossformer.data.sources import HubUnavailableError
from modelscope_mossformer.hub import resolve_model_dir
from modelscope_mossformer.model import PACKAGE_KEY, MossFormerSeparation
from modelscope_mossformer.models.checkpoint import released_state_dict
from modelscope_mossformer.trainer import SpeechSeparationTrainer

from .released import HUB_IDS, RELEASED_TRAIN, released_config_object, write_released_model_dir
from modelscope_mossformer.models.reference import reference_model
from .subprocess_utils import NETWORK_GUARD, RESULT_PREFIX, demo_corpus, run_python

FAMILIES = ('mossformer', 'mossformer2')
QUIET = ['--device', 'cpu', '--no-progress']


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return demo_corpus(tmp_path_factory.mktemp('released') / 'corpus', train_mixtures=2)


def absolute_csv(source_csv, destination, rows=None):
    """A copy of a corpus CSV with absolute paths (ModelScope's AudioBrainPreprocessor reads paths as given)
    and an ``id`` column, as in ModelScope's own test."""
    with open(source_csv, newline='') as handle:
        table = list(csv.DictReader(handle))[:rows]
    columns = [c for c in table[0] if c.endswith(':FILE')]
    with open(destination, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['id'] + columns)
        for index, row in enumerate(table):
            writer.writerow([index] + [str((source_csv.parent / row[c]).resolve()) for c in columns])
    return destination


def rows_dataset(csv_path, preprocessor_class=ModelScopeAudioBrainPreprocessor):
    """ModelScope rows as in its own test: MsDataset over a CSV, one AudioBrainPreprocessor per column."""
    dataset = MsDataset.load('csv', data_files={'test': [str(csv_path)]})
    if hasattr(dataset, 'keys') and not hasattr(dataset, 'to_torch_dataset'):
        dataset = dataset['test']
    return dataset.to_torch_dataset(preprocessors=[
        preprocessor_class(takes='mix_wav:FILE', provides='mix_sig'),
        preprocessor_class(takes='s1_wav:FILE', provides='s1_sig'),
        preprocessor_class(takes='s2_wav:FILE', provides='s2_sig')], to_tensor=False)


def train_log(work_dir):
    return [dict(part.split(': ') for part in line.strip().split(', '))
            for line in (work_dir / 'train_log.txt').read_text().splitlines()]


def checkpoint_entries(work_dir):
    return sorted(os.listdir(work_dir / 'save'))


# ---------------------------------------------------------------------------
# ModelScope's trainer contract
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('family', FAMILIES)
def test_upstream_trainer_contract_on_the_released_layout(family, corpus, tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', family)
    one_utterance = rows_dataset(absolute_csv(corpus.csv['train'], tmp_path / 'test.csv', rows=1))
    work_dir = tmp_path / 'work'
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir), train_dataset=one_utterance, eval_dataset=one_utterance, max_epochs=2,
        work_dir=str(work_dir)))
    assert isinstance(trainer, SpeechSeparationTrainer)
    trainer.model.load_check_point(device=trainer.device)  # model placement, as upstream does first
    trainer.train()

    assert (work_dir / 'train_log.txt').is_file()
    scores = [float(row['valid_si_snr']) for row in train_log(work_dir)]
    assert len(scores) == 2
    # ModelScope's built-in keeps the latest checkpoint and the best one: one folder when they coincide
    assert len(checkpoint_entries(work_dir)) == (1 if scores[1] >= scores[0] else 2)
    if family == 'mossformer':  # the released train section was honoured, not replaced by defaults
        assert trainer.train_cfg['seed'] == RELEASED_TRAIN['seed']
        assert float(train_log(work_dir)[0]['lr']) == pytest.approx(RELEASED_TRAIN['optimizer']['lr'])


def test_save_keeps_latest_and_best_when_the_last_epoch_is_worse(corpus, tmp_path):
    """The case upstream asserts (two entries): here the validation references change after epoch 1."""
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    train_csv = absolute_csv(corpus.csv['train'], tmp_path / 'train.csv', rows=1)
    valid_dir = tmp_path / 'valid'
    valid_dir.mkdir()
    with open(train_csv, newline='') as handle:
        row = next(csv.DictReader(handle))
    for column in ('mix_wav:FILE', 's1_wav:FILE', 's2_wav:FILE'):
        data, rate = soundfile.read(row[column], dtype='float32')
        soundfile.write(valid_dir / f'{column[:2]}.wav', data, rate)
    valid_csv = tmp_path / 'valid.csv'
    valid_csv.write_text('mix_wav:FILE,s1_wav:FILE,s2_wav:FILE\n'
                         f'{valid_dir / "mi.wav"},{valid_dir / "s1.wav"},{valid_dir / "s2.wav"}\n')
    args = dict(model=str(model_dir), train_dataset=str(train_csv), eval_dataset=str(valid_csv),
                work_dir=str(tmp_path / 'work'))
    build_trainer(Trainers.speech_separation, default_args=dict(args, max_epochs=1)).train()
    # references that no estimate of this mixture can match: independent noise (SI-SNR about -39 dB at 1 s)
    for index, name in enumerate(('s1.wav', 's2.wav')):
        source, rate = soundfile.read(valid_dir / name, dtype='float32')
        noise = np.random.default_rng(index).standard_normal(source.shape).astype(np.float32)
        soundfile.write(valid_dir / name, 0.1 * noise / np.abs(noise).max(), rate)
    build_trainer(Trainers.speech_separation, default_args=dict(args, max_epochs=2)).train()

    scores = [float(row['valid_si_snr']) for row in train_log(tmp_path / 'work')]
    assert scores[1] < scores[0]
    assert len(checkpoint_entries(tmp_path / 'work')) == 2
    best = json.loads((tmp_path / 'work' / 'best_model' / 'configuration.json').read_text())
    assert best['train_result']['epoch'] == 1


@pytest.mark.parametrize('family', FAMILIES)
def test_upstream_evaluate_contract_without_a_train_dataset(family, corpus, tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', family)
    dataset = rows_dataset(absolute_csv(corpus.csv['test'], tmp_path / 'test.csv'))
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir), train_dataset=None, eval_dataset=dataset, max_epochs=2, work_dir=str(tmp_path / 'w')))
    result = trainer.evaluate(None)
    assert 'si-snr' in result and np.isfinite(result['si-snr'])


@pytest.mark.parametrize('family', FAMILIES)
def test_upstream_pipeline_contract_on_both_released_types(family, corpus, tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', family)
    mixture = absolute_csv(corpus.csv['test'], tmp_path / 't.csv', rows=1)
    with open(mixture, newline='') as handle:
        mix_path = next(csv.DictReader(handle))['mix_wav:FILE']
    separation = pipeline(Tasks.speech_separation, model=str(model_dir))
    result = separation(mix_path)
    assert OutputKeys.OUTPUT_PCM_LIST in result
    pcm = result[OutputKeys.OUTPUT_PCM_LIST]
    assert len(pcm) == 2
    frames = soundfile.info(mix_path).frames
    for entry in pcm:
        samples = np.frombuffer(entry, dtype='<i2')  # int16 PCM, one entry per speaker
        assert samples.size == frames and np.abs(samples).max() > 0


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_released_sizes_load_strictly_and_separate(family, corpus, tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', family, size='released', seed=3)
    model = Model.from_pretrained(str(model_dir))
    assert isinstance(model, MossFormerSeparation) and model.config == released_config_object(family, 'released')
    torch.manual_seed(3)
    reference = reference_model(released_config_object(family, 'released'))
    ours = released_state_dict(model.separator)
    for key, value in reference.state_dict().items():
        if not key.endswith('rotary_pos_emb.freqs'):
            assert torch.equal(ours[key], value), key
    with open(absolute_csv(corpus.csv['test'], tmp_path / 't.csv', rows=1), newline='') as handle:
        mix_path = next(csv.DictReader(handle))['mix_wav:FILE']
    result = pipeline(Tasks.speech_separation, model=str(model_dir))(mix_path)
    assert len(result[OutputKeys.OUTPUT_PCM_LIST]) == 2


# ---------------------------------------------------------------------------
# the article's snippet, unchanged but for local paths
# ---------------------------------------------------------------------------

SNIPPET = textwrap.dedent('''
    import json, sys
    MODEL_DIR, TRAIN_CSV, VALID_CSV = sys.argv[1:4]

    import modelscope_mossformer                 # registers this package's components in ModelScope
    from modelscope.metainfo import Trainers
    from modelscope.msdatasets import MsDataset
    from modelscope.trainers import build_trainer
    from modelscope_mossformer import AudioBrainPreprocessor  # ModelScope's own one must work too

    def load(split):
        return MsDataset.load('csv', data_files={'train': [TRAIN_CSV], 'validation': [VALID_CSV]},
                              split=split).to_torch_dataset(preprocessors=[
            AudioBrainPreprocessor(takes='mix_wav:FILE', provides='mix_sig'),
            AudioBrainPreprocessor(takes='s1_wav:FILE', provides='s1_sig'),
            AudioBrainPreprocessor(takes='s2_wav:FILE', provides='s2_sig')], to_tensor=False)

    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=MODEL_DIR,
        train_dataset=load('train'), eval_dataset=load('validation'), work_dir='./train_dir'))
    trainer.train()                                               # best model kept in work_dir
    trainer.model.load_check_point(device=trainer.device)
    print(trainer.evaluate(None))
''')


@pytest.mark.parametrize('family', FAMILIES)
def test_the_article_snippet_runs_on_the_released_layout(family, corpus, tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', family)
    # the one edit to the downloaded directory: two epochs instead of the released 200 (MossFormer2's
    # configuration has no train section, so this adds one with that single key)
    configuration = json.loads((model_dir / 'configuration.json').read_text())
    configuration.setdefault('train', {})['max_epochs'] = 2
    (model_dir / 'configuration.json').write_text(json.dumps(configuration, indent=4))
    train_csv = absolute_csv(corpus.csv['train'], tmp_path / 'train.csv')
    valid_csv = absolute_csv(corpus.csv['validation'], tmp_path / 'valid.csv')
    script = SNIPPET + f'print({RESULT_PREFIX!r} + json.dumps(trainer.evaluate(None)))\n'
    scores = run_python(script, str(model_dir), str(train_csv), str(valid_csv), cwd=tmp_path)
    assert set(scores) == {'si-snr', 'si-snri', 'sdr', 'sdri'}
    assert [int(row['epoch']) for row in train_log(tmp_path / 'train_dir')] == [1, 2]
    assert (tmp_path / 'train_dir' / 'best_model' / 'configuration.json').is_file()


# ---------------------------------------------------------------------------
# the released configuration.json as it is
# ---------------------------------------------------------------------------


def test_released_keys_are_honoured_and_written_back_in_their_spelling(tmp_path, caplog):
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    caplog.set_level(logging.INFO, logger='modelscope_mossformer')
    trainer = SpeechSeparationTrainer(model=str(model_dir), work_dir=str(tmp_path / 'work'))
    cfg = trainer.train_cfg
    assert (cfg['max_epochs'], cfg['seed'], cfg['lr'], cfg['weight_decay'], cfg['max_grad_norm']) == \
        (200, 10, 1.5e-4, 0.0, 5.0)
    assert (cfg['lr_scheduler']['factor'], cfg['lr_scheduler']['patience'],
            cfg['lr_scheduler']['dont_halve_until_epoch']) == (0.5, 2, 85)
    assert trainer._run_options().max_grad_norm == 5.0
    hparams_lines = [r for r in caplog.records if 'hparams.yaml' in r.getMessage()]
    assert len(hparams_lines) == 1 and 'not read' in hparams_lines[0].getMessage()

    written = json.loads((tmp_path / 'work' / 'configuration.json').read_text())
    released = json.loads((model_dir / 'configuration.json').read_text())
    assert written['train']['optimizer'] == {'type': 'Adam', 'lr': 1.5e-4, 'weight_decay': 0.0,
                                             'clip_grad_norm': 5.0}
    assert {k: written['train']['lr_scheduler'][k] for k in released['train']['lr_scheduler']} == \
        released['train']['lr_scheduler']
    assert written['preprocessor'] == released['preprocessor'] and written['evaluation'] == released['evaluation']


def test_hparams_yaml_is_never_parsed(tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    marker = tmp_path / 'ran'
    (model_dir / 'hparams.yaml').write_text(f'touch: !apply:pathlib.Path.touch [!new:pathlib.Path ["{marker}"]]\n')
    SpeechSeparationTrainer(model=str(model_dir), work_dir=str(tmp_path / 'work'))
    assert not marker.exists()


@pytest.mark.parametrize('optimizer, message', [
    ({'type': 'SGD', 'lr': 0.01}, r"train\.optimizer\.type 'SGD' is not supported by this trainer; supported: "
                                  r"\['Adam'\]"),
    ({'type': 'Adam', 'lr': 1e-4, 'betas': [0.9, 0.98]}, r'unknown key train\.optimizer\.betas'),
])
def test_released_keys_this_trainer_cannot_honour_are_refused_naming_the_file(optimizer, message, tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer', weights=False)
    configuration = json.loads((model_dir / 'configuration.json').read_text())
    configuration['train']['optimizer'] = optimizer
    (model_dir / 'configuration.json').write_text(json.dumps(configuration))
    with pytest.raises(ValueError, match=message) as caught:
        build_trainer(Trainers.speech_separation, default_args=dict(model=str(model_dir),
                                                                    work_dir=str(tmp_path / 'work')))
    assert str(model_dir / 'configuration.json') in str(caught.value)


def test_released_mossformer2_without_train_section_takes_the_defaults(tmp_path):
    from modelscope_mossformer.train_config import DEFAULT_TRAIN_CONFIG

    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer2', weights=False)
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(model=str(model_dir),
                                                                         work_dir=str(tmp_path / 'work')))
    assert trainer.train_cfg == DEFAULT_TRAIN_CONFIG


WRITTEN_DIRS_IN_MODELSCOPE = textwrap.dedent('''
    import json, sys
    work_dir = sys.argv[1]
    # no `import modelscope_mossformer`: ModelScope's own classes only
    from modelscope.models import Model
    from modelscope.pipelines import pipeline
    from modelscope.utils.config import Config

    best = work_dir + '/best_model'
    model = Model.from_pretrained(best)
    output = pipeline('speech-separation', model=best)(sys.argv[2])
    cfg = Config.from_file(work_dir + '/configuration.json').train
    # exactly the attributes ModelScope's built-in SeparationTrainer reads
    read = [cfg.max_epochs, cfg.seed, cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.clip_grad_norm,
            cfg.lr_scheduler.factor, cfg.lr_scheduler.patience, cfg.lr_scheduler.dont_halve_until_epoch]
    print(RESULT_PREFIX + json.dumps({'class': type(model).__module__ + '.' + type(model).__name__,
                                      'pcm': len(output['output_pcm_list']), 'train': read,
                                      'note': json.load(open(best + '/configuration.json')).get(NOTE_KEY)}))
''')


def test_written_dirs_load_in_modelscopes_own_classes_and_say_what_they_need(corpus, tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    work_dir = tmp_path / 'work'
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir), train_dataset=str(corpus.csv['train']), eval_dataset=str(corpus.csv['validation']),
        work_dir=str(work_dir), max_epochs=1, train={'progressbar': False}))
    trainer.train()
    mix = absolute_csv(corpus.csv['test'], tmp_path / 't.csv', rows=1)
    with open(mix, newline='') as handle:
        mix_path = next(csv.DictReader(handle))['mix_wav:FILE']
    script = f'RESULT_PREFIX = {RESULT_PREFIX!r}\nNOTE_KEY = {PACKAGE_KEY!r}\n' + WRITTEN_DIRS_IN_MODELSCOPE
    result = run_python(script, str(work_dir), mix_path, cwd=tmp_path)
    assert result['class'] == 'modelscope.models.audio.separation.mossformer.MossFormer'
    assert result['pcm'] == 2
    assert result['train'] == [1, 10, 1.5e-4, 0.0, 5.0, 0.5, 2, 85]
    assert 'import modelscope_mossformer' in result['note']['requires']


WRONG_STACK = textwrap.dedent('''
    import json, sys
    import modelscope_mossformer
    from modelscope.models import MODELS
    from modelscope.models.audio.separation.mossformer import MossFormer as BuiltIn
    from modelscope.pipelines import pipeline
    from modelscope_mossformer import MossFormerSeparation

    # someone registers ModelScope's class back under the released name after this package was imported
    MODELS.register_module('speech-separation', module_name='speech_mossformer_separation_temporal_8k',
                           force=True)(BuiltIn)
    errors = []
    for build in (lambda: MossFormerSeparation.from_pretrained(sys.argv[1]),
                  lambda: pipeline('speech-separation', model=sys.argv[1])):
        try:
            build()
            errors.append(None)
        except Exception as err:
            errors.append(f'{type(err).__name__}: {err}')
    print(RESULT_PREFIX + json.dumps(errors))
''')


def test_a_wrong_stack_gives_a_clear_error_from_this_packages_loaders(tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    errors = run_python(f'RESULT_PREFIX = {RESULT_PREFIX!r}\n' + WRONG_STACK, str(model_dir), cwd=tmp_path)
    for error in errors:
        assert error is not None
        assert 'modelscope.models.audio.separation.mossformer.MossFormer' in error
        assert 'import modelscope_mossformer' in error


# ---------------------------------------------------------------------------
# other entry points on released dirs: init_checkpoint and the command line
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('family', FAMILIES)
def test_fine_tuning_from_a_released_dir(family, corpus, tmp_path, caplog):
    start = write_released_model_dir(tmp_path / 'released', family, seed=5)
    model_dir = write_released_model_dir(tmp_path / 'model', family, weights=False)
    caplog.set_level(logging.INFO, logger='modelscope_mossformer')
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir), train_dataset=str(corpus.csv['train']), eval_dataset=str(corpus.csv['validation']),
        work_dir=str(tmp_path / 'work'), max_epochs=1, init_checkpoint=str(start), train={'progressbar': False}))
    trainer.train()
    assert f'fine-tuning from {start}' in caplog.text
    assert f'(modelscope-{family})' in caplog.text


@pytest.mark.parametrize('family', FAMILIES)
def test_command_line_on_released_dirs(family, corpus, tmp_path):
    model_dir = write_released_model_dir(tmp_path / 'model', family)
    mix = corpus.csv['test'].parent / next(csv.DictReader(open(corpus.csv['test'])))['mix_wav:FILE']
    assert main(['separate', str(mix), '--model', str(model_dir), '--out', str(tmp_path / 'sep'), *QUIET]) == 0
    assert sorted(p.name for p in (tmp_path / 'sep').glob('*.wav')) == [f'{mix.stem}_s1.wav', f'{mix.stem}_s2.wav']
    assert main(['evaluate', '--model', str(model_dir), '--data', str(corpus.csv['test']),
                 '--out', str(tmp_path / 'eval'), *QUIET]) == 0
    assert main(['train', '--config', str(model_dir), '--train', str(corpus.csv['train']), '--valid',
                 str(corpus.csv['validation']), '--work-dir', str(tmp_path / 'work'), '--max-epochs', '1',
                 *QUIET]) == 0
    assert (tmp_path / 'work' / 'best_model' / 'configuration.json').is_file()


# ---------------------------------------------------------------------------
# hub ids offline: the local cache, never the network
# ---------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    attempts = []

    def blocked(name):
        def refuse(*args, **kwargs):
            attempts.append(name)
            raise ConnectionRefusedError(f'network access attempted: {name}')
        return refuse

    for name in ('connect', 'connect_ex'):
        monkeypatch.setattr(socket.socket, name, blocked(f'socket.{name}'))
    monkeypatch.setattr(socket, 'create_connection', blocked('create_connection'))
    monkeypatch.setattr(socket, 'getaddrinfo', blocked('getaddrinfo'))
    return attempts


@pytest.fixture(scope='module')
def hub_cache(tmp_path_factory):
    """ModelScope's cache in a temporary folder, holding the released MossFormer under the damo/ id.

    One cache for the whole module: ModelScope's hub client remembers where it found an id within a process,
    so every test here must see the same cache root."""
    root = tmp_path_factory.mktemp('modelscope_cache')
    owner, name = HUB_IDS['mossformer'].split('/')
    directory = write_released_model_dir(root / 'models' / owner / name, 'mossformer')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('MODELSCOPE_CACHE', str(root))
        yield directory


def test_a_cached_hub_id_resolves_without_network(hub_cache, no_network):
    # the iic/ namespace names the same released models as damo/; the cache holds the damo/ copy
    for model_id in ('iic/speech_mossformer_separation_temporal_8k', HUB_IDS['mossformer']):
        assert resolve_model_dir(model_id) == hub_cache
        model = MossFormerSeparation.from_pretrained(model_id)
        assert isinstance(model, MossFormerSeparation) and model.weights_source is not None
        assert model.model_dir == str(hub_cache)
    assert no_network == []


def test_an_uncached_hub_id_fails_at_once_saying_what_to_do(hub_cache, monkeypatch):
    monkeypatch.setattr(sources, 'hub_endpoint', lambda: 'http://127.0.0.1:9')  # closed port: refused at once
    with pytest.raises(HubUnavailableError, match=r"'damo/not_downloaded' is not a local directory, is not in "
                                                  r"ModelScope's local cache") as caught:
        resolve_model_dir('damo/not_downloaded')
    assert "snapshot_download('damo/not_downloaded')" in str(caught.value)
    with pytest.raises(FileNotFoundError, match='no such directory'):
        resolve_model_dir('./no/such/dir')


def test_the_cli_uses_a_cached_hub_id(hub_cache, corpus, tmp_path, no_network):
    mix = corpus.csv['test'].parent / next(csv.DictReader(open(corpus.csv['test'])))['mix_wav:FILE']
    assert main(['separate', str(mix), '--model', HUB_IDS['mossformer'], '--out', str(tmp_path / 'sep'),
                 *QUIET]) == 0
    assert len(list((tmp_path / 'sep').glob('*.wav'))) == 2
    assert no_network == []


HUB_ID_TRAINER = NETWORK_GUARD + textwrap.dedent('''
    import json, sys
    from modelscope_mossformer.trainer import SpeechSeparationTrainer

    trainer = SpeechSeparationTrainer(model=sys.argv[1], train_dataset=sys.argv[2], eval_dataset=sys.argv[3],
                                      work_dir=sys.argv[4], max_epochs=1, train={'progressbar': False})
    trainer.train()
    scores = trainer.evaluate(None)
    print(RESULT_PREFIX + json.dumps({'attempts': NETWORK_ATTEMPTS, 'guard': guard_still_installed(),
                                      'model_dir': trainer.model.model_dir, 'scores': sorted(scores)}))
''')


def test_the_trainer_constructed_directly_trains_a_cached_hub_id_offline(hub_cache, corpus, tmp_path):
    script = f'RESULT_PREFIX = {RESULT_PREFIX!r}\n' + HUB_ID_TRAINER
    result = run_python(script, HUB_IDS['mossformer'], str(corpus.csv['train']), str(corpus.csv['validation']),
                        str(tmp_path / 'work'), cwd=tmp_path)
    assert result['guard'] and result['attempts'] == []
    assert result['scores'] == ['sdr', 'sdri', 'si-snr', 'si-snri']
    assert result['model_dir'] == str(tmp_path / 'work' / 'best_model')
