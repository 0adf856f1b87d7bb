"""Perceptual metrics of separated speech: PESQ (ITU-T P.862 / P.862.2) and STOI / ESTOI.

Optional: they need the ``metrics`` extra (``pip install 'modelscope_mossformer[metrics]'``: the `pesq`
and `pystoi` packages).  Nothing here is imported by the package unless a metric is asked for.

Names a user gives (`METRIC_CHOICES`) and the result keys they become (`resolve_metrics`):

* ``pesq``: narrow-band PESQ (``pesq-nb``, P.862 + P.862.1 MOS-LQO) below 16 kHz, wide-band PESQ
  (``pesq-wb``, P.862.2) from 16 kHz; the two scales differ and are never mixed in one column.
* ``pesq-nb`` / ``pesq-wb``: that band whatever the rate (wide band needs at least 16 kHz).
* ``stoi``, ``estoi``: STOI (Taal et al. 2011) and extended STOI (Jensen and Taal 2016), 0..1.

PESQ is defined at 8 kHz (narrow band) and 16 kHz (wide band) only.  Other rates are resampled *down*
to the band's rate with the package's soxr resampler (`data.audio.resample`); a rate below it is refused
(upsampling adds no band: wide-band PESQ of 8 kHz audio would score content that is not there).  STOI
works at any rate (pystoi resamples to its 10 kHz internally).

Scores are per speaker, in the speaker order of the references (`metrics.separation_scores` gives the
estimates in the order found by PIT SI-SNR), averaged over speakers.  An utterance a metric cannot
score (a silent reference; for PESQ a silent estimate, no speech found, or less than 1/4 s; for STOI fewer
than 30 frames of speech, where pystoi would return a meaningless 1e-5) gets NaN for that metric and a
warning naming it;
`count_unscored` tells a dataset report how many there were.
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

METRIC_CHOICES = ('pesq', 'pesq-nb', 'pesq-wb', 'stoi', 'estoi')
PESQ_RATES = {'pesq-nb': 8000, 'pesq-wb': 16000}
PESQ_MAXIMUM = {'pesq-nb': 4.549, 'pesq-wb': 4.644}  # the score of a signal against itself
SILENT_REFERENCE_PEAK = 1e-6  # |x| below this everywhere: digital silence, nothing to score against
_PACKAGES = {'pesq-nb': ('pesq', 'PESQ'), 'pesq-wb': ('pesq', 'PESQ'), 'stoi': ('pystoi', 'STOI'),
             'estoi': ('pystoi', 'ESTOI')}


class UnscorableError(ValueError):
    """One utterance that one metric cannot score (the reason is the message)."""


def _import_extra(module: str, what: str) -> Any:
    """Import an optional package of the ``metrics`` extra, or an ImportError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs the '{module}' package: pip install 'modelscope_mossformer[metrics]' "
                          f"(or pip install {module})") from None


