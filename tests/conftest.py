import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("ANIME_GAN_SHARED", REPO.parent / "shared"))
OFFICIAL_META = SHARED / "reference" / "official_hayao_generator" / "Hayao-60.ckpt.meta"


@pytest.fixture(scope="session")
def official_meta():
    """Path of the official generator graph; skips where ../shared is absent (a user's clone)."""
    if not OFFICIAL_META.exists():
        pytest.skip(f"official generator graph not found at {OFFICIAL_META} (../shared is not beside this clone)")
    return OFFICIAL_META
