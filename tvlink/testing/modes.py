"""
The fault modes of L{tvlink.testing.faultproxy}: their names, the
directions they apply to, and L{Mode}, the mode of one direction.
"""

import math

__all__ = [
    "BOTH",
    "DIRECTIONS",
    "DOWN",
    "MODES",
    "UP",
    "Mode",
    "ModeError",
    "affectedDirections",
]

UP = "up"
DOWN = "down"
BOTH = "both"
DIRECTIONS = (UP, DOWN)

MODES = ("pass", "delay", "drop", "blackhole", "reset", "halfclose")


class ModeError(ValueError):
    """
    A mode, a mode parameter or a direction that the proxy does not know.
    """


class Mode:
    """
    What happens to the bytes going one way: a name from L{MODES} and, for
    C{delay}, the seconds each chunk is held.
    """

    __slots__ = ("name", "seconds")

    def __init__(self, name, seconds=0.0):
        self.name = name
        self.seconds = seconds

    @classmethod
    def fromParameters(cls, name, params):
        """
        The L{Mode} C{name} with keyword parameters C{params}.

        @raise ModeError: for an unknown name or a bad or missing parameter.
        """
        if name not in MODES:
            raise ModeError("unknown mode %r (one of %s)" % (name, ", ".join(MODES)))
        params = dict(params)
        seconds = 0.0
        if name == "delay":
            if "seconds" not in params:
                raise ModeError("mode delay needs seconds")
            seconds = _seconds(params.pop("seconds"))
        if params:
            raise ModeError(
                "mode %s takes no parameter %s" % (name, ", ".join(sorted(params)))
            )
        return cls(name, seconds)

    def __eq__(self, other):
        if not isinstance(other, Mode):
            return NotImplemented
        return (self.name, self.seconds) == (other.name, other.seconds)

    def __hash__(self):
        return hash((self.name, self.seconds))

    def __str__(self):
        if self.name == "delay":
            return "delay:%g" % (self.seconds,)
        return self.name

    def __repr__(self):
        return "<Mode %s>" % (self,)


def _seconds(value):
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ModeError("delay seconds must be a number, not %r" % (value,)) from None
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise ModeError("delay seconds must be zero or more, not %r" % (value,))
    return seconds




def affectedDirections(name, direction):
    """
    The directions a C{setMode(name, direction=direction)} changes: by
    default both, except for C{halfclose}, which closes the write side
    toward the client (C{"down"}); C{reset} applies to both only.

    @raise ModeError: for a direction that is not C{"up"}, C{"down"} or
        C{"both"}.
    """
    if direction is None:
        direction = DOWN if name == "halfclose" else BOTH
    if direction not in (UP, DOWN, BOTH):
        raise ModeError("direction must be up, down or both, not %r" % (direction,))
    if name == "reset" and direction != BOTH:
        raise ModeError("mode reset applies to both directions, not %s" % (direction,))
    return DIRECTIONS if direction == BOTH else (direction,)
