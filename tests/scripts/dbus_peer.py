#!/usr/bin/python3
"""A D-Bus peer written with python3-dbus, as an existing program would be,
for the tests of pidbus's D-Bus face. Prints one JSON object per line.

  dbus_peer.py ADDRESS service NAME [ALIAS]
                                      own NAME (and ALIAS), serve /org/pidbus/Py
  dbus_peer.py ADDRESS credentials    GetConnectionCredentials of itself
  dbus_peer.py ADDRESS call-fd NAME   pass a pipe to NAME's TakeFd
  dbus_peer.py ADDRESS listen RULE    print signals matching RULE
  dbus_peer.py ADDRESS call-bare NAME PATH MEMBER TEXT
                                      call MEMBER(TEXT) naming no interface
  dbus_peer.py ADDRESS add-rules PAD  add distinct rules (arg0 of PAD bytes more),
                                      over as many connections as it takes,
                                      until the bus refuses one; hold them
                                      until stdin closes
  dbus_peer.py ADDRESS big SIZE [NAME]
                                      NameHasOwner of a SIZE-byte name, the bus's
                                      Ping of SIZE bytes, and NAME's Echo of them
  dbus_peer.py ADDRESS emit-fds COUNT FDS
                                      emit COUNT org.pidbus.Flood.Fds signals,
                                      each carrying FDS descriptors
"""

import json
import os
import sys

import dbus
import dbus.lowlevel
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

IFACE = "org.pidbus.Py"
PATH = "/org/pidbus/Py"


def say(**fields):
    print(json.dumps(fields), flush=True)


class Service(dbus.service.Object):
    @dbus.service.method(IFACE, in_signature="s", out_signature="s")
    def Echo(self, text):
        return text

    @dbus.service.method(IFACE, in_signature="xx", out_signature="x")
    def Add(self, a, b):
        return a + b

    @dbus.service.method(IFACE, in_signature="", out_signature="")
    def Fail(self):
        raise dbus.exceptions.DBusException("as asked", name="org.pidbus.Error.Sad")

    @dbus.service.method(IFACE, in_signature="s", out_signature="")
    def Emit(self, arg):
        self.Changed(arg, "/org/pidbus/Py/child")

    @dbus.service.signal(IFACE, signature="so")
    def Changed(self, arg, where):
        pass

    @dbus.service.method(IFACE, in_signature="h", out_signature="s")
    def TakeFd(self, fd):
        with os.fdopen(fd.take(), "rb") as pipe:
            return pipe.read().decode()

    @dbus.service.method(IFACE, in_signature="s", out_signature="h")
    def GiveFd(self, text):
        read, write = os.pipe()
        os.write(write, text.encode())
        os.close(write)
        return dbus.types.UnixFd(read)

    @dbus.service.method(IFACE, in_signature="", out_signature="s",
                         sender_keyword="sender")
    def WhoAmI(self, sender=None):
        return sender

    @dbus.service.method(IFACE, in_signature="", out_signature="s",
                         destination_keyword="destination")
    def AddressedAs(self, destination=None):
        return destination


def service(bus, name, *aliases):
    bus_name = dbus.service.BusName(name, bus, do_not_queue=True)
    also = [dbus.service.BusName(alias, bus, do_not_queue=True) for alias in aliases]
    obj = Service(bus_name, PATH)
    say(ready=name, unique=bus.get_unique_name())
    GLib.MainLoop().run()
    del obj, also


def credentials(bus):
    driver = bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus")
    creds = driver.GetConnectionCredentials(
        bus.get_unique_name(), dbus_interface="org.freedesktop.DBus")
    fd = creds["ProcessFD"].take() if "ProcessFD" in creds else None
    say(uid=int(creds["UnixUserID"]), pid=int(creds.get("ProcessID", 0)),
        pidfs_id=int(creds.get("org.pidbus.PidfsId", 0)),
        fd_ino=os.fstat(fd).st_ino if fd is not None else None,
        self_pid=os.getpid())


def call_fd(bus, name):
    read, write = os.pipe()
    os.write(write, b"through a pipe")
    os.close(write)
    proxy = bus.get_object(name, PATH)
    got = proxy.TakeFd(dbus.types.UnixFd(read), dbus_interface=IFACE)
    os.close(read)
    back = proxy.GiveFd("back again", dbus_interface=IFACE)
    with os.fdopen(back.take(), "rb") as pipe:
        say(sent=str(got), received=pipe.read().decode())


def listen(bus, rule):
    def on_message(bus, message):
        if message.get_type() == 4:
            say(member=message.get_member(), path=message.get_path(),
                args=[str(a) for a in message.get_args_list()])
    bus.add_match_string(rule)
    bus.add_message_filter(on_message)
    say(listening=rule)
    GLib.MainLoop().run()


def call_bare(bus, name, path, member, text):
    proxy = bus.get_object(name, path)
    say(result=str(getattr(proxy, member)(text)))


def add_rules(address, pad):
    buses, accepted, refusal = [], 0, None
    while refusal is None and accepted < 100000:
        bus = dbus.bus.BusConnection(address)
        buses.append(bus)
        for i in range(500):
            arg0 = "r%07d" % accepted + "a" * int(pad)
            rule = ("type='signal',interface='org.pidbus.R%d',member='M%d',"
                    "path='/r/%d',arg0='%s'" % (accepted, accepted, accepted, arg0))
            try:
                bus.add_match_string(rule)
            except dbus.exceptions.DBusException as e:
                refusal = "%s: %s" % (e.get_dbus_name(), e.get_dbus_message())
                break
            accepted += 1
    say(accepted=accepted, refusal=refusal)
    sys.stdin.read()


def big(bus, size, name=None):
    size = int(size)
    driver = bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus")
    has_owner = bool(driver.NameHasOwner("x" * size, dbus_interface="org.freedesktop.DBus"))
    echoed = driver.Ping(dbus.ByteArray(b"y" * size), dbus_interface="org.pidbus.Bus1",
                         byte_arrays=True)
    result = dict(has_owner=has_owner, ping=len(echoed))
    if name is not None:
        try:
            back = bus.get_object(name, "/org/pidbus/Native").Echo(
                "z" * size, dbus_interface="org.pidbus.Native")
            result["echo"] = len(back)
        except dbus.exceptions.DBusException as e:
            result["echo_error"] = e.get_dbus_name()
            result["echo_message"] = e.get_dbus_message()
    result["still_connected"] = len(str(driver.GetId(dbus_interface="org.freedesktop.DBus")))
    say(**result)


def emit_fds(bus, count, fds):
    null = os.open("/dev/null", os.O_RDONLY)
    for _ in range(int(count)):
        message = dbus.lowlevel.SignalMessage("/org/pidbus/Flood", "org.pidbus.Flood", "Fds")
        for _ in range(int(fds)):
            message.append(dbus.types.UnixFd(null), signature="h")
        bus.send_message(message)
    bus.flush()
    say(emitted=int(count))


def main():
    DBusGMainLoop(set_as_default=True)
    address, mode, *rest = sys.argv[1:]
    if mode == "add-rules":
        return add_rules(address, rest[0])
    bus = dbus.bus.BusConnection(address)
    if mode == "service":
        service(bus, *rest)
    elif mode == "credentials":
        credentials(bus)
    elif mode == "call-fd":
        call_fd(bus, rest[0])
    elif mode == "listen":
        listen(bus, rest[0])
    elif mode == "call-bare":
        call_bare(bus, *rest)
    elif mode == "big":
        big(bus, *rest)
    elif mode == "emit-fds":
        emit_fds(bus, *rest)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
