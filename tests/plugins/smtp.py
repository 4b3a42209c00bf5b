"""A local SMTP server: just enough of RFC 5321 to receive the messages a test sends."""

from __future__ import annotations

import socketserver

import pytest

from tests.plugins.common import serve_in_thread


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough of SMTP (RFC 5321) to receive one message."""

    def handle(self):
        self.wfile.write(b"220 test ESMTP\r\n")
        in_data, lines = False, []
        while line := self.rfile.readline():
            if in_data:
                if line.rstrip(b"\r\n") == b".":
                    in_data = False
                    self.server.received.append(b"".join(lines))
                    self.wfile.write(b"250 queued\r\n")
                else:
                    lines.append(line[1:] if line.startswith(b"..") else line)
                continue
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.wfile.write(b"250-test\r\n250 8BITMIME\r\n")
            elif verb == b"RCPT":
                self.server.recipients.append(line[8:].strip().decode())
                self.wfile.write(b"250 ok\r\n")
            elif verb == b"DATA":
                in_data = True
                self.wfile.write(b"354 go on\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def smtp_server():
    """A threaded SMTP server on a free loopback port; ``.received`` holds raw messages, ``.recipients`` RCPTs."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.received, server.recipients = [], []
    serve_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()
