"""Options and modes renamed since checkpoints were first written, so that an old
run folder either loads (the old name is translated) or fails with one line
saying what changed.

RENAMED_OPTIONS: layer name ("*" for every layer) -> {old option: new option}
RENAMED_MODES:   old mode name -> new mode name
"""

RENAMED_OPTIONS: dict[str, dict[str, str]] = {}
RENAMED_MODES: dict[str, str] = {}
