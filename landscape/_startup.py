"""TensorFlow's start-up lines, filtered for the command line.

``TF_CPP_MIN_LOG_LEVEL`` is TensorFlow's switch for its C++ log lines, but TensorFlow 2.20+ logs
through absl, and absl writes every line logged before ``absl::InitializeLog()`` straight to
stderr whatever the level (abseil/abseil-cpp#1718; tensorflow/tensorflow#100442). Importing
TensorFlow therefore prints its banner (oneDNN, CPU features, CUDA plug-ins) twice, once per
shared library, even with the variable set. ``import_tensorflow_quietly`` imports TensorFlow
with file descriptor 2 sent to a temporary file, then writes back every line the variable would
have let through: its errors, and anything else (Python warnings), in order.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

LEVELS = "IWEF"  # absl's severities, in the order of TF_CPP_MIN_LOG_LEVEL (0, 1, 2, 3)
ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to "
# absl's prefix ("I0000 00:00:1796648781.262819   12890 port.cc:153] ") and the older one of
# TensorFlow's own logger ("2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] ")
_PREFIXES = (
    re.compile(r"([IWEF])\d{4} [\d:.]+ +\d+ [^\s\]]+:\d+\] "),
    re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) [^\s\]]+:\d+\] "),
)
# Logged as errors at start-up by every CUDA build, and harmless: several of TensorFlow's
# libraries register the same CUDA plug-in factory.
_BENIGN = re.compile(r"Unable to register cu\w+ factory: Attempting to register factory")
# The second line of cpu_feature_guard's message (the only start-up message of two lines).
_CONTINUATIONS = ("To enable the following instructions:",)


def min_log_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as 0 to 3 (an unset or unreadable value shows everything)."""
    try:
        return min(max(int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")), 0), 3)
    except ValueError:
        return 0


def _records(text: str) -> list[tuple[str | None, list[str]]]:
    """The lines of ``text`` grouped into records: (severity letter or None, lines); a known
    second line of a C++ message goes with its record, any other line is a record of its own."""
    records: list[tuple[str | None, list[str]]] = []
    for line in text.splitlines(keepends=True):
        level = next((m.group(1) for p in _PREFIXES if (m := p.match(line))), None)
        if level is not None:
            records.append((level, [line]))
        elif line.startswith(ABSL_NOTICE):
            records.append(("notice", [line]))
        elif records and records[-1][0] not in (None, "notice") and line.startswith(_CONTINUATIONS):
            records[-1][1].append(line)
        else:
            records.append((None, [line]))
    return records


def filter_startup_lines(text: str, level: int) -> str:
    """What of ``text`` (stderr while TensorFlow was imported) ``TF_CPP_MIN_LOG_LEVEL=level``
    lets through: C++ lines below ``level`` go, and with ``level`` >= 1 absl's notice and the
    CUDA plug-ins' duplicate registrations go too; every other line stays, in order."""
    kept = []
    for severity, lines in _records(text):
        if severity == "notice" or (severity is not None and _BENIGN.search(lines[0])):
            drop = level >= 1
        else:
            drop = severity is not None and LEVELS.index(severity) < level
        if not drop:
            kept.extend(lines)
    return "".join(kept)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (if not yet imported) without its start-up banner.

    ``TF_CPP_MIN_LOG_LEVEL`` defaults to 2 here (warnings and info off, errors on); a value set
    beforehand wins, and 0 shows the banner as TensorFlow prints it. An ImportError is left to
    ``sam._compat.require_tensorflow``, which says it in one sentence.
    """
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    level = min_log_level()
    if level == 0:
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            pass
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = filter_startup_lines(capture.read().decode(errors="replace"), level)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
