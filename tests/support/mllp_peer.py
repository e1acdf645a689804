"""An EHR-side MLLP receiver for tests, on a real socket: records every message and answers with
the MSA-1 it is told to (AA by default, or AE/AR), or not at all ("silent": to test timeouts), or
closes the connection on each message without answering ("close": a peer that crashes)."""

from __future__ import annotations

import socketserver
import threading

from integrations.hl7.mllp import END, START, Framer


class MllpPeer:
    def __init__(self, answer: str = "AA") -> None:
        self.answer = answer
        self.messages: list[str] = []
        peer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                framer = Framer(1 << 24)
                while True:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    for frame in framer.feed(data):
                        text = frame.payload.decode("utf-8")
                        peer.messages.append(text)
                        if peer.answer == "close":
                            return
                        if peer.answer == "silent" or text.split("|", 9)[8].startswith("ACK"):
                            continue  # an application ACK is not acknowledged (it says MSH-15/16 NE)
                        control = text.split("\r", 1)[0].split("|")[9]
                        reply = (
                            f"MSH|^~\\&|EHR|HOSP|FHIRAI||20260101||ACK^R01^ACK|P{len(peer.messages)}|P|2.5.1\r"
                            f"MSA|{peer.answer}|{control}\r"
                        )
                        if peer.answer != "AA":
                            reply += "ERR||PID^1^3|204^Unknown key identifier^HL70357|E\r"
                        self.request.sendall(START + reply.encode() + END)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])

    def __enter__(self) -> MllpPeer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def segments(self, index: int = -1) -> dict[str, list[list[str]]]:
        out: dict[str, list[list[str]]] = {}
        for seg in self.messages[index].split("\r"):
            if seg:
                out.setdefault(seg[:3], []).append(seg.split("|"))
        return out
