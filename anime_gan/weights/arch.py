"""Which generator a set of weights is for: AnimeGAN ("v1") or AnimeGANv2 ("v2").

Our .weights.h5 files carry the architecture as an attribute (`anime_gan.weights.keras_h5`); any other
form (official TF1 names, older files, training checkpoints, SavedModels) is told by its variables:
their number, or the official scopes their names use.
"""

from __future__ import annotations

from anime_gan import constants as C
from anime_gan.errors import ModelError

ARCH_BY_VARIABLE_COUNT = {C.GENERATOR_VARIABLES: "v1", C.GENERATOR_V2_VARIABLES: "v2"}
ARCH_LABEL = {"v1": "AnimeGAN (v1)", "v2": "AnimeGANv2"}

_V1_SCOPES = ("b1", "b2", "m", "u1", "u2", "Conv")
_V2_SCOPES = ("A", "B", "C", "D", "E", "out_layer")


def arch_from_count(count, what):
    """"v1" or "v2" from the number of generator variables `what` (a phrase naming it) holds;
    ModelError when it is neither generator's."""
    arch = ARCH_BY_VARIABLE_COUNT.get(count)
    if arch is None:
        raise ModelError(
            f"{what} holds {count} generator variables, which is neither AnimeGAN's "
            f"{C.GENERATOR_VARIABLES} nor AnimeGANv2's {C.GENERATOR_V2_VARIABLES}."
        )
    return arch


def tf1_arch(names):
    """"v1" or "v2" from the official variable names of a TF1 checkpoint (v1 scopes b1..u1, v2 A..E):
    whichever has more variables, so that a stray name gets its own "unexpected" message."""
    scopes = [n[len(C.TF1_SCOPE):].split("/", 1)[0] for n in names if n.startswith(C.TF1_SCOPE)]
    v2 = sum(s in _V2_SCOPES for s in scopes)
    v1 = sum(s in _V1_SCOPES for s in scopes)
    if not v1 and not v2:
        raise ModelError("this checkpoint holds no generator/G_MODEL variables of AnimeGAN or AnimeGANv2.")
    return "v2" if v2 > v1 else "v1"
