"""Leakage into a "silent" output, before and after ``gate_inactive``, and what gating costs the talker.

Two kinds of separated outputs are measured on mixtures of the demo corpus's held-out test voices
(8 kHz, 6 s):

* ``model``: a model that separates: by default the quickstart's small MossFormer (94 k parameters,
  12 epochs on the demo corpus, ~4 minutes on 1 thread; trained into ``--work`` unless it is
  already there), or any model dir given with ``--model``; run through the ModelScope pipeline;
* ``oracle+leak L dB``: the true sources, each leaking the other source at L dB (a talker absent
  from the mixture leaks the present one), level-matched to the mixture like the pipeline's output:
  the controlled case, where the right answer is known.

Scenarios: ``one talker`` (a single voice, no second speaker at all) and ``pause`` (two voices; the
second stops after 2 s: a 4 s single-talker stretch).  Per scenario, over the stretch where the
second reference is silent (``pause``: from 0.3 s after its end; ``one talker``: everywhere):

* leakage: energy of the output assigned to the silent talker relative to the mixture's, in dB
  (energies summed over all mixtures first), ungated vs gated, and the share of that stretch the
  gate set to exact zeros;
* the talker's SI-SNR (dB) over the whole file, ungated vs gated (the output assigned to the voice that
  talks throughout); for ``pause`` also the second talker's SI-SNR;
* mean active share of each output and how many files were flagged (single talker, copy).

Output assignment: the permutation with the highest total correlation with the references over
the stretch where both talk (``pause``), or the output most correlated with the voice (``one talker``).

    python bench/bench_activity.py                                   # trains the demo model first
    python bench/bench_activity.py --work demo_out                   # reuse quickstart's demo_out/
    python bench/bench_activity.py --model path/to/model --mixtures 20 --relative-db -15,-10
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

RATE = 8000
SECONDS = 6.0
PAUSE_AT = 2.0  # the second talker stops here in the 'pause' scenario
MARGIN = 0.3  # seconds after the second talker's end before the leakage stretch starts
LEAKS_DB = (-30.0, -20.0, -10.0)


def demo_model(work: Path) -> Path:
    """The quickstart's trained model dir under `work` (trained now when missing)."""
    best = work / 'train_dir' / 'best_model'
    if not (best / 'configuration.json').is_file():
        from modelscope_mossformer.cli import set_speechbrain_level
        from modelscope_mossformer.quickstart import run

        set_speechbrain_level(logging.WARNING)
        print(f'training the demo model into {work} (about 4 minutes on 1 thread)...', flush=True)
        run(work, progress=False)
    return best


def test_voices(work: Optional[Path]):
    """The demo corpus's held-out test voices (or all 16 when there is no corpus record)."""
    from modelscope_mossformer.data.synth import make_voices

    voices = {v.voice_id: v for v in make_voices(16, seed=0)}
    record = work / 'corpus' / 'corpus.json' if work else None
    if record is not None and record.is_file():
        names = json.loads(record.read_text())['splits']['test']['voices']
        return [voices[name] for name in names]
    return list(voices.values())


def make_mixtures(count: int, voices, scenario: str, seed: int = 0) -> List[Dict[str, np.ndarray]]:
    """[{'mix': [T], 'refs': [2, T]}]: 'one talker' (second reference all zeros) or 'pause'."""
    from modelscope_mossformer.data.synth import synthesize_utterance

    rng = np.random.default_rng(seed)
    mixtures = []
    for _ in range(count):
        first, second = rng.choice(len(voices), size=2, replace=False)
        a = synthesize_utterance(voices[first], SECONDS, RATE, rng)
        if scenario == 'one talker':
            b = np.zeros_like(a)
        else:
            b = synthesize_utterance(voices[second], SECONDS, RATE, rng)
            b[int(PAUSE_AT * RATE):] = 0.0
            b *= 10 ** (rng.uniform(-2.5, 2.5) / 20)  # relative levels as in the demo corpus
        refs = np.stack([a, b]).astype(np.float32)
        mixtures.append({'mix': refs.sum(0), 'refs': refs})
    return mixtures


