"""tests/hf needs the `hf` extra (transformers); without it the folder is skipped whole."""

import pytest

pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
