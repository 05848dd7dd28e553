"""
Where the files of the file service live, and which names a peer may use.

Every sender institution has one directory under the files root; a peer
names a file of its own directory by a plain name. L{checkName} and
L{checkSender} say what a plain name is; L{FileStore} turns an accepted
name into a path and refuses every path that would lead out (a symbolic
link, anything that is not a regular file).
"""

import heapq
import os
import re
import stat
import unicodedata

from tvlink.errors import TVLinkError

#: The longest file name accepted, in UTF-8 bytes.
MAX_NAME = 128

#: The longest sender institution id accepted as a directory name.
MAX_SENDER = 32

#: Suffix of a file being received (hidden: names may not start with a dot).
PART_SUFFIX = ".part"

#: The names of the payment side's daily reconciliation files
#: (L{tvlink.files.reconcile.fileName}): never taken by an upload.
DAILY_FILE = re.compile(r"\ARC\d{8}\.txt\Z")


class NameRefused(TVLinkError, ValueError):
    """
    A file or sender name that is not a plain name; the message says why.
    """


def checkName(name, what="file name", limit=MAX_NAME):
    """
    C{name} if it is a plain file name: a non-empty string of at most
    C{limit} UTF-8 bytes, no C{/} or C{\\}, no control or format
    character, not starting with C{.} (so neither C{.} nor C{..}, nor a
    hidden or temporary name), not starting or ending with a space.

    @raise NameRefused: saying which rule it breaks.
    """
    if not isinstance(name, str):
        raise NameRefused("%s must be a string, not %s" % (what, type(name).__name__))
    if not name:
        raise NameRefused("%s is empty" % (what,))
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise NameRefused("%s is not valid Unicode" % (what,)) from None
    if size > limit:
        raise NameRefused("%s is %d bytes long, over the %d allowed" % (what, size, limit))
    if "/" in name or "\\" in name:
        raise NameRefused("%s %r holds a path separator" % (what, name))
    if name.startswith("."):
        raise NameRefused("%s %r starts with a dot" % (what, name))
    for character in name:
        if unicodedata.category(character) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            raise NameRefused("%s %r holds the control character U+%04X" % (what, name, ord(character)))
    if name != name.strip():
        raise NameRefused("%s %r starts or ends with white space" % (what, name))
    return name


def checkSender(sender):
    """
    C{sender} if it can be a directory name: a plain name (L{checkName})
    of ASCII letters, digits, C{-} and C{_}, at most L{MAX_SENDER} long.

    @raise NameRefused: otherwise.
    """
    checkName(sender, "sender", MAX_SENDER)
    if not (sender.isascii() and sender.replace("-", "").replace("_", "").isalnum()):
        raise NameRefused("sender %r is not made of letters, digits, '-' and '_'" % (sender,))
    return sender


def renameIntoPlace(source, target):
    """
    Rename the file C{source} (already on disk) to C{target} in one step,
    then put the directory's new entry on disk too, so a file reported
    stored or received is still there after a crash.
    """
    os.replace(source, target)
    fd = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    """
    The files root: one directory per sender institution.

    @ivar root: the root's real path.
    """

    def __init__(self, root):
        if not os.path.isdir(root):
            raise ValueError("files directory %r does not exist" % (root,))
        self.root = os.path.realpath(root)

    def directory(self, sender, create=False):
        """
        The directory of C{sender} (made when C{create}), or C{None} if
        there is none.

        @raise NameRefused: if C{sender} is not a plain sender id, or its
            directory is a link or not a directory.
        """
        path = os.path.join(self.root, checkSender(sender))
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            if not create:
                return None
            os.makedirs(path, mode=0o750, exist_ok=True)
            mode = os.lstat(path).st_mode
        if not stat.S_ISDIR(mode):
            raise NameRefused("the directory of sender %r is not a plain directory" % (sender,))
        return path

    def path(self, sender, name, create=False):
        """
        The path of C{name} in the directory of C{sender}.

        @raise NameRefused: if either is not a plain name.
        @raise FileNotFoundError: if the sender has no directory and
            C{create} is false.
        """
        checkName(name)
        folder = self.directory(sender, create)
        if folder is None:
            raise FileNotFoundError(name)
        return os.path.join(folder, name)

    def pathForWriting(self, sender, name):
        """
        The path an upload of C{name} of C{sender} is renamed to (the
        sender's directory made if need be): nothing there yet, or a
        regular file it replaces.

        @raise NameRefused: for a bad name, the name of a daily
            reconciliation file (L{DAILY_FILE}: the payment side's own), or
            a link, a directory or a special file under that name.
        """
        if DAILY_FILE.match(name):
            raise NameRefused(
                "%r is the name of the payment side's daily reconciliation file; uploads may not use it" % (name,)
            )
        path = self.path(sender, name, create=True)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return path
        if not stat.S_ISREG(mode):
            kind = "a link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else "a special file"
            raise NameRefused("%r is %s, not a file" % (name, kind))
        return path

    def openForReading(self, sender, name):
        """
        Open C{name} of C{sender} for reading: a regular file, never through
        a link.

        @return: C{(file, size)}.
        @raise NameRefused: for a bad name, or a link or special file.
        @raise FileNotFoundError: if there is no such file.
        """
        path = self.path(sender, name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError as e:
            if os.path.islink(path):
                raise NameRefused("%r is a link, not a file" % (name,)) from None
            if isinstance(e, FileNotFoundError):
                raise
            raise NameRefused("%r cannot be opened: %s" % (name, e.strerror)) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise NameRefused("%r is not a regular file" % (name,))
        return os.fdopen(fd, "rb"), info.st_size

    def listing(self, sender, limit=None):
        """
        The regular files of C{sender} (links, directories and partial
        files left out): C{([(name, size, mtime)], count)}, the first
        C{limit} by name (all when C{None}) and how many there are. No more
        than C{limit} names are held at once, however large the directory.
        """
        folder = self.directory(sender)
        if folder is None:
            return [], 0
        count = 0

        def plainFiles():
            nonlocal count
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        checkName(entry.name)
                    except NameRefused:
                        continue
                    if entry.is_file(follow_symlinks=False):
                        count += 1
                        yield entry.name

        names = sorted(plainFiles()) if limit is None else heapq.nsmallest(limit, plainFiles())
        found = []
        for name in names:
            try:
                info = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                found.append((name, info.st_size, info.st_mtime))
        return found, count

    def parts(self):
        """
        C{[(path, mtime)]} of the partial files (hidden names ending in
        L{PART_SUFFIX}) in every sender's directory; links are left out.
        """
        found = []
        for folder in os.scandir(self.root):
            try:
                checkSender(folder.name)
            except NameRefused:
                continue
            if not folder.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(folder.path):
                if entry.name.startswith(".") and entry.name.endswith(PART_SUFFIX):
                    if entry.is_file(follow_symlinks=False):
                        found.append((entry.path, entry.stat(follow_symlinks=False).st_mtime))
        return found

    def partPath(self, sender, name, digest):
        """
        The temporary name a file being received is written under: hidden,
        and tied to its digest, so an upload of other content never
        resumes from it.
        """
        folder = self.directory(sender, create=True)
        return os.path.join(folder, ".%s.%s%s" % (checkName(name), digest[:16], PART_SUFFIX))
