"""Running test scripts in a fresh interpreter, and what those scripts share.

* `run_python` runs a script's source with ``python -c`` (the package importable
  through `subprocess_env`), asserts exit code 0 and returns the JSON of the one
  stdout line that starts with `RESULT_PREFIX`.
* `NETWORK_GUARD` is source text to put first in such a script: it replaces
  `socket.socket.connect`, `socket.socket.connect_ex`, `socket.create_connection`
  and `socket.getaddrinfo` by functions that record the attempt in
  ``NETWORK_ATTEMPTS`` and raise ``NetworkBlocked``, a `ConnectionRefusedError`
  (what an unplugged machine gives, so that code which copes with a dead network
  copes here too) whose message starts with ``network access attempted``.  Every
  attempt is recorded even when the error is swallowed.  ``guard_still_installed()``
  tries one connection itself and tells whether the guard stopped it.
* `demo_corpus` and `write_model_dir` write the tiny inputs of a training run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict

REPO_ROOT = Path(__file__).resolve().parents[1]
TASK = 'speech-separation'
RESULT_PREFIX = 'RESULT '

NETWORK_GUARD = textwrap.dedent('''
    import socket

    NETWORK_ATTEMPTS = []


    class NetworkBlocked(ConnectionRefusedError):
        pass


    def _network_guard(name):
        def blocked(*args, **kwargs):
            NETWORK_ATTEMPTS.append(f'{name}{args!r}'[:300])
            raise NetworkBlocked(f'network access attempted: {name}{args!r}')
        return blocked


    socket.socket.connect = _network_guard('socket.connect')
    socket.socket.connect_ex = _network_guard('socket.connect_ex')
    socket.create_connection = _network_guard('socket.create_connection')
    socket.getaddrinfo = _network_guard('socket.getaddrinfo')


    def guard_still_installed():
        """Try one connection ourselves; True when the guard stops (and records) it.

        The attempt made here is removed from NETWORK_ATTEMPTS again."""
        before = len(NETWORK_ATTEMPTS)
        try:
            socket.create_connection(('127.0.0.1', 9), timeout=1)
        except NetworkBlocked as err:
            installed = str(err).startswith('network access attempted') and len(NETWORK_ATTEMPTS) > before
        else:
            installed = False
        del NETWORK_ATTEMPTS[before:]
        return installed
''')


def subprocess_env(**overrides: str) -> Dict[str, str]:
    """This process's environment with the repo root first on PYTHONPATH, plus `overrides`."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get('PYTHONPATH')) if p)
    env.update(overrides)
    return env


def run_python(script: str, *args: str, cwd: Path, timeout: float = 300) -> Dict[str, Any]:
    """Run `script` in a fresh interpreter; assert exit code 0; return the JSON it printed after RESULT_PREFIX."""
    proc = subprocess.run([sys.executable, '-c', script, *args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}'
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert len(lines) == 1, f'no single result line\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}'
    return json.loads(lines[0][len(RESULT_PREFIX):])


def demo_corpus(directory: Path, train_mixtures: int):
    """A tiny demo corpus of 1 s mixtures: `train_mixtures` to train on, one to validate, one to test."""
    from modelscope_mossformer.data.synth import DemoCorpusSpec, generate_demo_corpus

    return generate_demo_corpus(directory, DemoCorpusSpec(
        train_mixtures=train_mixtures, validation_mixtures=1, test_mixtures=1, min_seconds=1.0, max_seconds=1.0,
        num_voices=6, validation_voices=2, test_voices=2))


def write_model_dir(directory: Path, model: Dict[str, Any], **sections: Any) -> Path:
    """`directory`/configuration.json of a speech-separation model: the `model` section plus `sections`
    (``train``, ``pipeline``, ...).  `directory` must not exist yet."""
    directory.mkdir(parents=True)
    configuration = {'framework': 'pytorch', 'task': TASK, 'model': model, **sections}
    (directory / 'configuration.json').write_text(json.dumps(configuration, indent=4))
    return directory