def silent_stretch(scenario: str) -> slice:
    return slice(0, None) if scenario == 'one talker' else slice(int((PAUSE_AT + MARGIN) * RATE), None)


def assign(outputs: np.ndarray, refs: np.ndarray, scenario: str) -> List[int]:
    """Output index per reference."""
    if scenario == 'one talker':
        talker = int(np.argmax([abs(np.dot(o, refs[0])) for o in outputs]))
        return [talker, 1 - talker]
    both = slice(0, int(PAUSE_AT * RATE))
    straight = sum(np.corrcoef(outputs[i, both], refs[i, both])[0, 1] for i in (0, 1))
    swapped = sum(np.corrcoef(outputs[1 - i, both], refs[i, both])[0, 1] for i in (0, 1))
    return [0, 1] if straight >= swapped else [1, 0]


def oracle_outputs(refs: np.ndarray, mix: np.ndarray, leak_db: float) -> np.ndarray:
    """True sources, each plus the other at `leak_db`, level-matched to the mixture."""
    import torch

    from modelscope_mossformer.inference import match_mixture_level

    gain = 10 ** (leak_db / 20)
    leaky = np.stack([refs[0] + gain * refs[1], refs[1] + gain * refs[0]])
    if not refs[1].any():  # no second talker: the second output is the leak of the first alone
        leaky[1] = gain * refs[0]
    return match_mixture_level(torch.from_numpy(leaky), torch.from_numpy(mix)).numpy()


def measure(cases: List[Dict[str, Any]], scenario: str) -> Dict[str, Any]:
    """Figures over cases [{'refs', 'mix', 'plain', 'gated', 'report'}]."""
    import torch

    from modelscope_mossformer.metrics import si_snr

    stretch = silent_stretch(scenario)
    leak_plain = leak_gated = mix_energy = 0.0
    zeroed = samples = 0
    talker_plain, talker_gated, second_plain, second_gated = [], [], [], []
    active = np.zeros(2)
    single = copies = 0
    for case in cases:
        refs, mix = case['refs'], case['mix']
        order = assign(case['plain'], refs, scenario)
        silent = order[1]
        leak_plain += float((case['plain'][silent, stretch] ** 2).sum())
        leak_gated += float((case['gated'][silent, stretch] ** 2).sum())
        mix_energy += float((mix[stretch] ** 2).sum())
        zeroed += int((case['gated'][silent, stretch] == 0).sum())
        samples += case['gated'][silent, stretch].size
        score = lambda est, ref: float(si_snr(torch.from_numpy(est), torch.from_numpy(ref)))  # noqa: E731
        talker_plain.append(score(case['plain'][order[0]], refs[0]))
        talker_gated.append(score(case['gated'][order[0]], refs[0]))
        if scenario == 'pause':
            second_plain.append(score(case['plain'][order[1]], refs[1]))
            second_gated.append(score(case['gated'][order[1]], refs[1]))
        fractions = case['report']['active_fraction']
        active += [fractions[order[0]], fractions[order[1]]]
        single += case['report']['single_talker'] is not None
        copies += bool(case['report']['copy_of'])
    n = len(cases)
    figures = {
        'leak_db_plain': 10 * np.log10(leak_plain / mix_energy) if leak_plain > 0 else float('-inf'),
        'leak_db_gated': 10 * np.log10(leak_gated / mix_energy) if leak_gated > 0 else float('-inf'),
        'zeroed_share': zeroed / samples,
        'talker_si_snr_plain': float(np.mean(talker_plain)), 'talker_si_snr_gated': float(np.mean(talker_gated)),
        'talker_active': active[0] / n, 'silent_output_active': active[1] / n,
        'single_talker_flagged': single, 'copy_flagged': copies, 'files': n,
    }
    if second_plain:
        figures.update(second_si_snr_plain=float(np.mean(second_plain)),
                       second_si_snr_gated=float(np.mean(second_gated)))
    return figures


