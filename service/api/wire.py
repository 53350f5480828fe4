r"""Where a request that protobuf refuses to parse goes wrong, named as a field path.

protobuf's decoder only says *that* a message is bad ("Wire format was corrupt", "Exceeded
upb_DecodeOptions_MaxDepth"). :func:`first_problem` reads the same bytes once more, after the
decoder refused them, with the message descriptors at hand and an explicit stack (no
recursion, linear in the bytes), and names the innermost field it can: ``records[3]`` for a
truncated record, ``records[3].payload`` for a ``Struct`` nested too deep (paths stop at the
JSON types ``Struct``, ``Value`` and ``ListValue``, as every other violation names them),
``samples[0].id`` for a string that is not UTF-8, ``request`` for the message itself.

It follows the decoder's rules: at most :data:`MAX_DEPTH` levels of nested messages and
groups below the request, strings of proto3 fields valid UTF-8, a field of an unexpected wire
type kept as an unknown field, groups closed by their own field number.

Example:
    >>> from costsim.analytics.v1.analytics_pb2 import GetCanaryReportRequest
    >>> first_problem(b"\x0a\x05ab", GetCanaryReportRequest.DESCRIPTOR)
    ('run_id', 'is cut short: the bytes end inside it')
    >>> first_problem(b"\x0a\x01\xff", GetCanaryReportRequest.DESCRIPTOR)
    ('run_id', 'is not valid UTF-8')
    >>> first_problem(b"\x0a\x01a", GetCanaryReportRequest.DESCRIPTOR) is None
    True

"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor, FieldDescriptor

# protobuf's Python decoder (upb) reads at most 100 levels of messages below the top one.
MAX_DEPTH = 100
# The reader runs on the event loop, after the decoder refused the bytes: at about 1 µs a
# field, this bounds it to a fraction of a second however large the request.
MAX_FIELDS = 200_000
_JSON_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)
_VARINT, _FIXED64, _LEN, _GROUP_START, _GROUP_END, _FIXED32 = 0, 1, 2, 3, 4, 5
_MAX_FIELD_NUMBER = (1 << 29) - 1
_FIXED_SIZES = {
    FieldDescriptor.TYPE_DOUBLE: 8,
    FieldDescriptor.TYPE_FIXED64: 8,
    FieldDescriptor.TYPE_SFIXED64: 8,
    FieldDescriptor.TYPE_FLOAT: 4,
    FieldDescriptor.TYPE_FIXED32: 4,
    FieldDescriptor.TYPE_SFIXED32: 4,
}
_SUBMESSAGE_TYPES = (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP)

CUT_SHORT = "is cut short: the bytes end inside it"
CORRUPT = "is not valid protobuf wire format"
NOT_UTF8 = "is not valid UTF-8"
TOO_DEEP = f"nests more than the {MAX_DEPTH} levels of messages protobuf decodes"


class _Bad(Exception):
    """The problem found, at the path of the frame being read."""


@dataclass
class _Frame:
    descriptor: Descriptor | None  # None: an unknown group
    end: int  # where a length-delimited message ends; -1 for a group
    path: str
    group: int = 0  # the field number that opened a group
    json: bool = False  # inside a Struct, Value or ListValue: fields below add no path
    counts: dict[int, int] = field(default_factory=dict)  # repeated field -> items seen


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``pos`` (ending before ``end``) and the position after it."""
    value = shift = 0
    for i in range(pos, min(pos + 10, end)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    raise _Bad(CUT_SHORT if end - pos < 10 else CORRUPT)


def _skip(data: bytes, pos: int, wire_type: int, end: int) -> tuple[int, int]:
    """Skip a value of ``wire_type`` at ``pos``; (new position, length of a LEN value)."""
    if wire_type == _VARINT:
        return _varint(data, pos, end)[1], 0
    if wire_type in (_FIXED64, _FIXED32):
        size = 8 if wire_type == _FIXED64 else 4
        if pos + size > end:
            raise _Bad(CUT_SHORT)
        return pos + size, 0
    length, pos = _varint(data, pos, end)
    if length > end - pos:
        raise _Bad(CUT_SHORT)
    return pos + length, length


def _child_path(frame: _Frame, fd: FieldDescriptor) -> str:
    """The path of a field of ``frame``'s message, counting items of repeated fields."""
    if frame.json:
        return frame.path  # inside a JSON value: the field that holds it names it
    name = fd.name if frame.path == "request" else f"{frame.path}.{fd.name}"
    if not fd.is_repeated:
        return name
    index = frame.counts.get(fd.number, 0)
    frame.counts[fd.number] = index + 1
    return f"{name}[{index}]"


def _check_packed(data: bytes, start: int, stop: int, fd: FieldDescriptor) -> None:
    size = _FIXED_SIZES.get(fd.type)
    if size is not None:
        if (stop - start) % size:
            raise _Bad(CUT_SHORT)
        return
    pos = start
    while pos < stop:
        pos = _varint(data, pos, stop)[1]


def first_problem(
    data: bytes, descriptor: Descriptor, max_fields: int = MAX_FIELDS
) -> tuple[str, str] | None:
    """The path and description of the first reason ``data`` is no ``descriptor`` message.

    None when this reader finds nothing wrong, or has read ``max_fields`` fields without
    finding it (then the caller names the request itself).
    """
    stack = [_Frame(descriptor, len(data), "request")]
    pos = 0
    try:
        for _ in range(max_fields):
            if not stack:
                break
            frame = stack[-1]
            if frame.end >= 0 and pos >= frame.end:
                stack.pop()
                continue
            if frame.end < 0 and pos >= len(data):
                raise _Bad(CUT_SHORT)  # a group never closed
            end = _end(stack, len(data))
            tag, pos = _varint(data, pos, end)
            number, wire_type = tag >> 3, tag & 7
            # Field number 0 is refused, except inside an unknown group (which upb skips).
            bad_number = number > _MAX_FIELD_NUMBER or (number == 0 and frame.descriptor)
            if wire_type > _FIXED32 or bad_number:
                raise _Bad(CORRUPT)
            if wire_type == _GROUP_END:
                if frame.group != number:
                    raise _Bad(CORRUPT)
                stack.pop()
                continue
            fd = None if frame.descriptor is None else frame.descriptor.fields_by_number.get(number)
            if wire_type == _GROUP_START:
                path = frame.path
                message = None
                if fd is not None and fd.type == FieldDescriptor.TYPE_GROUP:
                    path, message = _child_path(frame, fd), fd.message_type
                stack.append(_Frame(message, -1, path, group=number, json=frame.json))
                _check_depth(stack)
                continue
            try:
                pos, length = _skip(data, pos, wire_type, end)
            except _Bad:
                if fd is not None:  # name the field cut short, not the message around it
                    stack.append(_Frame(None, pos, _child_path(frame, fd)))
                raise
            if fd is None or wire_type != _LEN:
                continue  # unknown, or a known field of another wire type: kept as unknown
            if fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type is not None:
                child = fd.message_type
                json = frame.json or child.full_name in _JSON_TYPES
                stack.append(_Frame(child, pos, _child_path(frame, fd), json=json))
                _check_depth(stack)
                pos -= length  # read the message's fields next
            elif fd.type == FieldDescriptor.TYPE_STRING:
                body = data[pos - length : pos]
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError:
                    stack.append(_Frame(None, pos, _child_path(frame, fd)))
                    raise _Bad(NOT_UTF8) from None
            elif fd.is_repeated and fd.type != FieldDescriptor.TYPE_BYTES:
                _check_packed(data, pos - length, pos, fd)
    except _Bad as bad:
        return stack[-1].path if stack else "request", str(bad)
    return None


def _end(stack: list[_Frame], size: int) -> int:
    """Where the innermost length-delimited message around the reader ends."""
    for frame in reversed(stack):
        if frame.end >= 0:
            return frame.end
    return size


def _check_depth(stack: list[_Frame]) -> None:
    if len(stack) - 1 > MAX_DEPTH:
        raise _Bad(TOO_DEEP)
