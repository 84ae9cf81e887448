"""How everything in the SDK that holds something ends: `close()` finishes it, `aclose()` ends it now."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class Closing(abc.ABC):
    """The base of Client, Session and RequestStream: the one meaning of each way to end them.

    - `aclose()` ends it now: whatever still runs in it is cancelled (the server aborts those requests and frees
      what they held). Calling it again does nothing. Leaving `async with` calls it, however the block ended.
    - `close()` (Client and Session only) finishes it: nothing new is accepted, what is in flight runs to its end,
      then it ends as `aclose()` ends it. A stream has none: a request is finished by reading it to its end.
    """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """End now."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
