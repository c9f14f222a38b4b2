"""Client of the consent gate: "may organisation X receive category Y about person P for purpose Z?"

Planning and notify call this before they disclose anything. Two transports, one answer type
(:class:`shared.contracts.ConsentDecisionReply`):

- RabbitMQ request/reply (``ConsentGateClient(broker=runtime.broker)``): a
  :class:`~shared.contracts.ConsentDecisionRequested` to ``consent.commands``/``consent.decide.v1``
  with a direct reply-to; the consent service answers on it.
  faststream's ``broker.request`` serialises requests per broker (one lock, one reply consumer per
  request), so under concurrency prefer the next form.
- RabbitMQ request/reply, pipelined (``ConsentGateClient(amqp_url=settings.amqp_url)``): its own
  connection and one direct reply-to consumer; many requests in flight, matched by correlation id.
- HTTP (``ConsentGateClient(base_url="http://127.0.0.1:8081")``): ``POST /decisions``.

The gate fails closed: when no answer comes (timeout, consent service down, the request is
unroutable) :class:`ConsentGateUnavailable` is raised — a transient error, so a message handler
that calls the gate is retried by the suite's retry policy and never discloses without an answer.
A ``deny`` is an answer, not an error: check ``reply.decision``.

    gate = ConsentGateClient(broker=runtime.broker)
    reply = await gate.decide(patient_identifier=pnr, recipient_hsa_id=hsa, category="sip-plan",
                              purpose="share-information", case_id=case_id, requested_by="planning")
    if reply.decision != "permit": ...   # reply.reason says why; reply.audit_event_id is the log entry
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any
from uuid import UUID

import aio_pika
import httpx
from faststream.rabbit import RabbitBroker
from pydantic import ValidationError

from shared.broker_failover import connect_failover
from shared.contracts import ConsentDecisionReply, ConsentDecisionRequested, ConsentPurpose
from shared.topology import contract_exchange

UNAVAILABLE_REASONS = frozenset({"consent-service-error", "invalid-request"})


class ConsentGateUnavailable(Exception):
    """No usable answer from the consent gate: do not disclose; retry later."""


DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class PipelinedRpc:
    """Request/reply over RabbitMQ's direct reply-to with many requests in flight on one channel."""

    def __init__(self, amqp_url: str) -> None:
        self._url = amqp_url
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._pending: dict[str, asyncio.Future[bytes]] = {}
        self._lock = asyncio.Lock()

    async def _ensure(self) -> aio_pika.abc.AbstractExchange:
        if self._exchange is not None:
            return self._exchange
        async with self._lock:
            if self._exchange is None:
                self._connection = await connect_failover(self._url)
                self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                reply = await self._channel.get_queue(DIRECT_REPLY_TO, ensure=False)
                await reply.consume(self._on_reply, no_ack=True)
                self._exchange = await self._channel.get_exchange(
                    ConsentDecisionRequested.exchange, ensure=False
                )
        assert self._exchange is not None
        return self._exchange

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)

    async def request(self, body: bytes, *, correlation_id: str, message_id: str, timeout: float) -> bytes:
        exchange = await self._ensure()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            async with asyncio.timeout(timeout):
                await exchange.publish(
                    aio_pika.Message(
                        body,
                        content_type="application/json",
                        correlation_id=correlation_id,
                        message_id=message_id,
                        type=ConsentDecisionRequested.routing_key,
                        reply_to=DIRECT_REPLY_TO,
                        expiration=timeout,
                    ),
                    routing_key=ConsentDecisionRequested.routing_key,
                    mandatory=True,
                )
                return await future
        finally:
            self._pending.pop(correlation_id, None)

    async def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = self._channel = self._exchange = None


