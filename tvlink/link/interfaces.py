"""
The interface an application implements to answer the requests that
arrive on a link.
"""

from zope.interface import Interface


class IMessageHandler(Interface):
    """
    Answers the requests that arrive on a link.
    """

    def handle(message):
        """
        Answer request C{message} (a C{dict}).

        @return: the answer C{dict} (at least C{resp}), or a L{Deferred}
            firing with it. The link fills in C{mti}, C{sender}, C{stan} and
            C{time} from the request. Raising, or failing the Deferred,
            answers C{96}.
        """
