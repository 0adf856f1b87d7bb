"""Per-output activity, gating, copy and single-talker checks: on constructed estimates whose right answer is
known, streamed and whole, and wired through `separate_file`, `mossformer separate` and the pipeline."""
from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import soundfile
import torch

from modelscope_mossformer.activity import (ActivityReport, ActivitySettings, ActivityTracker, MixtureLevel,
                                            mixture_level, track_activity)
from modelscope_mossformer.batch import separate_file
from modelscope_mossformer.cli import main
from modelscope_mossformer.data.synth import make_voices, synthesize_utterance
from modelscope_mossformer.inference import SeparationEngine, match_mixture_level
from modelscope_mossformer.model import MossFormerSeparation

RATE = 8000
SETTINGS = ActivitySettings()
FRAME = SETTINGS.frame_samples(RATE)
# how far activity reaches past the last loud frame: half the analysis window plus the hangover
REACH = SETTINGS.window_seconds / 2 + SETTINGS.hangover_seconds


def voice(index: int, seconds: float, seed: int = 0) -> np.ndarray:
    """One synthetic talker of the demo corpus: speech-like, no pause longer than ~0.15 s, RMS 0.05."""
    return synthesize_utterance(make_voices(8, seed=0)[index], seconds, RATE, np.random.default_rng(seed))


def silence_between(wave: np.ndarray, start: float, stop: float) -> np.ndarray:
    out = wave.copy()
    out[int(start * RATE):int(stop * RATE)] = 0.0
    return out


def db(energy: float, reference: float) -> float:
    return 10 * np.log10(max(energy, 1e-30) / reference)


def inside(segments, seconds: float) -> bool:
    return any(start <= seconds < end for start, end in segments)


# ---------------------------------------------------------------------------------------------
# the rule, on constructed estimates


def test_one_voice_plus_a_silent_second_speaker():
    """Outputs = the true sources (one talker, one digital silence): s2 is never active, s1 (almost) always."""
    talker = voice(0, 4.0)
    outputs = np.stack([talker, np.zeros_like(talker)])
    gated, report = track_activity(outputs, talker, RATE, gate=True)
    assert report.active_fraction[1] == 0.0 and report.segments[1] == []
    assert report.active_fraction[0] > 0.9  # synthetic speech pauses for at most ~0.15 s, bridged by the window
    assert not gated[1].any()
    # the gate only touches frames more than 30 dB below the speech level: s1 keeps >= 99.9 % of its energy
    removed = float(((gated[0] - talker) ** 2).sum())
    assert db(removed, float((talker ** 2).sum())) < -30
    assert report.single_talker == 0 and report.copies == []
    assert any('fewer talkers' in warning and 'nearly silent' in warning for warning in report.warnings)


@pytest.mark.parametrize('case', ['leak -25 dB', 'noise -35 dB'])
def test_one_voice_alone_with_a_faint_second_output(case):
    """No second speaker at all; the model's second output is a faint leaked copy or noise: inactive, gated to 0."""
    talker = voice(1, 4.0)
    if case.startswith('leak'):
        second = talker * 10 ** (-25 / 20)
    else:
        second = np.random.default_rng(3).standard_normal(talker.size).astype(np.float32) * 0.05 * 10 ** (-35 / 20)
    outputs = np.stack([talker, second])
    gated, report = track_activity(outputs, talker, RATE, gate=True)
    assert report.active_fraction[1] == 0.0
    assert not gated[1].any()  # exact zeros: nothing of the faint output survives
    np.testing.assert_array_equal(gated[0][report_mask(report, 0, talker.size)],
                                  talker[report_mask(report, 0, talker.size)])
    assert report.single_talker == 0
    assert report.copies == []  # never active together: not compared


def report_mask(report: ActivityReport, output: int, length: int) -> np.ndarray:
    """Samples inside output's active segments."""
    mask = np.zeros(length, bool)
    for start, end in report.segments[output]:
        mask[int(round(start * RATE)):int(round(end * RATE))] = True
    return mask


