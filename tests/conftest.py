import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def official_meta():
    """Path of the official generator graph; skips where the maintainers' reference files are absent (a user's clone)."""
    from references.official_graph import OFFICIAL_META

    if not OFFICIAL_META.exists():
        pytest.skip(f"official generator graph not found at {OFFICIAL_META} (the maintainers' reference files are not beside this clone; see references/__init__.py)")
    return OFFICIAL_META


@pytest.fixture(scope="module")
def weights_dir(generator, tmp_path_factory):
    """The test module's `generator` fixture saved in a folder as generator.weights.h5 (a model path)."""
    from anime_gan.weights import save_generator

    directory = tmp_path_factory.mktemp("weights")
    save_generator(generator, directory)
    return directory
