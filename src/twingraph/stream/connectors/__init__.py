"""Sources and sinks of the streaming engine; the contract they implement is in ``base``."""

from twingraph.stream.connectors.base import Sink, Source, SourceSplitContext

__all__ = ["Sink", "Source", "SourceSplitContext"]