def test_a_loud_leaked_copy_is_reported_as_a_copy(caplog):
    """A -8 dB copy stays active (it is a real share of the mixture) but is named a copy of the original."""
    talker = voice(2, 3.0)
    leak = 10 ** (-8 / 20)
    outputs = np.stack([talker * leak, talker]) / (1 + leak)  # levels matched: the outputs sum to the mixture
    _, report = track_activity(outputs, talker, RATE)
    assert report.active_fraction[0] > 0.9 and report.active_fraction[1] > 0.9
    assert [(copy, original) for copy, original, _ in report.copies] == [(0, 1)]
    assert report.copy_of == 's1=s2'
    assert report.copies[0][2] == pytest.approx(1.0, abs=1e-6)  # an exact scaled copy correlates perfectly
    assert any('copy of s2' in warning for warning in report.warnings)


def test_two_talkers_with_a_long_single_talker_stretch():
    """s1 talks throughout; s2 pauses for 2 s (2-4 s); each output leaks the other talker at -25 dB.

    s2 must be inactive in the pause (up to the window + hangover reach at its edges), gated to
    exact zeros there, and untouched where it talks; s1 is never gated; the two are no copies.
    """
    first = voice(3, 6.0, seed=1)
    second = silence_between(voice(4, 6.0, seed=2), 2.0, 4.0)
    mix = first + second
    leak = 10 ** (-25 / 20)
    outputs = np.stack([first + leak * second, second + leak * first])
    gated, report = track_activity(outputs, mix, RATE, gate=True)
    margin = REACH + SETTINGS.frame_seconds
    pause = slice(int((2.0 + margin) * RATE), int((4.0 - margin) * RATE))
    assert not gated[1][pause].any()
    assert not any(inside(report.segments[1], t) for t in np.arange(2.0 + REACH + 0.02, 4.0 - REACH - 0.02, 0.01))
    assert inside(report.segments[1], 1.9) and inside(report.segments[1], 4.1)
    # s2 active 4 s of 6, plus at most the reach at the two pause edges (and a frame of rounding each)
    assert 4.0 / 6 - 0.02 < report.active_fraction[1] <= (4.0 + 2 * (REACH + SETTINGS.frame_seconds)) / 6
    np.testing.assert_array_equal(gated[0], outputs[0])
    kept = report_mask(report, 1, mix.size)
    np.testing.assert_array_equal(gated[1][kept], outputs[1][kept])
    assert report.copies == [] and report.single_talker is None and report.warnings == []
    # the leak of s1 into s2 during the pause: about -25 dB of s1 before, nothing after
    before = float((outputs[1][pause] ** 2).sum())
    assert db(before, float((first[pause] ** 2).sum())) == pytest.approx(-25, abs=0.01)
    assert float((gated[1][pause] ** 2).sum()) == 0.0


def test_gating_fades_instead_of_clicking():
    """A steady output whose mixture starts at 1 s and stops at 2 s: the gain rises and falls along 10 ms
    raised cosines, never in one jump, and is exactly 1 inside the active stretch, 0 outside the fades."""
    t = np.arange(3 * RATE) / RATE
    output = (0.1 * np.sin(2 * np.pi * 200 * t + 0.3)).astype(np.float32)
    mix = output.copy()
    mix[:RATE] = mix[2 * RATE:] = 0.0  # where the mixture is silent the output cannot be a talker
    gated, report = track_activity(output[None], mix, RATE, gate=True)
    (start, end), = report.segments[0]
    assert 1.0 - REACH - SETTINGS.frame_seconds <= start < 1.0 and 2.0 < end <= 2.0 + REACH + SETTINGS.frame_seconds
    # the hangover at least: onsets and decays are kept whole
    assert start <= 1.0 - SETTINGS.hangover_seconds and end >= 2.0 + SETTINGS.hangover_seconds
    begin, cut = int(round(start * RATE)), int(round(end * RATE))
    fade = int(SETTINGS.fade_seconds * RATE)
    rise = gated[0][begin - fade:begin] / output[begin - fade:begin]
    fall = gated[0][cut:cut + fade] / output[cut:cut + fade]
    assert np.all(np.diff(rise) > 0) and 0 < rise[0] < rise[-1] < 1
    assert np.all(np.diff(fall) < 0) and 0 < fall[-1] < fall[0] < 1
    # steepest step of a raised cosine over `fade` samples: sin(pi / (2 fade)) ~ pi / (2 fade)
    for ramp in (np.concatenate(([0.0], rise, [1.0])), np.concatenate(([1.0], fall, [0.0]))):
        assert np.abs(np.diff(ramp)).max() <= np.pi / (2 * fade) * 1.01
    np.testing.assert_array_equal(gated[0][begin:cut], output[begin:cut])
    assert not gated[0][:begin - fade].any() and not gated[0][cut + fade:].any()


