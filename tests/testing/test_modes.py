"""
Tests for L{tvlink.testing.modes}: parsing, text and directions.
"""

from twisted.trial.unittest import SynchronousTestCase

from tvlink.testing.modes import Mode, ModeError, affectedDirections


class ModeTests(SynchronousTestCase):
    def test_fromParameters(self):
        self.assertEqual(Mode.fromParameters("pass", {}), Mode("pass"))
        self.assertEqual(Mode.fromParameters("delay", {"seconds": "0.25"}), Mode("delay", 0.25))
        self.assertRaises(ModeError, Mode.fromParameters, "delay", {"seconds": "-1"})
        self.assertRaises(ModeError, Mode.fromParameters, "drop", {"seconds": 1})

    def test_text(self):
        self.assertEqual(str(Mode("delay", 1.5)), "delay:1.5")
        self.assertEqual(str(Mode("blackhole")), "blackhole")
        self.assertEqual(repr(Mode("drop")), "<Mode drop>")
        self.assertEqual(len({Mode("pass"), Mode("pass"), Mode("delay", 1)}), 2)

    def test_affectedDirections(self):
        self.assertEqual(affectedDirections("delay", None), ("up", "down"))
        self.assertEqual(affectedDirections("halfclose", None), ("down",))
        self.assertEqual(affectedDirections("halfclose", "up"), ("up",))
        self.assertEqual(affectedDirections("reset", "both"), ("up", "down"))
        self.assertRaises(ModeError, affectedDirections, "reset", "down")
        self.assertRaises(ModeError, affectedDirections, "pass", "sideways")
