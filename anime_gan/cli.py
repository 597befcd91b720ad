"""What every command (`python -m anime_gan.train`, `stylize`, `export`, `convert`) shares.

`quiet_tensorflow_import()` runs before a command first imports TensorFlow. TensorFlow 2.21 prints
its start-up banner (oneDNN round-off notice, CPU feature guard, absl's "All log messages before
absl::InitializeLog()") from C++ straight to file descriptor 2 during `import tensorflow`, twice,
and TF_CPP_MIN_LOG_LEVEL no longer hides it. We catch that descriptor while TensorFlow loads and
replay every line that is not one of those known banner lines, so a real import error or warning
still reaches the user. ANIME_GAN_TF_BANNER=1 shows the banner again.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

# The lines TensorFlow's import prints on every start, and nothing else.
_BANNER = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
    r"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|^To enable the following instructions:.*rebuild TensorFlow"
)


def quiet_tensorflow_import() -> None:
    """Imports TensorFlow with its start-up banner filtered out (see the module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO and WARNING lines
    if "tensorflow" in sys.modules or os.environ.get("ANIME_GAN_TF_BANNER") == "1":
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines() if line.strip() and not _BANNER.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