@pytest.mark.parametrize('gate', [False, True])
def test_streaming_gives_the_whole_signal_result(gate):
    """Blocks of random sizes (1 sample to 0.4 s) give the same samples and report as one push, in flat memory."""
    first = voice(5, 5.0, seed=3)
    second = silence_between(voice(6, 5.0, seed=4), 1.0, 3.5)
    mix = first + second
    outputs = np.stack([first + 0.03 * second, second + 0.03 * first])
    whole, expected = track_activity(outputs, mix, RATE, gate=gate)
    tracker = ActivityTracker(2, RATE, mixture_level(mix, RATE), gate=gate)
    rng = np.random.default_rng(0)
    parts, position, held = [], 0, 0
    while position < mix.size:
        size = int(rng.integers(1, int(0.4 * RATE)))
        parts.append(tracker.push(outputs[:, position:position + size], mix[position:position + size]))
        held = max(held, tracker.audio.shape[-1], tracker.sq_out.shape[-1] * FRAME)
        position += size
    parts.append(tracker.finish())
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    report = tracker.report()
    assert report.segments == expected.segments and report.active_seconds == expected.active_seconds
    # what the tracker holds is bounded by its delay plus one block, not by the signal's length
    assert held <= (2 * tracker.delay_frames + 2) * FRAME + int(0.4 * RATE)
    if not gate:
        np.testing.assert_array_equal(whole, outputs)


def test_three_outputs_two_talkers():
    """A 3-speaker model on two talkers: the third output (a -30 dB leak of both) is inactive and gated."""
    from modelscope_mossformer.activity import activity_row

    first, second = voice(0, 3.0, seed=5), voice(1, 3.0, seed=6)
    outputs = np.stack([first, second, 10 ** (-30 / 20) * (first + second)])
    gated, report = track_activity(outputs, first + second, RATE, gate=True)
    assert report.active_fraction[2] == 0.0 and not gated[2].any()
    assert min(report.active_fraction[:2]) > 0.9 and report.copies == [] and report.single_talker is None
    assert activity_row(report) == {'s1_active': round(report.active_fraction[0], 4),
                                    's2_active': round(report.active_fraction[1], 4), 's3_active': 0.0,
                                    'copy_of': '', 'single_talker': ''}


def test_mixture_level_is_a_percentile_of_frame_levels_above_the_floor():
    """Frames at -20 dBFS (30 %), -40 dBFS (70 %) and digital silence: the 95th percentile is -20 dB."""
    loud = np.full(30 * FRAME, 0.1, np.float32)       # mean square 1e-2: -20 dBFS
    quiet = np.full(70 * FRAME, 0.01, np.float32)     # -40 dBFS
    signal = np.concatenate([quiet, loud, np.zeros(200 * FRAME, np.float32)])
    level = MixtureLevel(RATE)
    for block in np.array_split(signal, 7):
        level.push(block)
    assert level.finish() == pytest.approx(-20.0, abs=MixtureLevel.BIN_DB)  # one histogram bin
    assert mixture_level(quiet, RATE, ActivitySettings(reference_percentile=50)) == pytest.approx(
        -40.0, abs=MixtureLevel.BIN_DB)
    assert mixture_level(np.zeros(1000, np.float32), RATE) is None


def test_settings_and_inputs_are_checked():
    with pytest.raises(ValueError, match='relative_db must be <= 0 dB'):
        ActivitySettings(relative_db=3.0)
    with pytest.raises(ValueError, match=r'fade_seconds must be in \[0, frame_seconds / 2\]'):
        ActivitySettings(fade_seconds=0.05)
    with pytest.raises(ValueError, match='window_seconds must be at least frame_seconds'):
        ActivitySettings(window_seconds=0.001)
    tracker = ActivityTracker(2, RATE)
    with pytest.raises(ValueError, match=r'expected outputs \[2, n\] and a mixture \[n\]'):
        tracker.push(np.zeros((3, 10)), np.zeros(10))
    with pytest.raises(RuntimeError, match='before finish'):
        tracker.report()


def test_the_silent_report():
    report = ActivityReport.silent(3, RATE, 2 * RATE)
    assert report.active_fraction == [0.0, 0.0, 0.0] and report.seconds == 2.0
    assert report.to_dict()['copy_of'] == {} and report.to_dict()['single_talker'] is None


