"""The README's main-job command runs end to end (smoke-sized here; full size in the README figures)."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import soundfile

# subprocesses (fresh interpreters, torchrun, pip builds): slow, still run in CI
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_demo_script_end_to_end(tmp_path):
    out = tmp_path / 'demo_out'
    result = subprocess.run(['bash', str(REPO_ROOT / 'scripts' / 'demo.sh'), '--out', str(out), '--epochs', '1',
                             '--train-mixtures', '8', '--no-progress'], cwd=tmp_path, capture_output=True,
                            text=True, timeout=900, env=dict(os.environ))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['epochs'] == 1
    for key in ('si-snri_before', 'si-snri_after', 'sdri_before', 'sdri_after'):
        assert isinstance(summary[key], float)
    for key in ('training_curves', 'spectrograms'):
        png = Path(summary[key])
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000
    assert len(summary['separated']) == 2
    for wav in summary['separated']:
        assert soundfile.info(wav).samplerate == 8000
    assert (Path(summary['best_model']) / 'masknet.bin').is_file()
    assert 'SI-SNRi on the held-out demo test split' in result.stdout and str(out / 'summary.json') in result.stdout
