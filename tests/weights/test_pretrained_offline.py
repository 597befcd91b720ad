"""Issue 21 item 5: a download that cannot reach its server (offline: a host name that does not
resolve, a refused connection) ends at once, in one sentence naming --mirror and the manual route;
a broken transfer (a reset connection, a short read, HTTP 5xx) keeps its retries and resumes
(tests/dataprep/test_unreachable.py).

Every test runs with the default retries and backoff (5 retries, 2 s doubling: 62 s of waiting), so
a retried unreachable server could not finish within the time bounds asserted here."""

import socket
import time

import pytest

from anime_gan.weights import install
from data_prep.report import DataError
from helpers import LocalServer, closed_port

V2_PATH = "TachibanaYoshino/AnimeGANv2/raw/master/checkpoint/generator_Hayao_weight/Hayao-64.ckpt"
FACE_V2 = "bryandlee/animegan2-pytorch/raw/main/weights/face_paint_512_v2.pt"
UNRESOLVABLE = "anime-gan-tf2-test.invalid"  # .invalid never resolves (RFC 2606)


def timed_download(name, mirror):
    """(the DataError of install.download(name) with the default retries and backoff, seconds taken)."""
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        install.download(name, mirror=mirror, progress=False)
    return str(info.value), time.monotonic() - start


def test_a_refused_connection_ends_at_once_naming_mirror_and_the_manual_route(at):
    port = closed_port()
    message, seconds = timed_download("hayao-v2", f"http://127.0.0.1:{port}")
    assert seconds < 2.0
    gh = f"https://github.com/{V2_PATH}"
    assert message == (
        f"cannot reach 127.0.0.1:{port} (it refused the connection), so hayao-v2 was not downloaded and nothing "
        "was retried: pass --mirror=URL (or set $ANIME_GAN_WEIGHTS_MIRROR) to a copy this machine can reach, or "
        f"download {gh}.index and {gh}.data-00000-of-00001 on a machine that is online, copy them here and run "
        "`python -m anime_gan.convert --tf1_checkpoint=Hayao-64.ckpt --output=checkpoints/hayao-v2`.")
    assert "\n" not in message and ". " not in message
    assert list((at / "checkpoints").iterdir()) == []  # nothing installed, nothing staged

    # A .pt model names the --pytorch conversion instead.
    message, seconds = timed_download("face-paint-512-v2", f"http://127.0.0.1:{port}")
    assert seconds < 2.0 and message.endswith(
        f"or download https://github.com/{FACE_V2} on a machine that is online, copy it here and run "
        "`python -m anime_gan.convert --pytorch=face_paint_512_v2.pt --output=checkpoints/face-paint-512-v2`.")


def test_a_host_name_that_does_not_resolve_ends_at_once(at):
    start = time.monotonic()
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(UNRESOLVABLE, 80)
    resolver = time.monotonic() - start  # measured: ~0.01 s on the project's machines
    if resolver > 5:
        pytest.skip(f"this machine's resolver took {resolver:.1f} s to answer, too slow to time a download by")
    message, seconds = timed_download("celeba-distill", f"http://{UNRESOLVABLE}")
    assert seconds < 2.0 + 2 * resolver  # one lookup per file, no retry
    assert message.startswith(f"cannot reach {UNRESOLVABLE} (its name does not resolve: ")
    assert ("), so celeba-distill was not downloaded and nothing was retried: pass --mirror=URL (or set "
            "$ANIME_GAN_WEIGHTS_MIRROR) to a copy this machine can reach, or download ") in message
    assert list((at / "checkpoints").iterdir()) == []


def test_a_partial_file_is_kept_when_the_server_goes_away(at):
    """A transfer cut halfway (no retry allowed), then the server gone: the next run stops at once and
    keeps the half for a resume once the server is back."""
    data = bytes(range(256)) * 64
    with LocalServer({FACE_V2: data}, break_once=[FACE_V2]) as server:
        with pytest.raises(DataError, match="run the same command again to resume"):
            install.download("face-paint-512-v2", mirror=server.url, retries=0, progress=False)
    part = at / "checkpoints" / "face-paint-512-v2.download" / "face_paint_512_v2.pt.part"
    assert part.stat().st_size == len(data) // 2
    message, seconds = timed_download("face-paint-512-v2", server.url)  # the same port, nothing listening now
    assert seconds < 2.0
    assert message.startswith(f"cannot reach {server.url[len('http://'):]} (it refused the connection), so "
                              f"face-paint-512-v2 was not downloaded (the partial file {part.relative_to(at)} is "
                              "kept for a resume) and nothing was retried: pass --mirror=URL")
    assert part.stat().st_size == len(data) // 2
