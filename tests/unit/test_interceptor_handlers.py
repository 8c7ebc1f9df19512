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