class ConsentGateClient:
    def __init__(
        self,
        *,
        broker: RabbitBroker | None = None,
        amqp_url: str | None = None,
        base_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        timeout: float = 5.0,
    ) -> None:
        if broker is None and amqp_url is None and base_url is None and http is None:
            raise ValueError("give a broker or amqp_url (RabbitMQ request/reply) or a base_url/http client")
        self._broker = broker
        self._rpc = PipelinedRpc(amqp_url) if amqp_url is not None and broker is None else None
        self._timeout = timeout
        self._http = http
        self._own_http = False
        if http is None and base_url is not None and broker is None and amqp_url is None:
            self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout)
            self._own_http = True

    async def aclose(self) -> None:
        if self._rpc is not None:
            await self._rpc.close()
        if self._own_http and self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> ConsentGateClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def decide(
        self,
        *,
        patient_identifier: str,
        recipient_hsa_id: str,
        category: str,
        purpose: ConsentPurpose,
        at: datetime | None = None,
        case_id: UUID | None = None,
        requested_by: str | None = None,
        correlation_id: str | None = None,
    ) -> ConsentDecisionReply:
        request = ConsentDecisionRequested(
            patient_identifier=patient_identifier,
            recipient_hsa_id=recipient_hsa_id,
            category=category,
            purpose=purpose,
            at=at,
            case_id=case_id,
            requested_by=requested_by,
            correlation_id=correlation_id,
        )
        if self._rpc is not None:
            reply = await self._pipelined(request)
        elif self._broker is not None:
            reply = await self._over_rabbitmq(request)
        else:
            reply = await self._over_http(request)
        if reply.request_message_id not in (None, request.message_id):
            raise ConsentGateUnavailable("the answer was for another request")
        if reply.reason in UNAVAILABLE_REASONS:
            raise ConsentGateUnavailable(f"the consent gate could not decide: {reply.reason}")
        return reply

    async def permitted(self, **kwargs: Any) -> bool:
        """Shorthand: True only on an explicit permit."""
        return (await self.decide(**kwargs)).decision == "permit"

    async def _over_rabbitmq(self, request: ConsentDecisionRequested) -> ConsentDecisionReply:
        assert self._broker is not None
        try:
            response = await self._broker.request(
                request.model_dump_json().encode(),
                exchange=contract_exchange(ConsentDecisionRequested),
                routing_key=ConsentDecisionRequested.routing_key,
                message_id=str(request.message_id),
                correlation_id=str(request.message_id),
                content_type="application/json",
                message_type=ConsentDecisionRequested.routing_key,
                expiration=self._timeout,
                timeout=self._timeout,
            )
            return ConsentDecisionReply.model_validate_json(response.body)
        except (TimeoutError, ValidationError) as exc:
            raise ConsentGateUnavailable(f"no usable answer over RabbitMQ: {type(exc).__name__}") from None
        except Exception as exc:  # unroutable (consent never started), connection lost, …
            raise ConsentGateUnavailable(f"request over RabbitMQ failed: {type(exc).__name__}") from None

    async def _pipelined(self, request: ConsentDecisionRequested) -> ConsentDecisionReply:
        assert self._rpc is not None
        try:
            raw = await self._rpc.request(
                request.model_dump_json().encode(),
                correlation_id=str(request.message_id),
                message_id=str(request.message_id),
                timeout=self._timeout,
            )
            return ConsentDecisionReply.model_validate_json(raw)
        except (TimeoutError, ValidationError) as exc:
            raise ConsentGateUnavailable(f"no usable answer over RabbitMQ: {type(exc).__name__}") from None
        except Exception as exc:
            raise ConsentGateUnavailable(f"request over RabbitMQ failed: {type(exc).__name__}") from None

    async def _over_http(self, request: ConsentDecisionRequested) -> ConsentDecisionReply:
        assert self._http is not None
        body = request.model_dump(
            mode="json",
            include={
                "patient_identifier",
                "recipient_hsa_id",
                "category",
                "purpose",
                "at",
                "case_id",
                "requested_by",
            },
        )
        headers = {"X-Correlation-Id": request.correlation_id} if request.correlation_id else None
        try:
            r = await self._http.post("/decisions", json=body, headers=headers, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise ConsentGateUnavailable(f"request over HTTP failed: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise ConsentGateUnavailable(f"the consent gate answered HTTP {r.status_code}")
        try:
            return ConsentDecisionReply.model_validate_json(r.content)
        except ValidationError:
            raise ConsentGateUnavailable("the consent gate's answer did not validate") from None
