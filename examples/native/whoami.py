#!/usr/bin/env python3
"""Ask pidbus who you are, over its native socket, with no D-Bus library.

What it shows: the native socket carries plain D-Bus messages, one per
SOCK_SEQPACKET record, with no SASL handshake before them (the kernel tells
the broker who connected). The program

  1. connects to the native socket,
  2. sends the standard Hello call and reads the reply: its unique name,
  3. calls org.pidbus.Bus1.GetConnectionIdentity on that unique name and
     prints uid, pid, pidfs_id and exe from the a{sv} the broker returns.

The messages are built and read by the small marshaller below, which knows
only what this program needs. See docs/protocol.md.

Usage: whoami.py [SOCKET]
  SOCKET defaults to $PIDBUS_ADDRESS, else $XDG_RUNTIME_DIR/pidbus.sock.
Python 3 standard library only. Exit status 1 on any error.
"""

import array
import os
import socket
import struct
import sys

# Message types and header field codes of the D-Bus specification.
METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL = 1, 2, 3, 4, 5
DESTINATION, SENDER, SIGNATURE, UNIX_FDS = 6, 7, 8, 9

BUS = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"

# At most 253 descriptors come with one record.
MAX_FDS = 253


class Failure(Exception):
    """Anything that ends the program with status 1."""


# --- Writing (little-endian) ------------------------------------------------


def pad_to(buf, n):
    buf.extend(b"\0" * (-len(buf) % n))


def put_string(buf, text):
    """Type s or o: u32 length, the UTF-8 bytes, a NUL."""
    data = text.encode()
    pad_to(buf, 4)
    buf += struct.pack("<I", len(data)) + data + b"\0"


def put_signature(buf, text):
    """Type g: u8 length, the bytes, a NUL."""
    data = text.encode()
    buf += bytes([len(data)]) + data + b"\0"


def method_call(serial, destination, path, interface, member, string_args=()):
    """A METHOD_CALL whose arguments are all strings (type s)."""
    body = bytearray()
    for arg in string_args:
        put_string(body, arg)
    fields = [
        (PATH, "o", path),
        (INTERFACE, "s", interface),
        (MEMBER, "s", member),
        (DESTINATION, "s", destination),
    ]
    if string_args:
        fields.append((SIGNATURE, "g", "s" * len(string_args)))
    array_bytes = bytearray()
    for code, sig, value in fields:
        # Each field is a struct (y v): aligned to 8, counted from the
        # message's start; the array starts at offset 16, itself 8-aligned.
        pad_to(array_bytes, 8)
        array_bytes.append(code)
        put_signature(array_bytes, sig)
        if sig == "g":
            put_signature(array_bytes, value)
        else:
            put_string(array_bytes, value)
    msg = bytearray(b"l")  # little-endian
    msg += bytes([METHOD_CALL, 0, 1])  # type, flags, protocol version
    msg += struct.pack("<III", len(body), serial, len(array_bytes))
    msg += array_bytes
    pad_to(msg, 8)  # the body starts 8-aligned
    return bytes(msg + body)


# --- Reading ------------------------------------------------------------------


class Reader:
    """Reads D-Bus values from one message. Offsets count from the message's
    start, as the specification aligns them (the body starts 8-aligned, so
    this also holds for the body)."""

    FIXED = {"y": ("B", 1), "b": ("I", 4), "n": ("h", 2), "q": ("H", 2),
             "i": ("i", 4), "u": ("I", 4), "h": ("I", 4), "x": ("q", 8),
             "t": ("Q", 8), "d": ("d", 8)}

    def __init__(self, data, endian, pos=0):
        self.data, self.endian, self.pos = data, endian, pos

    def align(self, n):
        self.pos += -self.pos % n

    def take(self, n):
        if self.pos + n > len(self.data):
            raise Failure("malformed message from the broker: truncated value")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def fixed(self, code):
        fmt, size = self.FIXED[code]
        self.align(size)
        value, = struct.unpack(self.endian + fmt, self.take(size))
        return bool(value) if code == "b" else value

    def string(self, length_size=4):
        length = self.fixed("u") if length_size == 4 else self.take(1)[0]
        text = self.take(length).decode()
        self.take(1)  # the NUL
        return text

    def value(self, sig):
        """Reads one value of the single complete type `sig`."""
        code = sig[0]
        if code in self.FIXED:
            return self.fixed(code)
        if code in "so":
            return self.string()
        if code == "g":
            return self.string(length_size=1)
        if code == "v":
            return self.value(self.string(length_size=1))
        if code == "a":
            element = sig[1:]
            length = self.fixed("u")
            self.align(alignment(element[0]))  # even when it is empty
            end = self.pos + length
            if element[0] == "{":
                key_sig, value_sig = split_types(element[1:-1])
                items = {}
                while self.pos < end:
                    self.align(8)
                    key = self.value(key_sig)
                    items[key] = self.value(value_sig)
                return items
            items = []
            while self.pos < end:
                items.append(self.value(element))
            return items
        if code == "(":
            self.align(8)
            return tuple(self.value(t) for t in split_types(sig[1:-1]))
        raise Failure(f"this example cannot read D-Bus type {sig!r}")

    def values(self, signature):
        return [self.value(t) for t in split_types(signature)]


