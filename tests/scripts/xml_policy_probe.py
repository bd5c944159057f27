#!/usr/bin/python3
"""What a bus's XML policy lets a user do, asked the same way on any bus:
for the side-by-side test of pidbus and dbus-daemon on one config file.

  xml_policy_probe.py ADDRESS serve   own org.test.Service (as the policy
                                      allows), serve every probed method
                                      on /org/test; print {"ready": true}
  xml_policy_probe.py ADDRESS probe   try each name and call below; print
                                      one JSON object: each outcome "ok"
                                      or the D-Bus error name
  xml_policy_probe.py ADDRESS own NAME...
                                      try to own each NAME (and give it
                                      back); print {NAME: outcome}
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
    ("/org/test", "org.test.Public", "Hello"),
    ("/org/test", "org.test.Public", "Secret"),
    ("/org/test", "org.test.Admin", "Reboot"),
    ("/org/test", "org.test.Other", "Any"),
    ("/org/test/hidden", "org.test.Public", "Hello"),
    ("/org/test", "org.test.Prefixed", "Ping"),
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

    @dbus.service.method("org.test.Prefixed", in_signature="", out_signature="s")
    def Ping(self):
        return "pong"

    @dbus.service.method("org.test.Signals", in_signature="", out_signature="")
    def Emit(self):
        # In this order on one connection: whoever may receive the first
        # has it before the last.
        self.Noisy()
        self.Quiet()
        self.Done()

    @dbus.service.signal("org.test.Noisy", signature="")
    def Noisy(self):
        pass

    @dbus.service.signal("org.test.Quiet", signature="")
    def Quiet(self):
        pass

    @dbus.service.signal("org.test.Signals", signature="")
    def Done(self):
        pass


def outcome(action):
    try:
        action()
        return "ok"
    except dbus.exceptions.DBusException as e:
        return e.get_dbus_name()


def serve(bus):
    name = dbus.service.BusName(SERVICE, bus, do_not_queue=True)
    objects = [Service(bus, "/org/test"), Service(bus, "/org/test/hidden")]
    say(ready=True)
    GLib.MainLoop().run()
    del objects, name


def probe(bus):
    results = {}
    for name in NAMES:
        def request(name=name):
            reply = bus.request_name(name, dbus.bus.NAME_FLAG_DO_NOT_QUEUE)
            if reply != dbus.bus.REQUEST_NAME_REPLY_PRIMARY_OWNER:
                raise dbus.exceptions.DBusException("reply %d" % reply, name="reply")
        results["own " + name] = outcome(request)
    for path, interface, member in CALLS:
        def call(path=path, interface=interface, member=member):
            bus.get_object(SERVICE, path, introspect=False).get_dbus_method(
                member, interface)()
        results["call %s %s.%s" % (path, interface, member)] = outcome(call)
    results.update(signals_received(bus))
    say(**results)


def signals_received(bus):
    """Which of the service's signals reach this connection: it asks for
    them, then waits for the last one, which comes after the others."""
    heard = []
    loop = GLib.MainLoop()

    def on_signal(*args, **kwargs):
        heard.append(kwargs["interface"])
        if kwargs["interface"] == "org.test.Signals":
            loop.quit()

    bus.add_signal_receiver(on_signal, sender_keyword="sender",
                            interface_keyword="interface", path="/org/test")
    bus.get_object(SERVICE, "/org/test", introspect=False).get_dbus_method(
        "Emit", "org.test.Signals")()
    GLib.timeout_add_seconds(20, loop.quit)
    loop.run()
    return {"receive " + i: ("ok" if i in heard else "not delivered")
            for i in ["org.test.Noisy", "org.test.Quiet", "org.test.Signals"]}


def own(bus, names):
    results = {}
    for name in names:
        def request(name=name):
            reply = bus.request_name(name, dbus.bus.NAME_FLAG_DO_NOT_QUEUE)
            if reply != dbus.bus.REQUEST_NAME_REPLY_PRIMARY_OWNER:
                raise dbus.exceptions.DBusException("reply %d" % reply, name="reply")
            bus.release_name(name)
        results[name] = outcome(request)
    say(**results)


def main():
    DBusGMainLoop(set_as_default=True)
    address, mode = sys.argv[1:3]
    bus = dbus.bus.BusConnection(address)
    if mode == "own":
        return own(bus, sys.argv[3:])
    {"serve": serve, "probe": probe}[mode](bus)


main()
