"""
The platform's file calls (L{PlatformFiles}, mixed into
L{tvlink.PlatformService}): list, fetch and send files on the payment
node's file service, over the links' TLS and framing.
"""

from tvlink.errors import TVLinkError
from tvlink.link.service import failNow


class NoFileService(TVLinkError):
    """
    The platform was given no file service endpoint (C{files_endpoint}).
    """


class PlatformFiles:
    """
    C{listFiles}, C{fetchFile} and C{sendFile} on the file service at
    C{files_endpoint} (C{"HOST:PORT"}), as this platform's sender.
    """

    filesEndpoint = None
    _fileClient = None

    def fileClient(self):
        """
        The L{tvlink.files.client.FileClient} the calls use (made once).

        @raise NoFileService: without C{files_endpoint}.
        """
        if self._fileClient is None:
            if self.filesEndpoint is None:
                raise NoFileService("no file service endpoint (files_endpoint / --files-connect) was given")
            from tvlink.files.client import FileClient

            host, _, port = self.filesEndpoint.rpartition(":")
            self._fileClient = FileClient(host, int(port), self.settings.sender, tls=self.tls, settings=self.settings)
        return self._fileClient

    def _call(self, name, *args, **kwargs):
        try:
            client = self.fileClient()
        except NoFileService as e:
            return failNow(e)
        return getattr(client, name)(*args, **kwargs)

    def listFiles(self):
        """
        A L{Deferred} of this sender's files: C{dict}s with C{name},
        C{size}, C{mtime}.
        """
        return self._call("list")

    def fetchFile(self, name, dest, progress=None):
        """
        Download C{name} to C{dest}, resuming a cut-off try; see
        L{tvlink.files.client.FileClient.get}.
        """
        return self._call("get", name, dest, progress)

    def sendFile(self, src, name, progress=None):
        """
        Upload the file C{src} as C{name}; see
        L{tvlink.files.client.FileClient.put}.
        """
        return self._call("put", src, name, progress)
