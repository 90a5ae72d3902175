"""``s2_client.RecClient`` sends a request again after a 503 with ``Retry-After``, a bounded number of times."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from online.main import s2_client

pytestmark = pytest.mark.unit


class Replies:
    """The statuses to answer in turn (the last one repeats), and how many requests came."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.count = 0


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Replies]]:
    replies = Replies(request.param)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 -- http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            status = replies.statuses[min(replies.count, len(replies.statuses) - 1)]
            replies.count += 1
            body = json.dumps({"userid": 1, "item_list": []} if status == 200 else {"error": {"code": "x"}}).encode()
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", replies
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("server", [[503, 503, 200]], indirect=True)
def test_a_503_with_retry_after_is_sent_again(server: tuple[str, Replies]) -> None:
    url, replies = server
    assert s2_client.RecClient(url).recommend(1)["userid"] == 1
    assert replies.count == 3


@pytest.mark.parametrize("server", [[503]], indirect=True)
def test_retries_are_bounded(server: tuple[str, Replies]) -> None:
    url, replies = server
    with pytest.raises(RuntimeError, match="HTTP 503"):
        s2_client.RecClient(url).recommend(1)
    assert replies.count == s2_client.RETRIES_503 + 1


@pytest.mark.parametrize("server", [[500, 200]], indirect=True)
def test_other_errors_are_not_retried(server: tuple[str, Replies]) -> None:
    url, replies = server
    with pytest.raises(RuntimeError, match="HTTP 500"):
        s2_client.RecClient(url).recommend(1)
    assert replies.count == 1
