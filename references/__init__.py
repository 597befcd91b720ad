"""The independent references tests, benchmarks and tools compare our code against (not part of the
installed package): `official_graph` runs the official TF1 AnimeGAN generator graph; `v2_reference`
reads the full-integer TFLite conversion of the official AnimeGANv2 Hayao generator and builds a TF1-style
v2 graph from the published description.

The official graph and the TFLite file are the maintainers' reference files, kept beside the repository
and never in it (their licences forbid redistribution); $ANIME_GAN_SHARED names another place. What needs
them skips, with this location in its reason, where they are absent (a user's clone).
"""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCES = pathlib.Path(os.environ.get("ANIME_GAN_SHARED", REPO.parent / "shared")) / "reference"
