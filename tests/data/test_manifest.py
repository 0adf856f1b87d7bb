import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelscope_mossformer.data.manifest import (Example, ManifestError, load_manifest, read_csv_manifest,
                                                 read_scp_manifest, scan_librimix, write_csv_manifest,
                                                 write_scp_manifest)

NAME = st.text(alphabet=string.ascii_letters + string.digits + '_-', min_size=1, max_size=12)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'')
    return path


def test_csv_with_relative_and_absolute_paths(tmp_path):
    absolute = tmp_path / 'elsewhere' / 'b_s2.wav'
    (tmp_path / 'lists').mkdir()
    (tmp_path / 'lists' / 'train.csv').write_text(
        'mix_wav:FILE,s1_wav:FILE,s2_wav:FILE\n'
        f'audio/a.wav,audio/a_s1.wav,audio/a_s2.wav\n'
        f'audio/b.wav,audio/b_s1.wav,{absolute}\n')
    examples = read_csv_manifest(tmp_path / 'lists' / 'train.csv')
    assert [e.id for e in examples] == ['a', 'b']
    assert examples[0].mix == tmp_path / 'lists' / 'audio' / 'a.wav'
    assert examples[1].sources[1] == absolute
    assert examples[1].origin.endswith('train.csv:3')


def test_csv_three_speakers_and_bare_column_names(tmp_path):
    (tmp_path / 'm.csv').write_text('id,mix_wav,s1_wav,s2_wav,s3_wav\nx,m.wav,1.wav,2.wav,3.wav\n')
    (example,) = read_csv_manifest(tmp_path / 'm.csv')
    assert example.id == 'x' and example.num_spks == 3


@pytest.mark.parametrize('content, match', [
    ('', 'empty CSV'),
    ('s1_wav:FILE,s2_wav:FILE\na,b\n', r'm.csv:1: missing column mix_wav:FILE'),
    ('mix_wav:FILE,s1_wav:FILE,s3_wav:FILE\na,b,c\n', r'without gaps; unexpected \[\'s3_wav\'\]'),
    ('mix_wav:FILE,s1_wav:FILE,s2_wav:FILE\na,b\n', r'm.csv:2: 2 field\(s\), expected 3'),
    ('mix_wav:FILE,s1_wav:FILE,s2_wav:FILE\na,b,c\nd,,f\n', r'm.csv:3: empty s1_wav:FILE'),
    ('mix_wav:FILE,s1_wav:FILE,s2_wav:FILE\n', 'no rows after the header'),
])
def test_bad_csv_names_file_line_and_problem(tmp_path, content, match):
    (tmp_path / 'm.csv').write_text(content)
    with pytest.raises(ManifestError, match=match):
        read_csv_manifest(tmp_path / 'm.csv')


def test_csv_speaker_count_is_checked(tmp_path):
    (tmp_path / 'm.csv').write_text('mix_wav:FILE,s1_wav:FILE,s2_wav:FILE\na,b,c\n')
    with pytest.raises(ManifestError, match='2 source\\(s\\) per mixture, expected 3'):
        read_csv_manifest(tmp_path / 'm.csv', num_spks=3)


def test_scp_lists(tmp_path):
    (tmp_path / 'tr.scp').write_text('# comment\n/d/m1.wav /d/a1.wav /d/b1.wav\n\nm2.wav a2.wav b2.wav\n')
    examples = read_scp_manifest(tmp_path / 'tr.scp')
    assert len(examples) == 2 and examples[0].num_spks == 2
    assert str(examples[0].mix) == '/d/m1.wav' and examples[1].mix == tmp_path / 'm2.wav'
    assert examples[1].origin.endswith('tr.scp:4')


@pytest.mark.parametrize('content, match', [
    ('/m.wav /a.wav\n', r'x.scp:1: 2 path\(s\) in .*expected "mix s1 s2 \[s3\]"'),
    ('/m.wav /a.wav /b.wav\n/m2.wav /a2.wav /b2.wav /c2.wav\n', r'x.scp:2: 4 path\(s\) .*expected 3'),
    ('\n# nothing\n', 'no entries'),
])
def test_bad_scp_names_file_line_and_expectation(tmp_path, content, match):
    (tmp_path / 'x.scp').write_text(content)
    with pytest.raises(ManifestError, match=match):
        read_scp_manifest(tmp_path / 'x.scp')


