"""What every benchmark records about the machine it ran on."""

import platform


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what platform says elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

