"""
Round-trip samples of a link, for percentiles.
"""

import math
from collections import deque


class RoundTrips:
    """
    The last C{size} round-trip times of a link, for percentiles.
    """

    def __init__(self, size=1024):
        self._samples = deque(maxlen=size)
        #: Record one round trip, in seconds.
        self.add = self._samples.append
        #: Record several round trips, in seconds.
        self.extend = self._samples.extend

    def __len__(self):
        return len(self._samples)

    def percentile(self, p):
        """
        The C{p}th percentile (0-100) in seconds, nearest rank, or C{None}
        with no samples.
        """
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        index = min(len(ordered) - 1, max(0, math.ceil(p / 100.0 * len(ordered)) - 1))
        return ordered[index]
