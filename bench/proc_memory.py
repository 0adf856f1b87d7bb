"""Resident memory of the running process, from /proc/self/status (shared by the bench scripts).

The peak is VmHWM, this process's own high-water mark: ``getrusage().ru_maxrss`` would carry over the
parent's peak from the fork before exec and floor every smaller measurement at it.
"""


def status_mb(field: str) -> float:
    """A /proc/self/status memory field (``VmRSS``, ``VmHWM``, ...) in MB; NaN where it is missing."""
    with open('/proc/self/status') as handle:
        for line in handle:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024
    return float('nan')


def peak_mb() -> float:
    return status_mb('VmHWM')


def current_mb() -> float:
    return status_mb('VmRSS')
