"""Record every tier's answers on a data split once; everything offline reads the records."""

from routenlp_ray.recording.recorder import Recorder, StaleRecordsError, fingerprint, load_records, record_path

__all__ = ["Recorder", "StaleRecordsError", "fingerprint", "load_records", "record_path"]