def test_librimix_tree(tmp_path):
    split = tmp_path / 'Libri2Mix' / 'wav8k' / 'min' / 'dev'
    for name in ('m1.wav', 'm2.wav'):
        for folder in ('mix_clean', 's1', 's2'):
            _touch(split / folder / name)
    for root in (tmp_path / 'Libri2Mix', tmp_path / 'Libri2Mix' / 'wav8k' / 'min', split):
        examples = scan_librimix(root, 'validation')
        assert [e.id for e in examples] == ['m1', 'm2']
        assert examples[0].sources == (split / 's1' / 'm1.wav', split / 's2' / 'm1.wav')
    assert len(load_manifest(tmp_path / 'Libri2Mix', split='dev')) == 2
    with pytest.raises(ManifestError, match="no LibriMix split 'test'"):
        scan_librimix(tmp_path / 'Libri2Mix', 'test')
    (split / 's2' / 'm2.wav').unlink()
    with pytest.raises(ManifestError, match='m2.wav: missing source file .*s2/m2.wav'):
        scan_librimix(tmp_path / 'Libri2Mix', 'dev')
    with pytest.raises(ManifestError, match='2 source\\(s\\) per mixture, expected 3'):
        scan_librimix(tmp_path / 'Libri2Mix', 'dev', num_spks=3)


def test_all_sources_give_the_same_examples(tmp_path):
    split = tmp_path / 'wav16k' / 'min' / 'test'
    examples = []
    for name in ('u1', 'u2', 'u3'):
        files = [_touch(split / folder / f'{name}.wav') for folder in ('mix_clean', 's1', 's2', 's3')]
        examples.append(Example(name, files[0], tuple(files[1:])))
    write_csv_manifest(examples, tmp_path / 'lists' / 'test.csv')
    write_scp_manifest(examples, tmp_path / 'lists' / 'test.scp')
    from_csv = load_manifest(tmp_path / 'lists' / 'test.csv')
    from_scp = load_manifest(tmp_path / 'lists' / 'test.scp')
    from_tree = load_manifest(tmp_path, split='test', sample_rate=16000)
    for listing in (from_csv, from_scp, from_tree):
        assert [(e.id, e.mix.resolve(), tuple(s.resolve() for s in e.sources)) for e in listing] == \
            [(e.id, e.mix.resolve(), tuple(s.resolve() for s in e.sources)) for e in examples]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(NAME, st.lists(NAME, min_size=2, max_size=2)), min_size=1, max_size=8),
       num_spks=st.sampled_from([2, 3]), comma_in_names=st.booleans())
def test_csv_round_trip_property(tmp_path_factory, rows, num_spks, comma_in_names):
    folder = tmp_path_factory.mktemp('csv')
    examples = []
    for index, (mix, names) in enumerate(rows):
        suffix = ', x' if comma_in_names else ''
        sources = tuple(folder / f'{index}_{n}{suffix}_{k}.wav' for k, n in enumerate((names * 2)[:num_spks]))
        examples.append(Example(f'id{index}', folder / f'{index}_{mix}{suffix}.wav', sources))
    write_csv_manifest(examples, folder / 'm.csv')
    parsed = read_csv_manifest(folder / 'm.csv', num_spks=num_spks)
    assert [(e.id, e.mix, e.sources) for e in parsed] == [(e.id, e.mix.resolve(), tuple(s.resolve()
                                                           for s in e.sources)) for e in examples]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.lists(NAME, min_size=1, max_size=5), min_size=1, max_size=10),
       blank_lines=st.lists(st.sampled_from(['', '   ', '# note']), max_size=3))
def test_scp_parser_accepts_exactly_consistent_lines(tmp_path_factory, lines, blank_lines):
    folder = tmp_path_factory.mktemp('scp')
    text = '\n'.join(blank_lines + ['  '.join(f'/a/{n}.wav' for n in fields) for fields in lines]) + '\n'
    (folder / 'l.scp').write_text(text)
    widths = {len(fields) for fields in lines}
    if len(widths) == 1 and widths.pop() >= 3:
        parsed = read_scp_manifest(folder / 'l.scp')
        assert len(parsed) == len(lines)
        assert all(e.num_spks == len(lines[0]) - 1 for e in parsed)
        assert [str(e.mix) for e in parsed] == [f'/a/{fields[0]}.wav' for fields in lines]
    else:
        with pytest.raises(ManifestError, match=r'l.scp:\d+: \d+ path\(s\)'):
            read_scp_manifest(folder / 'l.scp')


def test_scp_cannot_hold_whitespace_paths(tmp_path):
    example = Example('a', tmp_path / 'has space.wav', (tmp_path / 'b.wav', tmp_path / 'c.wav'), 'list.csv:2')
    with pytest.raises(ValueError, match='list.csv:2: path .* has whitespace'):
        write_scp_manifest([example], tmp_path / 'x.scp')
