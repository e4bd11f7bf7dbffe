"""Bind the ``Call`` builders of ``_resources`` to a client, blocking or awaited.

``sync_op(build)`` on a resource class becomes a method that builds the call with the caller's
arguments and sends it through the owning client; ``async_op`` does the same with ``await``.
The parameters (and their types) are the builder's, so each method is written once.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from twingraph.client._calls import Call

P = ParamSpec("P")
T = TypeVar("T")


class SyncSender(Protocol):
    def _send(self, call: Call[Any]) -> Any: ...


class AsyncSender(Protocol):
    async def _send(self, call: Call[Any]) -> Any: ...


class SyncGroup:
    def __init__(self, client: SyncSender) -> None:
        self._client = client


class AsyncGroup:
    def __init__(self, client: AsyncSender) -> None:
        self._client = client


class sync_op(Generic[P, T]):  # noqa: N801 - used like a decorator
    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, obj: None, owner: type) -> sync_op[P, T]: ...

    @overload
    def __get__(self, obj: SyncGroup, owner: type) -> Callable[P, T]: ...

    def __get__(self, obj: SyncGroup | None, owner: type) -> Any:
        if obj is None:
            return self
        build, client = self.build, obj._client

        @functools.wraps(build)
        def method(*args: P.args, **kwargs: P.kwargs) -> T:
            result: T = client._send(build(*args, **kwargs))
            return result
        return method


class async_op(Generic[P, T]):  # noqa: N801 - used like a decorator
    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, obj: None, owner: type) -> async_op[P, T]: ...

    @overload
    def __get__(self, obj: AsyncGroup, owner: type) -> Callable[P, Awaitable[T]]: ...

    def __get__(self, obj: AsyncGroup | None, owner: type) -> Any:
        if obj is None:
            return self
        build, client = self.build, obj._client

        @functools.wraps(build)
        async def method(*args: P.args, **kwargs: P.kwargs) -> T:
            result: T = await client._send(build(*args, **kwargs))
            return result
        return method
