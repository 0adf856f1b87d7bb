"""Chunked separation: speaker alignment across chunks, closeness to whole-file output, bounded memory."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import soundfile
import torch

from modelscope_mossformer.batch import StreamResampler, overlapping_chunks, separate_file
from modelscope_mossformer.data.audio import resample
from modelscope_mossformer.data.synth import make_voices, synthesize_utterance
from modelscope_mossformer.inference import ChunkStitcher, SeparationEngine, best_permutation
from modelscope_mossformer.metrics import pit_si_snr
from modelscope_mossformer.models import MossFormer, MossFormer2

from .conftest import tiny_mossformer, tiny_mossformer2
from .subprocess_utils import RESULT_PREFIX, run_python

RATE = 8000


def demo_sources(num_spks: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """[C, T] speech-like sources of distinct demo voices (utterances of <= 60 s, concatenated)."""
    voices = make_voices(8, seed=seed)
    rng = np.random.default_rng(seed)
    chosen = [voices[i] for i in rng.choice(len(voices), size=num_spks, replace=False)]
    sources = []
    for voice in chosen:
        pieces, left = [], seconds
        while left > 0:
            length = min(left, 60.0)
            pieces.append(synthesize_utterance(voice, max(length, 0.5), RATE, rng)[:int(round(length * RATE))])
            left -= length
        sources.append(np.concatenate(pieces))
    return torch.from_numpy(np.stack(sources))


@pytest.fixture(scope='module')
def long_sources():
    """Two and three demo voices, 100 s each."""
    return {num_spks: demo_sources(num_spks, 100.0, seed=num_spks) for num_spks in (2, 3)}


class TrueSourceSeparator:
    """A separator that knows the answer: the true sources of each chunk, in a new random speaker order per call.

    Only the alignment between chunks can then make the stitched output right, so this
    tests exactly that.  Chunks arrive in order, `hop` samples apart.
    """

    def __init__(self, sources: torch.Tensor, hop: int, seed: int = 0) -> None:
        self.sources = sources
        self.hop = hop
        self.calls = 0
        self.perms = []
        self.rng = np.random.default_rng(seed)

    def __call__(self, mix: torch.Tensor) -> torch.Tensor:
        start = self.calls * self.hop
        self.calls += 1
        truth = self.sources[:, start:start + mix.shape[-1]]
        torch.testing.assert_close(mix[0], truth.sum(0))  # the engine cut the chunk we expected
        perm = self.rng.permutation(self.sources.shape[0])
        self.perms.append(perm.tolist())
        return truth[perm][None]

    @property
    def reorderings(self) -> int:
        """Chunk borders where the random order changed: what the stitcher must undo."""
        return sum(a != b for a, b in zip(self.perms, self.perms[1:]))


@pytest.mark.parametrize('num_spks', [2, 3])
def test_no_speaker_swaps_on_a_long_mixture(long_sources, num_spks):
    sources = long_sources[num_spks]
    mix = sources.sum(0)
    engine = SeparationEngine(lambda m: m, RATE, chunk_seconds=4.0, overlap_seconds=1.0)
    separator = TrueSourceSeparator(sources, engine.plan.hop, seed=num_spks)
    engine.separator = separator

    estimates = engine.separate(mix)

    assert separator.calls == len(list(engine.chunks(mix))) > 30
    assert separator.reorderings > 20  # the test separator really did shuffle the speakers
    first_order = separator.perms[0]  # the output keeps the first chunk's order throughout
    torch.testing.assert_close(estimates, sources[first_order], atol=1e-5, rtol=0)


def test_stitcher_counts_and_undoes_each_reordering(long_sources):
    sources = long_sources[2]
    engine = SeparationEngine(lambda m: m, RATE, chunk_seconds=3.0, overlap_seconds=0.5)
    separator = TrueSourceSeparator(sources, engine.plan.hop, seed=7)
    stitcher = ChunkStitcher(engine.plan.overlap)
    chunks = list(engine.chunks(sources.sum(0)))
    blocks = [stitcher.push(separator(c[None])[0], last=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    torch.testing.assert_close(torch.cat(blocks, -1), sources[separator.perms[0]], atol=1e-5, rtol=0)
    # Each border's permutation is the one undoing the random order relative to the first chunk.
    assert stitcher.swaps == sum(p != separator.perms[0] for p in separator.perms[1:])


def test_best_permutation_is_scale_invariant():
    previous = torch.randn(3, 800)
    current = torch.stack([previous[2] * 0.1, previous[0] * 5.0, previous[1] * 0.3]) + 0.01 * torch.randn(3, 800)
    assert best_permutation(previous, current) == [1, 2, 0]


def test_best_permutation_keeps_levels_between_scaled_copies():
    """Two outputs holding one voice at two levels correlate equally in either order; the order
    whose levels continue must win every time, not whichever rounding noise favours."""
    for seed in range(20):
        voice = torch.randn(800, generator=torch.Generator().manual_seed(seed))
        previous = torch.stack([voice, 0.316 * voice])
        current = torch.stack([0.316 * voice, voice]) * 1.01  # swapped, level drifting a little
        assert best_permutation(previous, current) == [1, 0], seed
        assert best_permutation(previous, current[[1, 0]]) == [0, 1], seed


def test_streamed_file_matches_the_true_sources(long_sources, tmp_path):
    """separate_file: blocks from disk, chunks, alignment, level, incremental writing."""
    sources = long_sources[3][:, :60 * RATE]
    path = tmp_path / 'mix.wav'
    soundfile.write(str(path), sources.sum(0).numpy(), RATE, subtype='FLOAT')
    engine = SeparationEngine(lambda m: m, RATE, chunk_seconds=4.0, overlap_seconds=1.0)
    separator = TrueSourceSeparator(sources, engine.plan.hop, seed=3)
    engine.separator = separator

    result = separate_file(engine, path, tmp_path / 'out', subtype='FLOAT')

    assert [p.name for p in result.outputs] == ['mix_s1.wav', 'mix_s2.wav', 'mix_s3.wav']
    assert result.gain == pytest.approx(1.0, abs=1e-4)  # the true sources already sum to the mixture
    written = torch.stack([torch.from_numpy(soundfile.read(str(p), dtype='float32')[0]) for p in result.outputs])
    torch.testing.assert_close(written, sources[separator.perms[0]], atol=1e-4, rtol=0)
    assert not list((tmp_path / 'out').glob('.*'))  # no temporary files left


@pytest.mark.parametrize('orig, new', [(44100, 8000), (8000, 16000), (22050, 16000), (48000, 8000)])
def test_stream_resampler_equals_whole_signal_resampling(orig, new):
    signal = torch.randn(2, 3 * orig + 123)
    whole = resample(signal, orig, new)
    for block in (997, orig // 2 + 1, 5 * orig):
        streamer = StreamResampler(orig, new)
        pieces = [streamer.push(signal[:, i:i + block]) for i in range(0, signal.shape[-1], block)]
        pieces.append(streamer.finish())
        torch.testing.assert_close(torch.cat(pieces, -1), whole, atol=1e-5, rtol=0)


def test_streamed_chunks_equal_the_engines_chunks():
    engine = SeparationEngine(lambda m: m, RATE, chunk_seconds=1.0, overlap_seconds=0.25)
    signal = torch.randn(5 * RATE + 77)
    new = []
    blocks = (signal[i:i + 999] for i in range(0, signal.shape[-1], 999))
    streamed = list(overlapping_chunks(blocks, engine.plan.chunk, engine.plan.hop, new.append))
    expected = list(engine.chunks(signal))
    assert len(streamed) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(streamed, expected))
    assert torch.equal(torch.cat(new), signal)  # every sample reported once, in order


# Chunked vs whole-file output of a real (tiny, random) model.
#
# A chunk sees less context than the whole file, so the outputs differ; the question
# is by how much.  Random-initialised models are a harsh case: the absolute sinusoidal
# position embedding enters with its initial gain of 1, larger than the normalised
# features, so position (which restarts in every chunk) dominates the output and
# chunked and whole-file output differ at ~1-4 dB SI-SNR whatever the chunking
# (measured).  Trained models learn that gain.  The models here therefore leave the
# global position embedding out.  Over model seeds 0-3 on this 20 s demo mixture the
# SI-SNR of chunked against whole-file output was 26-29 dB (MossFormer, 4 s chunks,
# 1 s overlap), 29-32 dB (MossFormer, 8 s / 2 s) and 20-28 dB (MossFormer2, 8 s / 2 s);
# the tests run seed 0 (29, 32 and 24 dB) against thresholds below every seed's value.
CLOSENESS_CASES = [
    (MossFormer, tiny_mossformer, 4.0, 1.0, 20.0),
    (MossFormer, tiny_mossformer, 8.0, 2.0, 24.0),
    (MossFormer2, tiny_mossformer2, 8.0, 2.0, 18.0),
]


@pytest.mark.parametrize('model_class, config, chunk, overlap, threshold_db', CLOSENESS_CASES)
def test_chunked_output_is_close_to_whole_file_output(model_class, config, chunk, overlap, threshold_db):
    mix = demo_sources(2, 20.0, seed=5).sum(0)
    model = model_class(config(use_global_pos_enc=False)).eval()
    whole = SeparationEngine(model, RATE, chunk_seconds=None).separate(mix)
    chunked = SeparationEngine(model, RATE, chunk_seconds=chunk, overlap_seconds=overlap).separate(mix)
    assert chunked.shape == whole.shape
    agreement, _ = pit_si_snr(chunked[None], whole[None])
    assert float(agreement) > threshold_db


class RecordingSeparator(torch.nn.Module):
    """A model that records the batch shapes it is called with."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.shapes = []

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(mix.shape))
        return self.model(mix)


