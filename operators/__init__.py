"""Pure operators: windowing, detectors and statistics (no Kafka, no I/O)."""

from operators.numba_cache import configure as _configure_numba_cache

_configure_numba_cache()  # before any kernel module is imported: see operators/numba_cache.py
