"""The server interceptors (telemetry.RpcMetrics, process.ErrorInterceptor,
frontend/auth.AuthInterceptor) wrap a method's handler once, not on every call,
and wrap again when the handler they get is another one."""

import asyncio

import grpc

from frontend.auth import AuthInterceptor
from notifymesh.server import telemetry
from notifymesh.server.process import ErrorInterceptor


class Details:
    def __init__(self, method: str):
        self.method = method


async def _handler(request, context):
    return request


def _interceptors():
    return [telemetry.RpcMetrics(), ErrorInterceptor(),
            AuthInterceptor(authenticator=None, limits=None, audit=None, enabled=lambda: True, topic_of=None)]


def test_a_methods_handler_is_wrapped_once_and_again_when_it_changes():
    async def run():
        for interceptor in _interceptors():
            first, second = grpc.unary_unary_rpc_method_handler(_handler), grpc.unary_unary_rpc_method_handler(_handler)

            async def serves(handler):
                async def continuation(_details):
                    return handler
                return await interceptor.intercept_service(continuation, Details("/notifymesh.v1.Publisher/GetTopic"))

            wrapped = await serves(first)
            assert wrapped is not first and await serves(first) is wrapped, type(interceptor)
            again = await serves(second)
            assert again is not wrapped and await serves(second) is again, type(interceptor)

    asyncio.run(run())


def test_an_unknown_method_is_not_remembered():
    async def run():
        async def continuation(_details):
            return None
        for interceptor in _interceptors():
            for i in range(3):
                assert await interceptor.intercept_service(continuation, Details(f"/x.Y/Z{i}")) is None
            assert interceptor._wrapped == {}, type(interceptor)

    asyncio.run(run())


class Context:
    def code(self):
        return None  # as grpc's before a status is set: OK


def _sample(name: str, **labels) -> float:
    return telemetry.REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_stream_is_counted_open_while_it_runs_and_timed_with_its_code_once_it_ends():
    """Cost only changed (telemetry.RPC_DURATION): what the scrape shows is as before."""
    method = "/notifymesh.v1.Subscriber/Subscribe"
    open_ = {"rpc_method": method}
    timed = {"rpc_method": method, "rpc_grpc_status_code": "OK"}

    async def frames(request, context):
        yield b"one"
        assert _sample("notifymesh_rpc_server_active_streams", **open_) == opened + 1
        yield b"two"

    async def run():
        interceptor = telemetry.RpcMetrics()

        async def continuation(_details):
            return grpc.unary_stream_rpc_method_handler(frames)
        wrapped = await interceptor.intercept_service(continuation, Details(method))
        assert [f async for f in wrapped.unary_stream(b"", Context())] == [b"one", b"two"]

    opened, count = _sample("notifymesh_rpc_server_active_streams", **open_), \
        _sample("notifymesh_rpc_server_duration_seconds_count", **timed)
    asyncio.run(run())
    assert _sample("notifymesh_rpc_server_active_streams", **open_) == opened
    assert _sample("notifymesh_rpc_server_duration_seconds_count", **timed) == count + 1
    text = telemetry.scrape().decode()
    assert 'notifymesh_rpc_server_duration_seconds_bucket{le="0.0005",rpc_grpc_status_code="OK",' \
           'rpc_method="/notifymesh.v1.Subscriber/Subscribe"}' in text
