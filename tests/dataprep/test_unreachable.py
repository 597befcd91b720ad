"""Issue 21 item 5, data_prep's side: a server that cannot be reached at all ends `download` at once
(`Unreachable`, one sentence); a broken transfer (HTTP 5xx, a cut connection) is still retried and
resumed."""

import time

import pytest

from data_prep import download as http
from data_prep.report import DataError
from helpers import LocalServer, closed_port


def test_http_5xx_and_cut_transfers_are_still_retried_and_resumed(tmp_path):
    data = bytes(range(256)) * 64
    with LocalServer({"f.bin": data}, status_once={"f.bin": 503}) as server:
        http.download(server.url_of("f.bin"), str(tmp_path / "a.bin"), backoff=0, progress=False)
        assert server.requests == [("f.bin", None), ("f.bin", None)]
    with LocalServer({"f.bin": data}, break_once=["f.bin"]) as server:
        http.download(server.url_of("f.bin"), str(tmp_path / "b.bin"), backoff=0, progress=False)
        assert server.ranges == [None, f"bytes={len(data) // 2}-"]
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes() == data


def test_data_prep_says_unreachable_in_its_own_words(tmp_path):
    port = closed_port()
    url = f"http://127.0.0.1:{port}/dataset.zip"
    start = time.monotonic()
    with pytest.raises(http.Unreachable) as info:
        http.download(url, str(tmp_path / "dataset.zip"), progress=False)
    assert time.monotonic() - start < 2.0
    assert str(info.value) == (f"Cannot reach 127.0.0.1:{port} (it refused the connection), so {url} was not "
                               "downloaded and not retried; check the network and run again once it can, or pass "
                               "a local path to --source.")
    assert isinstance(info.value, DataError) and info.value.part is None


def test_only_a_failure_to_connect_counts_as_unreachable():
    import errno
    import socket
    import urllib.error

    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert http.unreachable_reason(urllib.error.URLError(gai)) == "its name does not resolve: Name or service not known"
    assert http.unreachable_reason(urllib.error.URLError(ConnectionRefusedError(111, "refused"))) == (
        "it refused the connection")
    assert http.unreachable_reason(urllib.error.URLError(OSError(errno.ENETUNREACH, "unreachable"))) == (
        "the network is unreachable")
    # What may pass is retried: a reset or timed-out connection, a cut transfer, any HTTP status.
    for error in (urllib.error.URLError(ConnectionResetError(104, "reset")), urllib.error.URLError(TimeoutError()),
                  ConnectionResetError(104, "reset"), TimeoutError(), ConnectionRefusedError(111, "refused"),
                  urllib.error.HTTPError("http://x", 503, "Service Unavailable", {}, None)):
        assert http.unreachable_reason(error) is None, error
