"""
What the terminal API takes in and what it gives back: the checks of a
call's JSON body (each error names the field that is wrong), L{APIError}
for a call that cannot be carried out, and L{Reply} for an answer.
"""

import orjson

from tvlink.link import wire

#: The largest amount a call may carry: the wire's 12 digits of fen.
MAX_AMOUNT = wire.MAX_AMOUNT
MAX_BODY = 16 * 1024

#: The deepest nesting of arrays and objects a body may have.
MAX_DEPTH = 32

#: The one type of body the API takes (a C{charset} parameter may follow).
JSON_TYPE = b"application/json"


class APIError(Exception):
    """
    A call that cannot be carried out, with its HTTP status.

    @ivar result: the word counted in the C{requests_total} metric.
    """

    def __init__(self, code, error, message, field=None, result=None, extra=None, retry_after=5):
        Exception.__init__(self, message)
        self.code = code
        self.error = error
        self.message = message
        self.field = field
        self.result = result or error
        self.extra = extra or {}
        self.retry_after = retry_after

    def reply(self):
        body = {"error": self.error, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        headers = [(b"retry-after", b"%d" % (self.retry_after,))] if self.code == 503 else []
        return Reply(self.code, body, self.result, headers)


class Reply:
    """
    An answer: HTTP status, JSON body, and the result word for metrics.
    """

    def __init__(self, code, body, result, headers=()):
        self.code = code
        self.body = body
        self.result = result
        self.headers = list(headers)

    def repeated(self):
        body = dict(self.body)
        body["repeated"] = True
        return Reply(self.code, body, self.result, self.headers)


def invalid(field, message):
    return APIError(400, "invalid", message, field=field)


# -- input ---------------------------------------------------------------


def parseBody(request):
    """
    The request's JSON object body. Its type, size and depth are checked
    before it is parsed.

    @raise APIError: 415 if it is not sent as C{application/json}, 413 if
        too long, 400 if not a JSON object or nested over L{MAX_DEPTH}.
    """
    checkJSONType(request)
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise APIError(413, "too-large", "the body is over %d bytes" % (MAX_BODY,), field="body")
    content = request.content
    raw = content.read(MAX_BODY + 1) if content is not None else b""
    if len(raw) > MAX_BODY:
        raise APIError(413, "too-large", "the body is over %d bytes" % (MAX_BODY,), field="body")
    if not raw.strip():
        raise invalid("body", "the body must be a JSON object")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and nesting(raw) > MAX_DEPTH:
        raise invalid("body", "the body is nested deeper than %d arrays and objects" % (MAX_DEPTH,))
    try:
        # orjson checks the UTF-8 as it parses and refuses what the
        # standard library would let through (NaN, Infinity, a number
        # that overflows a double, a lone surrogate). An integer beyond
        # 64 bits comes back a float, which no field takes.
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise invalid("body", "the body is not valid JSON: %s" % (e,)) from None
    if not isinstance(data, dict):
        raise invalid("body", "the body must be a JSON object, not %s" % (type(data).__name__,))
    return data


def checkJSONType(request):
    """
    Refuse a body not sent as C{application/json}: the types a web page
    may send cross-site without asking first (forms, multipart, plain
    text) never reach the API's logic.

    @raise APIError: 415, naming the type given.
    """
    given = request.getHeader(b"content-type")
    if given is None:
        raise APIError(
            415, "unsupported-type", "send the body as JSON with Content-Type: application/json", field="content-type"
        )
    media = given.split(b";", 1)[0].strip().lower()
    if media != JSON_TYPE:
        raise APIError(
            415,
            "unsupported-type",
            "the body must be sent as application/json, not %s" % (media.decode("latin-1")[:80] or "(empty)",),
            field="content-type",
        )


def nesting(raw):
    """
    How deeply the arrays and objects of the JSON text C{raw} (bytes)
    nest, brackets inside strings not counted; found without parsing.
    """
    depth = deepest = 0
    inString = escaped = False
    for byte in raw:
        if inString:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                inString = False
        elif byte == 0x22:
            inString = True
        elif byte == 0x7B or byte == 0x5B:  # { [
            depth += 1
            if depth > deepest:
                deepest = depth
        elif byte == 0x7D or byte == 0x5D:  # } ]
            depth -= 1
    return deepest


def checkCard(value, field="card"):
    if value is None:
        raise invalid(field, "%s is required: the card number, 12 to 19 digits" % (field,))
    if not isinstance(value, str) or not (value.isascii() and value.isdigit()) or not 12 <= len(value) <= 19:
        raise invalid(field, "%s must be a string of 12 to 19 digits" % (field,))
    return value


def checkAmount(value, field="amount"):
    if value is None:
        raise invalid(field, "%s is required: whole fen, above zero" % (field,))
    if isinstance(value, bool):
        raise invalid(field, "%s must be whole fen, a JSON integer or a string of digits" % (field,))
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        if len(value) > 12:
            raise invalid(field, "%s must have at most 12 digits" % (field,))
        amount = int(value)
    else:
        raise invalid(field, "%s must be whole fen, a JSON integer or a string of digits" % (field,))
    if amount <= 0:
        raise invalid(field, "%s must be above zero" % (field,))
    if amount > MAX_AMOUNT:
        raise invalid(field, "%s must have at most 12 digits" % (field,))
    return amount


def checkCurrency(value, field="currency"):
    if value is None:
        return "156"
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 999:
        return "%03d" % (value,)
    if isinstance(value, str) and len(value) == 3 and value.isascii() and value.isdigit():
        return value
    raise invalid(field, "%s must be an ISO 4217 numeric code of 3 digits, such as \"156\"" % (field,))


def checkOrder(value, field="order"):
    if value is None:
        raise invalid(field, "%s is required: the merchant order id" % (field,))
    if not isinstance(value, str) or not value:
        raise invalid(field, "%s must be a non-empty string" % (field,))
    if len(value) > 64:
        raise invalid(field, "%s must be at most 64 characters" % (field,))
    if not value.isprintable():
        raise invalid(field, "%s must be printable characters only" % (field,))
    return value