@pytest.mark.parametrize('model_class, config', [(MossFormer, tiny_mossformer), (MossFormer2, tiny_mossformer2)])
def test_batched_chunks_give_the_chunk_by_chunk_output(model_class, config):
    torch.manual_seed(0)
    model = RecordingSeparator(model_class(config()).eval())
    mix = demo_sources(2, 14.5, seed=3).sum(0)  # 4 s chunks, 3 s apart: four full chunks and a 2.5 s one
    single = SeparationEngine(model, RATE, chunk_seconds=4.0, overlap_seconds=1.0).separate(mix)
    assert model.shapes == [(1, 4 * RATE)] * 4 + [(1, int(2.5 * RATE))]
    for batch_chunks, batches in ((3, [3, 1, 1]), (4, [4, 1]), (16, [4, 1])):
        model.shapes.clear()
        engine = SeparationEngine(model, RATE, chunk_seconds=4.0, overlap_seconds=1.0, batch_chunks=batch_chunks)
        batched = engine.separate(mix)
        assert [shape[0] for shape in model.shapes] == batches  # the shorter last chunk runs on its own
        assert batched.shape == single.shape
        # the items of a batch are separated independently; only the GEMMs' blocking (summation
        # order) may change with the batch: float32 rounding of outputs of order 0.1-1
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match='batch_chunks must be a whole number >= 1'):
            SeparationEngine(model, RATE, batch_chunks=bad)


