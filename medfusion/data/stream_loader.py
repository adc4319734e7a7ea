"""The training loader of streamed shards (``ShardDataModule(order="stream")``): LitData's ``StreamingDataLoader``,
whose position (samples yielded) travels in Lightning checkpoints, with a restored position used by one epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from litdata import StreamingDataLoader


class StreamLoader(StreamingDataLoader):
    """``StreamingDataLoader`` whose state loaded from a checkpoint positions the next epoch only.

    LitData replays a loaded state until one iteration runs to its end. Lightning ends a resumed epoch once the
    batches it had left are done, without asking for one more, so LitData would replay the restored position in
    every later epoch (yielding the same few batches, or none). Here the epoch after the resumed one starts anew.
    """

    _replay_pending = False

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._replay_pending = True

    def __iter__(self) -> Iterator[Any]:
        if self.restore and not self._replay_pending:
            self.restore = False  # the resumed epoch is over: a new one
        self._replay_pending = False
        return super().__iter__()