def parse_metric_names(value: Union[None, str, Sequence[str]], source: str) -> Tuple[str, ...]:
    """Metric names as given (``'pesq,stoi'`` or ``['pesq', 'stoi']``), checked, lower-cased, deduplicated.

    Raises:
        ValueError: naming `source`, the bad entry and the choices.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        items: List[Any] = [part for part in value.split(',') if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f'{source}: expected a list of metric names from {list(METRIC_CHOICES)}, '
                         f'got {value!r}')
    names: List[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f'{source}: metric names are strings from {list(METRIC_CHOICES)}, got {item!r}')
        name = item.strip().lower().replace('_', '-')
        if name not in METRIC_CHOICES:
            raise ValueError(f'{source}: unknown metric {item!r}; choose from {list(METRIC_CHOICES)} '
                             '(SI-SNR, SI-SNRi, SDR and SDRi are always computed)')
        if name not in names:
            names.append(name)
    return tuple(names)


def resolve_metrics(names: Iterable[str], sample_rate: int, source: str = 'metrics') -> Tuple[str, ...]:
    """The result keys of `names` at `sample_rate`, once their packages are known to import.

    Raises:
        ValueError: a name not in `METRIC_CHOICES`, or wide-band PESQ below 16 kHz / narrow-band below 8 kHz.
        ImportError: the ``metrics`` extra is not installed (the message says how to install it).
    """
    keys: List[str] = []
    for name in parse_metric_names(list(names), source):
        key = name
        if name == 'pesq':
            key = 'pesq-wb' if sample_rate >= PESQ_RATES['pesq-wb'] else 'pesq-nb'
        if key in PESQ_RATES and sample_rate < PESQ_RATES[key]:
            raise ValueError(f'{source}: {key} needs audio at {PESQ_RATES[key]} Hz or more, the audio is at '
                             f'{sample_rate} Hz (PESQ resamples down to its band, never up); use '
                             + ("'pesq-nb' or 'pesq'" if key == 'pesq-wb' else "'stoi' / 'estoi'"))
        if key not in keys:
            keys.append(key)
    for key in keys:
        _import_extra(*_PACKAGES[key])
    return tuple(keys)


def _pesq(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, key: str) -> float:
    pesq = _import_extra('pesq', 'PESQ')
    rate = PESQ_RATES[key]
    if sample_rate < rate:
        raise UnscorableError(f'audio at {sample_rate} Hz is below the {rate} Hz that {key} needs')
    if sample_rate != rate:
        from .data.audio import resample

        pair = resample(torch.from_numpy(np.stack([reference, estimate])), sample_rate, rate).numpy()
        reference, estimate = pair[0], pair[1]
    if np.abs(estimate).max(initial=0.0) < SILENT_REFERENCE_PEAK:  # pesq's level alignment divides by zero
        raise UnscorableError('the estimate is digital silence, for which PESQ is undefined')
    try:
        return float(pesq.pesq(rate, reference, estimate, key[-2:]))
    except pesq.PesqError as err:  # NoUtterancesError, BufferTooShortError...
        text = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else str(err)
        raise UnscorableError(f'PESQ: {text}') from None
    except ValueError as err:  # NaN inside the C code's level alignment (a signal with no energy in its band)
        raise UnscorableError(f'PESQ failed on this signal ({err})') from None


def _stoi(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, extended: bool) -> float:
    pystoi = _import_extra('pystoi', 'ESTOI' if extended else 'STOI')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        score = float(pystoi.stoi(reference, estimate, sample_rate, extended=extended))
    short = [w for w in caught if 'Not enough STFT frames' in str(w.message)]
    if short:  # pystoi then returns 1e-5, which would read as a real (terrible) score
        raise UnscorableError('fewer than 30 frames (about 0.4 s) of speech after removing silent frames')
    return score


def _score_pair(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, key: str) -> float:
    if key in PESQ_RATES:
        return _pesq(reference, estimate, sample_rate, key)
    return _stoi(reference, estimate, sample_rate, extended=key == 'estoi')


def perceptual_scores(estimates: torch.Tensor, references: torch.Tensor, sample_rate: int,
                      keys: Sequence[str], name: str = 'utterance') -> Dict[str, float]:
    """Each metric of `keys` (as `resolve_metrics` returns them), averaged over speakers.

    Args:
        estimates: [C, T] in the references' speaker order.
        references: [C, T].
        sample_rate: rate of both.
        keys: result keys ('pesq-nb', 'pesq-wb', 'stoi', 'estoi').
        name: the utterance, for the warning when a metric cannot score it.

    Returns:
        {key: mean over speakers}; NaN for a metric that cannot score this utterance (logged).
    """
    if estimates.shape != references.shape or estimates.dim() != 2:
        raise ValueError(f'expected two [speakers, time] tensors of one shape, got {tuple(estimates.shape)} '
                         f'and {tuple(references.shape)}')
    ests = estimates.detach().cpu().double().numpy()
    refs = references.detach().cpu().double().numpy()
    scores: Dict[str, float] = {}
    for key in keys:
        try:
            silent = [j + 1 for j in range(refs.shape[0]) if np.abs(refs[j]).max(initial=0.0) < SILENT_REFERENCE_PEAK]
            if silent:
                raise UnscorableError(f'reference source(s) {silent} are silent')
            scores[key] = float(np.mean([_score_pair(refs[j], ests[j], sample_rate, key)
                                         for j in range(refs.shape[0])]))
        except UnscorableError as err:
            logger.warning('%s: %s not computed (%s); recorded as NaN and left out of the mean', name, key, err)
            scores[key] = float('nan')
    return scores


def count_unscored(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Dict[str, int]:
    """How many rows hold NaN (or nothing) for each of `keys`."""
    def missing(value: Any) -> bool:
        return value is None or value == '' or (isinstance(value, float) and math.isnan(value))

    return {key: sum(missing(row.get(key)) for row in rows) for key in keys}


def nan_mean(values: Iterable[Any]) -> float:
    """Mean of the finite values (NaN when there are none), without numpy's empty-slice warning."""
    finite = [float(v) for v in values if v is not None and v != '' and math.isfinite(float(v))]
    return float(np.mean(finite)) if finite else float('nan')


def unscored_note(unscored: Mapping[str, int], total: int) -> Optional[str]:
    """'pesq-wb: 2 of 10 utterance(s) not scored (NaN)...' or None when every utterance was scored."""
    parts = [f'{key}: {count} of {total}' for key, count in unscored.items() if count]
    if not parts:
        return None
    return (f'{"; ".join(parts)} utterance(s) could not be scored (NaN, left out of the mean; '
            'the warnings above name them)')
