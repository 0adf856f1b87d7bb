"""The trainer works with the network cut off, and fails fast on a hub id it cannot reach.

The training run happens in a fresh interpreter whose first lines install a socket
guard (`subprocess_utils.NETWORK_GUARD`): `socket.socket.connect`, `socket.socket.connect_ex`,
`socket.create_connection` and `socket.getaddrinfo` record the attempt and raise
a `ConnectionRefusedError` (what an unplugged machine gives, so that code which
copes with a dead network copes here too; every attempt is recorded even when the
error is swallowed).  At the end the script tries one connection itself to prove
the guard was still in place.

A hub id that is not reachable fails in seconds with `HubUnavailableError` from the
trainer itself.  Through ModelScope's `build_trainer`, a string `model` is first
looked up by ModelScope (`is_model_from_trusted_source`, `is_official_hub_path`,
in modelscope/trainers/builder.py, before any code of this package runs): with the
hub unreachable that takes ~30 s of retries and raises ModelScope's
``ValueError('invalid model repo path ...')`` (ModelScope 1.40.2).  So the model-id
case is tested on the trainer class, and the dataset-name case (which only this
package resolves) through `build_trainer`.
"""
from __future__ import annotations

import logging
import textwrap
import time

import pytest

from .subprocess_utils import NETWORK_GUARD, RESULT_PREFIX, demo_corpus, run_python, write_model_dir

# subprocesses (fresh interpreters, torchrun, pip builds): slow, still run in CI
pytestmark = pytest.mark.slow

TINY_MODEL = {'type': 'speech_mossformer2_separation_temporal_8k', 'enc_channels': 16, 'model_dim': 16,
              'num_blocks': 1, 'group_size': 16, 'query_key_dim': 16, 'fsmn_inner_channels': 16,
              'fsmn_memory_order': 4}

# argv: model_dir train_csv eval_csv test_csv work_dir
OFFLINE_SCRIPT = NETWORK_GUARD + textwrap.dedent(f'''
    import json, sys, time

    import modelscope_mossformer  # noqa: F401 - registers the trainer
    from modelscope.metainfo import Trainers
    from modelscope.trainers import build_trainer

    model_dir, train_csv, eval_csv, test_csv, work_dir = sys.argv[1:6]
    started = time.perf_counter()
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=model_dir, train_dataset=train_csv, eval_dataset=eval_csv, work_dir=work_dir, max_epochs=1))
    build_seconds = time.perf_counter() - started
    after_build = list(NETWORK_ATTEMPTS)
    history = trainer.train()['epochs']
    trainer.eval_dataset = test_csv
    scores = trainer.evaluate()

    attempts = list(NETWORK_ATTEMPTS)
    print({RESULT_PREFIX!r} + json.dumps({{
        'build_seconds': build_seconds, 'attempts_after_build': after_build, 'attempts': attempts,
        'guard_active': guard_still_installed(), 'epochs': [record['epoch'] for record in history],
        'scores': sorted(scores)}}))
''')


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return demo_corpus(tmp_path_factory.mktemp('offline') / 'corpus', train_mixtures=2)


def test_build_train_and_evaluate_make_no_network_attempt(corpus, tmp_path):
    model_dir = write_model_dir(tmp_path / 'model', TINY_MODEL,
                                train={'segment_seconds': 0.5, 'batch_size': 1, 'progressbar': False})
    result = run_python(OFFLINE_SCRIPT, str(model_dir), str(corpus.csv['train']), str(corpus.csv['validation']),
                        str(corpus.csv['test']), str(tmp_path / 'work'), cwd=tmp_path)

    assert result['guard_active']
    assert result['attempts_after_build'] == [] and result['attempts'] == []
    # no time limit here (the suite must hold on a loaded machine): the guard proves no hub was asked
    assert result['epochs'] == [1]
    assert result['scores'] == ['sdr', 'sdri', 'si-snr', 'si-snri']
    assert (tmp_path / 'work' / 'best_model' / 'configuration.json').is_file()
    assert (tmp_path / 'work' / 'eval_results.csv').is_file()


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Point the package's hub checks at a port nothing listens on."""
    from modelscope_mossformer.data import sources

    monkeypatch.setattr(sources, 'hub_endpoint', lambda: 'http://127.0.0.1:9')
    assert not sources.hub_reachable(timeout=1.0)


@pytest.fixture
def package_log_handlers():
    """Detach the file handlers a trainer adds to the package logger in this process."""
    package_logger = logging.getLogger('modelscope_mossformer')
    before = list(package_logger.handlers)
    yield
    for handler in package_logger.handlers[len(before):]:
        package_logger.removeHandler(handler)
        handler.close()


def test_unreachable_hub_model_id_fails_fast(unreachable_hub, tmp_path):
    """The trainer itself; `build_trainer` with a string id asks the hub first (see the module docstring)."""
    from modelscope_mossformer.data.sources import HubUnavailableError
    from modelscope_mossformer.trainer import SpeechSeparationTrainer

    started = time.perf_counter()
    with pytest.raises(HubUnavailableError, match='not a local directory'):
        SpeechSeparationTrainer(model='no-such-owner/no_such_mossformer_model', work_dir=tmp_path / 'work')
    assert time.perf_counter() - started < 5.0
    assert not (tmp_path / 'work').exists()  # failed before writing anything


def test_unreachable_hub_dataset_fails_fast(unreachable_hub, package_log_handlers, tmp_path):
    from modelscope.metainfo import Trainers
    from modelscope.trainers import build_trainer

    from modelscope_mossformer.data.sources import HubUnavailableError

    model_dir = write_model_dir(tmp_path / 'model', TINY_MODEL)
    trainer = build_trainer(Trainers.speech_separation, default_args=dict(
        model=str(model_dir), train_dataset='no-such-owner/no_such_dataset',
        eval_dataset='no-such-owner/no_such_dataset', work_dir=str(tmp_path / 'work'), max_epochs=1))
    started = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="cannot load dataset 'no-such-owner/no_such_dataset'"):
        trainer.train()
    assert time.perf_counter() - started < 5.0
