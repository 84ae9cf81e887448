"""Sessions: many requests on one call, each streamed in order, bounded, watched, cancelled and cleaned up."""

from rillet.server.session.lifecycle import Lifecycle
from rillet.server.session.session import RequestQuota, Session

__all__ = ["Lifecycle", "RequestQuota", "Session"]