def alignment(code):
    """The alignment of a type, by its first character."""
    if code in "ygv":
        return 1
    if code in "nq":
        return 2
    if code in "xtd({":
        return 8
    return 4  # b i u h s o a


def split_types(signature):
    """Splits a signature into its single complete types."""
    types, i = [], 0
    while i < len(signature):
        j = i
        while signature[j] == "a":
            j += 1
        if signature[j] in "({":
            depth = 0
            for k in range(j, len(signature)):
                depth += signature[k] in "({"
                depth -= signature[k] in ")}"
                if depth == 0:
                    j = k
                    break
        types.append(signature[i:j + 1])
        i = j + 1
    return types


def split(record):
    """The whole messages in `record`: the broker may put several in one
    record, back to back (each aligned from its own start)."""
    messages = []
    at = 0
    while at < len(record):
        if len(record) - at < 16 or record[at:at + 1] not in (b"l", b"B"):
            raise Failure("the broker sent something that is not a D-Bus message")
        endian = "<" if record[at:at + 1] == b"l" else ">"
        body_len, _, fields_len = struct.unpack(endian + "III", record[at + 4:at + 16])
        end = at + (16 + fields_len + 7) // 8 * 8 + body_len
        if end > len(record):
            raise Failure("a record from the broker ends inside a message")
        messages.append(record[at:end])
        at = end
    return messages


def parse(message):
    """Header fields and body values of one whole message."""
    endian = "<" if message[0:1] == b"l" else ">"
    kind = message[1]
    body_len, serial, fields_len = struct.unpack(endian + "III", message[4:16])
    reader = Reader(message, endian, 16)
    fields = {}
    end = 16 + fields_len
    while reader.pos < end:
        reader.align(8)
        code = reader.fixed("y")
        fields[code] = reader.value("v")
    reader.align(8)
    if reader.pos + body_len != len(message):
        raise Failure("a message's header fields overrun its body")
    body = reader.values(fields.get(SIGNATURE, ""))
    return kind, serial, fields, body


# --- The connection -----------------------------------------------------------


def receive(sock):
    """One record: one or more whole messages. Descriptors that come with
    it are closed (this program expects none)."""
    # Peek with MSG_TRUNC: the kernel says the record's full length.
    size = sock.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
    if size == 0:
        raise Failure("the broker closed the connection (its log says why)")
    fds = array.array("i")
    data, ancillary, flags, _ = sock.recvmsg(
        size, socket.CMSG_SPACE(MAX_FDS * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    for fd in fds:
        os.close(fd)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        raise Failure("a record from the broker was truncated")
    return data


def call(sock, serial, destination, path, interface, member, *args):
    """Sends one call and returns its reply's body; an error reply ends the
    program. Other messages (the NameAcquired signal) are skipped."""
    sock.send(method_call(serial, destination, path, interface, member, args))
    while True:
        for message in split(receive(sock)):
            kind, _, fields, body = parse(message)
            if kind not in (METHOD_RETURN, ERROR) or fields.get(REPLY_SERIAL) != serial:
                continue
            if kind == ERROR:
                text = body[0] if body and isinstance(body[0], str) else ""
                raise Failure(f"{member}: {fields.get(ERROR_NAME)}: {text}")
            return body


def socket_path():
    if len(sys.argv) > 1:
        return sys.argv[1]
    address = os.environ.get("PIDBUS_ADDRESS")
    if address:
        return address.removeprefix("unix:path=")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "pidbus.sock")
    raise Failure("no socket: give its path, or set PIDBUS_ADDRESS or XDG_RUNTIME_DIR")


def main():
    path = socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
    except OSError as e:
        raise Failure(f"cannot connect to {path}: {e.strerror}") from e
    # Hello first; nothing else may be sent before its reply arrives.
    unique_name, = call(sock, 1, BUS, BUS_PATH, BUS, "Hello")
    print(f"unique name: {unique_name}")
    identity, = call(sock, 2, BUS, BUS_PATH, "org.pidbus.Bus1",
                     "GetConnectionIdentity", unique_name)
    unknown = "(not known)"
    print(f"uid:         {identity.get('uid', unknown)}   (this process: {os.getuid()})")
    print(f"pid:         {identity.get('pid', unknown)}   (this process: {os.getpid()},"
          " as seen in its own pid namespace)")
    print(f"pidfs_id:    {identity.get('pidfs_id', unknown)}")
    print(f"exe:         {identity.get('exe', unknown)}")
    sock.close()


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"whoami: {e}", file=sys.stderr)
        sys.exit(1)
