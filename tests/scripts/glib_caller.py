#!/usr/bin/python3
"""GLib (GDBus) programs, as existing ones are written, reading pidbus's
verified-caller header field (code 0x70, type s) without a second round
trip. Prints one JSON object per line.

  glib_caller.py ADDRESS serve attach|plain
        own org.pidbus.GlibWho.attach or .plain, serve /org/pidbus/GlibWho Me() -> s: the
        caller field of the call ("" if none); with "attach", first ask the
        bus for it (org.pidbus.Bus1.AttachCaller(true))
  glib_caller.py ADDRESS call attach|plain FORGED
        call that service's Me() with a caller field of our own set to FORGED (a bus must
        never pass it on); print our pid, uid, pidfs id and the answer

PyGObject takes only the header codes GLib's enum names, so the field is
read and written through libgio itself (ctypes).
"""

import ctypes
import json
import os
import sys

import gi

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib

CALLER_FIELD = 0x70
NAME = "org.pidbus.GlibWho"
PATH = "/org/pidbus/GlibWho"
IFACE = "org.pidbus.GlibWho"

gio = ctypes.CDLL("libgio-2.0.so.0")
glib = ctypes.CDLL("libglib-2.0.so.0")
gio.g_dbus_message_get_header.restype = ctypes.c_void_p
gio.g_dbus_message_get_header.argtypes = [ctypes.c_void_p, ctypes.c_int]
gio.g_dbus_message_set_header.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
glib.g_variant_get_string.restype = ctypes.c_char_p
glib.g_variant_get_string.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
glib.g_variant_new_string.restype = ctypes.c_void_p
glib.g_variant_new_string.argtypes = [ctypes.c_char_p]
ctypes.pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
ctypes.pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def pointer(gobject):
    return ctypes.pythonapi.PyCapsule_GetPointer(gobject.__gpointer__, None)


def caller_field(message):
    value = gio.g_dbus_message_get_header(pointer(message), CALLER_FIELD)
    return glib.g_variant_get_string(value, None).decode() if value else ""


def say(**fields):
    print(json.dumps(fields), flush=True)


def connect(address):
    flags = (
        Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
        | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
    )
    return Gio.DBusConnection.new_for_address_sync(address, flags, None, None)


def serve(bus, attach):
    if attach:
        bus.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.pidbus.Bus1",
                      "AttachCaller", GLib.Variant("(b)", (True,)), None, 0, -1, None)
    xml = (f'<node><interface name="{IFACE}"><method name="Me">'
           '<arg type="s" direction="out"/></method></interface></node>')
    node = Gio.DBusNodeInfo.new_for_xml(xml)

    def on_call(_conn, _sender, _path, _iface, _member, _params, invocation):
        field = caller_field(invocation.get_message())
        invocation.return_value(GLib.Variant("(s)", (field,)))

    bus.register_object(PATH, node.interfaces[0], on_call, None, None)
    name = f"{NAME}.{'attach' if attach else 'plain'}"
    owned = bus.call_sync("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                          "RequestName", GLib.Variant("(su)", (name, 4)), None, 0, -1, None)
    if owned.unpack()[0] != 1:
        sys.exit(f"cannot own {name}")
    say(event="ready", name=bus.get_unique_name())
    GLib.MainLoop().run()


def call(bus, service, forged):
    message = Gio.DBusMessage.new_method_call(f"{NAME}.{service}", PATH, IFACE, "Me")
    gio.g_dbus_message_set_header(pointer(message), CALLER_FIELD,
                                  glib.g_variant_new_string(forged.encode()))
    reply, _ = bus.send_message_with_reply_sync(message, 0, 5000, None)
    reply.to_gerror()
    pidfs_id = os.fstat(os.pidfd_open(os.getpid())).st_ino
    say(pid=os.getpid(), uid=os.getuid(), pidfs_id=pidfs_id, answer=reply.get_body().unpack()[0])


def main():
    address, mode = sys.argv[1], sys.argv[2]
    bus = connect(address)
    if mode == "serve":
        serve(bus, sys.argv[3] == "attach")
    elif mode == "call":
        call(bus, sys.argv[3], sys.argv[4])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