def test_batched_chunks_stream_a_file_as_chunk_by_chunk_does(tmp_path):
    model = MossFormer(tiny_mossformer()).eval()
    path = tmp_path / 'mix.wav'
    soundfile.write(path, demo_sources(2, 11.0, seed=4).sum(0).numpy() * 0.5, RATE, subtype='FLOAT')
    outputs = {}
    for batch_chunks in (1, 2):
        engine = SeparationEngine(model, RATE, chunk_seconds=3.0, overlap_seconds=0.5, batch_chunks=batch_chunks)
        result = separate_file(engine, path, tmp_path / f'batch{batch_chunks}', subtype='FLOAT')
        outputs[batch_chunks] = [soundfile.read(p, dtype='float32')[0] for p in result.outputs]
    assert len(outputs[2]) == 2 and outputs[2][0].shape == (11 * RATE,)
    for batched, single in zip(outputs[2], outputs[1]):
        np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)


def test_bf16_autocast_on_cpu_stays_close_and_fp16_is_refused():
    model = MossFormer(tiny_mossformer()).eval()
    mix = demo_sources(2, 2.0, seed=9).sum(0)
    full = SeparationEngine(model, RATE, chunk_seconds=None).separate(mix)
    half = SeparationEngine(model, RATE, precision='bf16', chunk_seconds=None).separate(mix)
    assert half.dtype == torch.float32
    assert float(pit_si_snr(half[None], full[None])[0]) > 30.0  # about 42 dB measured
    with pytest.raises(ValueError, match="'fp16' needs CUDA"):
        SeparationEngine(model, RATE, precision='fp16', device='cpu')