def run_model(model_dir: Path, mixtures, settings) -> List[Dict[str, Any]]:
    from modelscope.pipelines import pipeline

    import modelscope_mossformer  # noqa: F401 - registers the pipeline
    from modelscope_mossformer.metainfo import TASK

    separation = pipeline(TASK, model=str(model_dir.resolve()), activity_settings=settings)
    cases = []
    for item in mixtures:
        plain = separation((item['mix'], RATE))
        gated = separation((item['mix'], RATE), gate_inactive=True)
        cases.append(dict(item, plain=plain['waveforms'], gated=gated['waveforms'], report=plain['activity']))
    return cases


def run_oracle(leak_db: float, mixtures, settings) -> List[Dict[str, Any]]:
    from modelscope_mossformer.activity import track_activity

    cases = []
    for item in mixtures:
        plain = oracle_outputs(item['refs'], item['mix'], leak_db)
        gated, report = track_activity(plain, item['mix'], RATE, gate=True, settings=settings)
        cases.append(dict(item, plain=plain, gated=gated, report=report.to_dict()))
    return cases


def _db(value: float) -> str:
    return '-inf' if value == float('-inf') else f'{value:.1f}'


def print_table(rows: List[Dict[str, Any]]) -> None:
    print('| outputs | scenario | threshold | leak ungated | leak gated | zeroed | talker SI-SNR ungated -> gated '
          '| 2nd talker SI-SNR ungated -> gated | active talker / silent output | flagged single / copy |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for row in rows:
        second = (f"{row['second_si_snr_plain']:.2f} -> {row['second_si_snr_gated']:.2f}"
                  if 'second_si_snr_plain' in row else '')
        print(f"| {row['outputs']} | {row['scenario']} | {row['relative_db']:g} dB | {_db(row['leak_db_plain'])} dB "
              f"| {_db(row['leak_db_gated'])} dB | {100 * row['zeroed_share']:.0f} % "
              f"| {row['talker_si_snr_plain']:.2f} -> {row['talker_si_snr_gated']:.2f} | {second} "
              f"| {100 * row['talker_active']:.0f} % / {100 * row['silent_output_active']:.0f} % "
              f"| {row['single_talker_flagged']} / {row['copy_flagged']} of {row['files']} |")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', type=Path, default=None, help='a model dir (default: the demo model in --work)')
    parser.add_argument('--work', type=Path, default=Path('/tmp/bench_activity'),
                        help='where the demo model is trained (or found: a quickstart --out folder)')
    parser.add_argument('--mixtures', type=int, default=10, help='mixtures per scenario (default 10)')
    parser.add_argument('--relative-db', default='-15,-10', help='activity thresholds to measure (default -15,-10)')
    parser.add_argument('--threads', type=int, default=None, help='torch threads')
    parser.add_argument('--json', type=Path, default=None, help='also write the figures here')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the single-talker warnings are expected here: counted, not printed
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from modelscope_mossformer.activity import ActivitySettings

    started = time.perf_counter()
    model_dir = args.model or demo_model(args.work)
    voices = test_voices(None if args.model else args.work)
    print(f'model {model_dir}; voices {[v.voice_id for v in voices]}; {args.mixtures} mixtures of {SECONDS:g} s '
          f'per scenario; {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}')
    rows = []
    for scenario in ('one talker', 'pause'):
        mixtures = make_mixtures(args.mixtures, voices, scenario, seed=1 if scenario == 'pause' else 0)
        for threshold in (float(x) for x in args.relative_db.split(',')):
            settings = ActivitySettings(relative_db=threshold)
            runs = [('model', run_model(model_dir, mixtures, settings))]
            runs += [(f'oracle+leak {leak:g} dB', run_oracle(leak, mixtures, settings)) for leak in LEAKS_DB]
            for name, cases in runs:
                rows.append(dict(measure(cases, scenario), outputs=name, scenario=scenario, relative_db=threshold))
    print_table(rows)
    print(f'{time.perf_counter() - started:.0f} s in total')
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
