"""Packaging: the sdist carries everything its tests need, the LICENSE, and metadata that matches setup.cfg."""
from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

# subprocesses (fresh interpreters, torchrun, pip builds): slow, still run in CI
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]


def _project_files() -> list:
    """The project's files as a clone has them (tracked, plus new files not ignored)."""
    if not (REPO_ROOT / '.git').exists():
        pytest.skip('not a git checkout (e.g. an unpacked sdist)')
    out = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if line and (REPO_ROOT / line).is_file()]


def _build(kind: str, source: Path, out: Path) -> Path:
    """Build an sdist or wheel from `source` with setuptools' PEP 517 backend (offline, no isolation)."""
    code = (f'import sys; from setuptools import build_meta as b; '
            f'print(b.build_{kind}(sys.argv[1]))')
    result = subprocess.run([sys.executable, '-c', code, str(out)], cwd=source, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope='module')
def source_copy(tmp_path_factory):
    """A copy of the project's files (so that building writes nothing into the working tree)."""
    files = _project_files()
    dest = tmp_path_factory.mktemp('source') / 'src'
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, dest / name)
    return dest, files


@pytest.fixture(scope='module')
def sdist(source_copy, tmp_path_factory):
    source, files = source_copy
    archive = _build('sdist', source, tmp_path_factory.mktemp('dist'))
    unpacked = tmp_path_factory.mktemp('unpacked')
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked)
    (root,) = list(unpacked.iterdir())
    return root, files


def test_the_sdist_holds_every_project_file_tests_need(sdist):
    root, files = sdist
    shipped = {str(p.relative_to(root)) for p in root.rglob('*') if p.is_file()}
    wanted = {name for name in files if not name.startswith('.git')}
    assert sorted(wanted - shipped) == []
    for needed in ('LICENSE', 'tests/conftest.py', 'tests/subprocess_utils.py',
                   'tests/data/test_audio.py', 'tests/data/__init__.py', 'constraints.txt', 'scripts/bootstrap.sh',
                   '.ci/run', 'bench/bench_resample.py'):
        assert needed in shipped, needed
    assert not [name for name in shipped if '__pycache__' in name or name.endswith('.pyc')]


def test_the_license_is_the_apache_2_text_and_ships_in_the_wheel(source_copy, tmp_path):
    text = (REPO_ROOT / 'LICENSE').read_text()
    assert text.lstrip().startswith('Apache License') and 'Version 2.0, January 2004' in text
    assert 'END OF TERMS AND CONDITIONS' in text and len(text.splitlines()) > 190
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / 'setup.cfg')
    assert config['metadata']['license'] == 'Apache-2.0'
    wheel = _build('wheel', source_copy[0], tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(name.endswith('.dist-info/licenses/LICENSE') or name.endswith('.dist-info/LICENSE') for name in names)
    assert not [name for name in names if name.startswith(('tests/', 'bench/', 'examples/', 'scripts/'))]
    assert 'modelscope_mossformer/configs/mossformer_8k.json' in names


def test_tests_run_from_the_unpacked_sdist(sdist):
    """The unpacked sdist's own copies of the package and tests: collected in full, one file run."""
    root, _ = sdist
    env = dict(os.environ, PYTHONPATH=str(root), HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1')
    collect = subprocess.run([sys.executable, '-m', 'pytest', '--collect-only', '-q', '-p', 'no:cacheprovider'],
                             cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert collect.returncode == 0, collect.stdout[-3000:] + collect.stderr[-3000:]
    assert 'error' not in collect.stdout.splitlines()[-1].lower()
    run = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'tests/data/test_audio.py',
                          '-W', 'error::pytest.PytestUnknownMarkWarning'],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:]
    where = subprocess.run([sys.executable, '-c', 'import modelscope_mossformer as m; print(m.__file__)'], cwd=root,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(root))  # the sdist's copy was the one tested
