#!/usr/bin/python3
"""What a bus's XML policy lets a user do, asked the same way on any bus:
for the side-by-side test of pidbus and dbus-daemon on one config file.

  xml_policy_probe.py ADDRESS serve   own org.test.Service (as the policy
                                      allows), serve every probed method
                                      on /org/test; print {"ready": true}
  xml_policy_probe.py ADDRESS probe   try each name and call below; print
                                      one JSON object: each outcome "ok"
                                      or the D-Bus error name
"""

import json
import sys

import dbus
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

SERVICE = "org.test.Service"
NAMES = [
    "org.test.Service.Spare",
    "org.test.Open.Mine",
    "org.test.Open.Forbidden",
    "org.test.Nobody",
    "org.test.Other",
]
CALLS = [
    ("org.test.Public", "Hello"),
    ("org.test.Public", "Secret"),
    ("org.test.Admin", "Reboot"),
    ("org.test.Other", "Any"),
]


def say(**fields):
    print(json.dumps(fields, sort_keys=True), flush=True)


class Service(dbus.service.Object):
    @dbus.service.method("org.test.Public", in_signature="", out_signature="s")
    def Hello(self):
        return "hello"

    @dbus.service.method("org.test.Public", in_signature="", out_signature="s")
    def Secret(self):
        return "secret"

    @dbus.service.method("org.test.Admin", in_signature="", out_signature="s")
    def Reboot(self):
        return "rebooting"

    @dbus.service.method("org.test.Other", in_signature="", out_signature="s")
    def Any(self):
        return "any"


def outcome(action):
    try:
        action()
        return "ok"
    except dbus.exceptions.DBusException as e:
        return e.get_dbus_name()


def serve(bus):
    name = dbus.service.BusName(SERVICE, bus, do_not_queue=True)
    obj = Service(bus, "/org/test")
    say(ready=True)
    GLib.MainLoop().run()
    del obj, name


def probe(bus):
    results = {}
    for name in NAMES:
        def request(name=name):
            reply = bus.request_name(name, dbus.bus.NAME_FLAG_DO_NOT_QUEUE)
            if reply != dbus.bus.REQUEST_NAME_REPLY_PRIMARY_OWNER:
                raise dbus.exceptions.DBusException("reply %d" % reply, name="reply")
        results["own " + name] = outcome(request)
    for interface, member in CALLS:
        def call(interface=interface, member=member):
            bus.get_object(SERVICE, "/org/test", introspect=False).get_dbus_method(
                member, interface)()
        results["call %s.%s" % (interface, member)] = outcome(call)
    say(**results)


def main():
    DBusGMainLoop(set_as_default=True)
    address, mode = sys.argv[1:3]
    bus = dbus.bus.BusConnection(address)
    {"serve": serve, "probe": probe}[mode](bus)


main()