# ---------------------------------------------------------------------------------------------
# wiring: separate_file, `mossformer separate`, the pipeline, with a tiny (untrained) model


@pytest.fixture(scope='module')
def engine(model_dir):
    model = MossFormerSeparation.from_pretrained(str(model_dir))
    model.separator.eval()
    return SeparationEngine(model.separator, RATE, chunk_seconds=None)


@pytest.fixture(scope='module')
def voice_then_silence(tmp_path_factory):
    """One talker for 1.5 s, then 1.5 s of a faint noise floor (-60 dBFS: 40 dB below the talker's level)."""
    floor = np.random.default_rng(7).standard_normal(int(1.5 * RATE)).astype(np.float32) * 1e-3
    wave = np.concatenate([voice(7, 1.5), floor])
    path = tmp_path_factory.mktemp('inputs') / 'one_talker.wav'
    soundfile.write(str(path), wave, RATE, subtype='FLOAT')
    return path, wave


def read_outputs(result):
    return np.stack([soundfile.read(str(path), dtype='float32')[0] for path in result.outputs])


def test_separate_file_gates_to_exact_zeros_and_is_unchanged_without_the_option(tmp_path, engine,
                                                                                voice_then_silence):
    path, wave = voice_then_silence
    plain = separate_file(engine, path, tmp_path / 'plain', subtype='FLOAT')
    gated = separate_file(engine, path, tmp_path / 'gated', subtype='FLOAT', gate_inactive=True)
    # without the option: exactly what the engine returns, at the file's level gain (the code before activity)
    expected = engine.separate(torch.from_numpy(wave)).numpy() * np.float32(plain.gain)
    np.testing.assert_array_equal(read_outputs(plain), expected)
    assert plain.activity is not None and not plain.activity.gated and gated.activity.gated
    assert plain.activity.segments == gated.activity.segments
    outputs = read_outputs(gated)
    fade = int(SETTINGS.fade_seconds * RATE)
    for index in range(outputs.shape[0]):
        kept = report_mask(gated.activity, index, wave.size)
        np.testing.assert_array_equal(outputs[index][kept], expected[index][kept])
        # inactive samples are exact zeros, except the fades right next to an active stretch
        near = np.convolve(kept, np.ones(2 * fade + 1), 'same') > 0
        assert not outputs[index][~near].any()
        # what the model makes of the noise floor in the second half is gone
        assert not outputs[index][int((1.5 + REACH + 0.03) * RATE):].any()
        assert expected[index][int(2 * RATE):].any()


def test_mossformer_separate_reports_activity_columns(tmp_path, model_dir, voice_then_silence, caplog):
    path, _ = voice_then_silence
    quiet = ['--device', 'cpu', '--no-progress', '--chunk-seconds', '1', '--overlap-seconds', '0.25']
    assert main(['separate', str(path), '--model', str(model_dir), '--out', str(tmp_path / 'a'), *quiet]) == 0
    with caplog.at_level(logging.WARNING, logger='modelscope_mossformer'):
        assert main(['separate', str(path), '--model', str(model_dir), '--out', str(tmp_path / 'b'), *quiet,
                     '--gate-inactive']) == 0
    rows = {}
    for name in ('a', 'b'):
        with open(tmp_path / name / 'report.csv', newline='') as handle:
            reader = csv.DictReader(handle)
            assert {'s1_active', 's2_active', 'copy_of', 'single_talker'} <= set(reader.fieldnames)
            assert reader.fieldnames.index('s2_active') < reader.fieldnames.index('outputs')
            rows[name], = list(reader)
    for key in ('s1_active', 's2_active', 'copy_of', 'single_talker'):
        assert rows['a'][key] == rows['b'][key]  # the gate does not change what is judged active
    active = [float(rows['a'][f's{k}_active']) for k in (1, 2)]
    assert max(active) > 0  # the talker is somewhere
    assert all(value < 0.5 + (REACH + 0.02) / 3 for value in active)  # nothing is active in the noise-floor half
    gated = soundfile.read(str(tmp_path / 'b' / 'one_talker_s1.wav'))[0]
    plain = soundfile.read(str(tmp_path / 'a' / 'one_talker_s1.wav'))[0]
    assert not gated[int(2.0 * RATE):].any() and plain[int(2.0 * RATE):].any()


