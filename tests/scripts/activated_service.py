#!/usr/bin/python3
"""A D-Bus service written with python3-dbus, for the bus-activation tests:
the bus starts it from a .service file. It connects to the bus it was
started by (DBUS_STARTER_ADDRESS), owns NAME and serves /org/pidbus/Activated.

  activated_service.py NAME [GATE]   with GATE, waits until that file
                                     exists before it connects
"""

import os
import sys
import time

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

IFACE = "org.pidbus.Activated"
PATH = "/org/pidbus/Activated"


class Service(dbus.service.Object):
    @dbus.service.method(IFACE, in_signature="s", out_signature="s")
    def Echo(self, text):
        return text

    @dbus.service.method(IFACE, in_signature="", out_signature="u")
    def Uid(self):
        return os.getuid()

    @dbus.service.method(IFACE, in_signature="", out_signature="as")
    def Environment(self):
        return sorted(f"{k}={v}" for k, v in os.environ.items())


def main():
    name = sys.argv[1]
    if len(sys.argv) > 2:
        deadline = time.monotonic() + 60
        while not os.path.exists(sys.argv[2]):
            if time.monotonic() > deadline:
                sys.exit(4)
            time.sleep(0.02)
    DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(os.environ["DBUS_STARTER_ADDRESS"])
    bus_name = dbus.service.BusName(name, bus, do_not_queue=True)
    obj = Service(bus_name, PATH)
    loop = GLib.MainLoop()
    # A service of a bus that went away has nothing left to do.
    bus.call_on_disconnection(lambda _connection: loop.quit())
    loop.run()
    del obj


main()