MEMORY_SCRIPT = textwrap.dedent('''
    import json, resource, sys, time
    import torch
    torch.set_num_threads(1)
    from modelscope_mossformer.batch import separate_file
    from modelscope_mossformer.inference import SeparationEngine
    from modelscope_mossformer.models import MossFormer, MossFormerConfig

    short, long_, out = sys.argv[1:4]
    torch.manual_seed(0)
    model = MossFormer(MossFormerConfig(enc_channels=16, model_dim=16, num_blocks=1, group_size=16,
                                        query_key_dim=16)).eval()
    engine = SeparationEngine(model, 8000, chunk_seconds=8.0, overlap_seconds=1.0)

    def peak_mb():
        # this process's own high-water mark: getrusage's ru_maxrss carries over the resident size of
        # the process that started it (Linux keeps the larger across fork and exec), here pytest's
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    short_result = separate_file(engine, short, out, name='short')
    after_short = peak_mb()
    started = time.perf_counter()
    long_result = separate_file(engine, long_, out, name='long')
    print(%r + json.dumps({'after_short_mb': after_short, 'after_long_mb': peak_mb(),
                           'long_seconds': long_result.seconds, 'short_seconds': short_result.seconds,
                           'elapsed': time.perf_counter() - started,
                           'outputs': [str(p) for p in long_result.outputs]}))
''' % RESULT_PREFIX)


def write_long_mixture(path, seconds: float, rate: int = RATE):
    """A long 16-bit mixture: 30 s of two demo voices, repeated, written block by block."""
    mix = demo_sources(2, 30.0, seed=11).sum(0).numpy()
    total = int(seconds * rate)
    with soundfile.SoundFile(str(path), 'w', samplerate=rate, channels=1, subtype='PCM_16') as handle:
        for start in range(0, total, mix.size):
            handle.write(mix[:min(mix.size, total - start)])
    return path


def run_memory_check(tmp_path, long_seconds: float, timeout: float):
    short = write_long_mixture(tmp_path / 'short.wav', 60.0)
    long_ = write_long_mixture(tmp_path / 'long.wav', long_seconds)
    result = run_python(MEMORY_SCRIPT, str(short), str(long_), str(tmp_path / 'out'), cwd=tmp_path, timeout=timeout)
    assert result['long_seconds'] == pytest.approx(long_seconds)
    for path in result['outputs']:
        assert soundfile.info(path).frames == int(long_seconds * RATE)
    return result


def test_memory_does_not_grow_with_file_length(tmp_path):
    """Peak RSS after a 10-minute file is that after a 1-minute one: memory depends on the chunk only.

    Measured growth: about 3 MB.  For scale, holding the 10-minute mixture in memory
    once (float32) takes 19 MB; separating it whole would need its encoder output
    (16 channels x 600 k frames) several times over, hundreds of MB.
    """
    result = run_memory_check(tmp_path, 600.0, timeout=600)
    growth = result['after_long_mb'] - result['after_short_mb']
    assert growth < 16, result


@pytest.mark.slow
def test_one_hour_file_separates_in_bounded_memory(tmp_path):
    """One hour of 8 kHz audio (the mixture alone is 115 MB as float32): about 50 s here, +4 MB peak RSS."""
    result = run_memory_check(tmp_path, 3600.0, timeout=1200)
    assert result['after_long_mb'] < 2048, result
    assert result['after_long_mb'] - result['after_short_mb'] < 32, result