class CopySeparator(torch.nn.Module):
    """A "model" that returns the mixture and a -10 dB copy of it: a single talker leaked into both outputs."""

    class config:  # noqa: N801 - read as separator.config.num_spks, like the real models' configs
        num_spks = 2

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return torch.stack([mix, mix * 10 ** (-10 / 20)], dim=1)


def test_copies_and_a_single_talker_are_reported_and_logged(tmp_path, voice_then_silence, caplog):
    from modelscope_mossformer.batch import separate_many

    path, _ = voice_then_silence
    engine = SeparationEngine(CopySeparator(), RATE, chunk_seconds=1.0, overlap_seconds=0.25)
    with caplog.at_level(logging.WARNING, logger='modelscope_mossformer'):
        summary = separate_many(engine, [path], tmp_path / 'out', progress=False)
    assert summary.ok == 1
    with open(summary.report_csv, newline='') as handle:
        row, = list(csv.DictReader(handle))
    assert (row['copy_of'], row['single_talker']) == ('s2=s1', 's1')
    # after level matching s2 holds -12.4 dB of the mixture, a real share (> -15 dB): active with the talker,
    # which speaks in the first half of the file only
    assert 0.45 < float(row['s2_active']) <= float(row['s1_active']) < 0.5 + (REACH + 0.02) / 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in w and 's2 is essentially a copy of s1' in w for w in warnings)
    assert any(str(path) in w and 's1 carries the whole mixture' in w for w in warnings)
    assert 'copy of s1' in row['message'] and 'fewer talkers' in row['message']


def test_a_bad_activity_threshold_is_a_usage_error(tmp_path, model_dir, voice_then_silence, capsys):
    path, _ = voice_then_silence
    assert main(['separate', str(path), '--model', str(model_dir), '--out', str(tmp_path / 'x'), '--device', 'cpu',
                 '--no-progress', '--activity-relative-db', '6']) == 2
    assert '--activity-relative-db 6' in capsys.readouterr().err


def test_the_pipeline_returns_activity_and_gates_on_request(model_dir, voice_then_silence, engine):
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    from modelscope_mossformer.pipeline import to_pcm16

    path, wave = voice_then_silence
    separation = pipeline(Tasks.speech_separation, model=str(model_dir))
    plain = separation(str(path))
    gated = separation(str(path), gate_inactive=True)
    # without the option: the level-matched engine output, and ModelScope's key as before
    mix = torch.from_numpy(wave)
    expected = match_mixture_level(engine.separate(mix), mix).numpy()
    np.testing.assert_array_equal(plain['waveforms'], expected)
    assert plain[OutputKeys.OUTPUT_PCM_LIST] == [to_pcm16(w) for w in expected]
    activity = plain['activity']
    assert set(activity) >= {'active_fraction', 'segments', 'copy_of', 'single_talker', 'gated', 'warnings'}
    assert activity['segments'] == gated['activity']['segments'] and gated['activity']['gated']
    waves = gated['waveforms']
    assert gated[OutputKeys.OUTPUT_PCM_LIST] == [to_pcm16(w) for w in waves]
    assert not waves[:, int(2.0 * RATE):].any() and expected[:, int(2.0 * RATE):].any()
    # the pipeline and `separate_file` apply the same rule to the same data: same activity, up to a frame per
    # segment edge (their level gains are summed in float32 vs float64, which can move a borderline frame)
    frames_per_edge = SETTINGS.frame_seconds / wave.size * RATE
    batch = separate_file(engine, path, path.parent / 'batch', subtype='FLOAT')
    for mine, theirs, segments in zip(activity['active_fraction'], batch.activity.active_fraction,
                                      batch.activity.segments):
        assert mine == pytest.approx(theirs, abs=2 * len(segments) * frames_per_edge + 1e-4)
    # built with the option, every call gates unless told otherwise
    always = pipeline(Tasks.speech_separation, model=str(model_dir), gate_inactive=True)
    np.testing.assert_array_equal(always(str(path))['waveforms'], waves)
    np.testing.assert_array_equal(always(str(path), gate_inactive=False)['waveforms'], expected)
    # ... and so does `separate_file` given that pipeline
    assert separate_file(always, path, path.parent / 'always', subtype='FLOAT').activity.gated
    assert not separate_file(always, path, path.parent / 'never', gate_inactive=False).activity.gated
