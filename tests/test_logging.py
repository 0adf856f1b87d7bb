"""Logging: the library adds its work_dir/log.txt handler and changes no logger's level; the CLI's -q holds
for SpeechBrain's lines too."""
from __future__ import annotations

import logging
import subprocess
import sys

from modelscope_mossformer.trainer import SpeechSeparationTrainer

from .released import write_released_model_dir
from .subprocess_utils import demo_corpus, subprocess_env


def _levels():
    names = ['', 'modelscope_mossformer', 'modelscope_mossformer.trainer', 'speechbrain', 'modelscope']
    return {name: logging.getLogger(name).level for name in names}


def test_the_trainer_changes_no_logger_level(tmp_path):
    corpus = demo_corpus(tmp_path / 'corpus', train_mixtures=1)
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    package_logger = logging.getLogger('modelscope_mossformer')
    before = _levels()
    handlers_before = list(package_logger.handlers)
    trainer = SpeechSeparationTrainer(model=str(model_dir), train_dataset=str(corpus.csv['train']),
                                      eval_dataset=str(corpus.csv['validation']), work_dir=str(tmp_path / 'work'),
                                      max_epochs=1, train={'progressbar': False})
    try:
        assert _levels() == before
        added = [h for h in package_logger.handlers if h not in handlers_before]
        assert [getattr(h, 'baseFilename', None) for h in added] == [str(tmp_path / 'work' / 'log.txt')]
        package_logger.warning('a warning reaches log.txt whatever the levels')
        assert 'a warning reaches log.txt' in (tmp_path / 'work' / 'log.txt').read_text()
    finally:
        for handler in package_logger.handlers[:]:
            if handler not in handlers_before:
                package_logger.removeHandler(handler)
                handler.close()
    del trainer


def test_quiet_training_prints_no_info_lines(tmp_path):
    corpus = demo_corpus(tmp_path / 'corpus', train_mixtures=1)
    model_dir = write_released_model_dir(tmp_path / 'model', 'mossformer')
    command = [sys.executable, '-m', 'modelscope_mossformer', 'train', '-q', '--no-progress', '--device', 'cpu',
               '--config', str(model_dir), '--train', str(corpus.csv['train']), '--valid',
               str(corpus.csv['validation']), '--work-dir', str(tmp_path / 'work'), '--max-epochs', '1']
    proc = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert 'INFO' not in output, output
    assert 'best model:' in proc.stdout
