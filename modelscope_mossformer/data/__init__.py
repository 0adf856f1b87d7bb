"""Everything between audio files and training batches (no ModelScope: its `AudioBrainPreprocessor` lives in
`modelscope_mossformer.preprocessor`)."""
from __future__ import annotations

from .audio import AudioError, read_audio, resample, write_audio
from .dataset import (AugmentConfig, ExampleError, ManifestDataset, RowDataset, SeparationDataset,
                      collate_separation, length_mask)
from .manifest import (Example, ManifestError, load_manifest, read_csv_manifest, read_scp_manifest, scan_librimix,
                       write_csv_manifest, write_scp_manifest)
from .sources import HubUnavailableError, load_split, msdataset_from_csv
from .speakers import SpeakerError, SpeakerPool, assign_speakers, read_utt2spk

__all__ = [
    'AudioError', 'read_audio', 'resample', 'write_audio', 'AugmentConfig', 'ExampleError', 'ManifestDataset',
    'RowDataset', 'SeparationDataset', 'collate_separation', 'length_mask', 'Example', 'ManifestError',
    'load_manifest', 'read_csv_manifest', 'read_scp_manifest', 'scan_librimix', 'write_csv_manifest',
    'write_scp_manifest', 'HubUnavailableError', 'load_split', 'msdataset_from_csv', 'SpeakerError', 'SpeakerPool',
    'assign_speakers', 'read_utt2spk',
]
