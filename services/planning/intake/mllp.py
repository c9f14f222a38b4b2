"""A small asyncio MLLP server: ``0x0b`` message ``0x1c 0x0d``.

For every complete frame the handler is awaited and its return value (the ACK) is written back
framed — so the ACK leaves only after the handler has stored the message. Frames on one connection
are handled in order. Frames may be split over TCP reads or share one; bytes before a start block are
discarded; a frame larger than ``max_frame`` is refused (the connection is closed). If the handler
raises, no ACK is sent and the connection is closed so the sender resends — so while the database is
unavailable no message is acknowledged, and a sender that resends what was not acknowledged has each
message stored (and taking effect) once when it is back: the intake keeps MSH-10 per sender and answers
a resend with the stored acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from shared.dependencies import DependencyUnavailable

log = logging.getLogger("sip.intake.mllp")

START = b"\x0b"
END = b"\x1c\x0d"
Handler = Callable[[bytes], Awaitable[bytes]]


def frame(payload: bytes) -> bytes:
    return START + payload + END


class FrameDecoder:
    """Incremental MLLP deframer (pure; used by the server and handy in tests)."""

    def __init__(self, max_frame: int = 1 << 20) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self.discarded = 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the complete frames. Raises :class:`FrameTooLarge`."""
        self._buf += data
        frames: list[bytes] = []
        while True:
            start = self._buf.find(START)
            if start < 0:
                self.discarded += len(self._buf)
                self._buf.clear()
                return frames
            if start:
                self.discarded += start
                del self._buf[:start]
            end = self._buf.find(END, 1)
            # a second start block before the end: the earlier frame was abandoned by the sender
            restart = self._buf.find(START, 1, end if end >= 0 else len(self._buf))
            if restart > 0:
                self.discarded += restart
                del self._buf[:restart]
                continue
            if end < 0:
                if len(self._buf) - 1 > self.max_frame:
                    self._buf.clear()
                    raise FrameTooLarge(self.max_frame)
                return frames
            if end - 1 > self.max_frame:
                del self._buf[: end + len(END)]
                raise FrameTooLarge(self.max_frame)
            frames.append(bytes(self._buf[1:end]))
            del self._buf[: end + len(END)]


class FrameTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"MLLP frame larger than {limit} bytes")


class MLLPServer:
    """``MLLPServer(handler, host, port)``; ``await start()``; ``port`` (after start); ``await stop()``."""

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 2575,
        *,
        max_frame: int = 1 << 20,
        idle_timeout: float | None = 600.0,
        ssl: Any = None,
    ) -> None:
        self._handler = handler
        self.host = host
        self._port = port
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self._ssl = ssl  # an ssl.SSLContext: MLLP over TLS
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._port, ssl=self._ssl)
        log.info("MLLP listening", extra={"host": self.host, "port": self.port})

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        port = int(server.sockets[0].getsockname()[1]) if server.sockets else self._port
        self._port = port
        server.close()
        for task in list(self._connections):
            task.cancel()
        for writer in list(self._writers):
            writer.close()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=5)

    async def __aenter__(self) -> MLLPServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        decoder = FrameDecoder(self.max_frame)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout=self.idle_timeout)
                except TimeoutError:
                    log.info("MLLP connection idle; closing", extra={"peer": str(peer)})
                    return
                if not data:
                    return
                try:
                    frames = decoder.feed(data)
                except FrameTooLarge as exc:
                    log.warning("MLLP frame refused: %s", exc, extra={"peer": str(peer)})
                    return
                for payload in frames:
                    try:
                        ack = await self._handler(payload)
                    except DependencyUnavailable:  # logged once per outage by whoever raised it
                        log.debug("message not stored (a dependency is unavailable); closing without ACK")
                        return
                    except Exception:
                        log.exception("MLLP handler failed; closing without ACK so the sender resends")
                        return
                    writer.write(frame(ack))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
