#!/usr/bin/python3
"""Asks the polkit authority on a bus, as a program using python3-dbus
would, for the polkit tests. Prints one JSON object.

  polkit_client.py ADDRESS bus-name ACTION        subject: this connection
  polkit_client.py ADDRESS pidfd-live ACTION      subject: a live child, by pidfd
  polkit_client.py ADDRESS pidfd-exited ACTION    subject: a child that exited, by pidfd
  polkit_client.py ADDRESS pidfd-of PID ACTION    subject: process PID, by pidfd
  polkit_client.py ADDRESS fake-pidfd ACTION      subject: a pipe passed as a pidfd
  polkit_client.py ADDRESS pid-start PID START ACTION
                                                  subject: by pid and start time
  polkit_client.py ADDRESS enumerate              the declared actions
  polkit_client.py ADDRESS properties             BackendName, -Version, -Features
  polkit_client.py ADDRESS changed                prints {"subscribed"}, then
                                                  {"changed"} at the authority's
                                                  Changed signal
"""

import json
import os
import subprocess
import sys

import dbus

NAME = "org.freedesktop.PolicyKit1"
PATH = "/org/freedesktop/PolicyKit1/Authority"
IFACE = "org.freedesktop.PolicyKit1.Authority"


def check(authority, subject, action):
    try:
        ok, challenge, details = authority.CheckAuthorization(
            subject, action, {"from.client": "kept", "pidbus.explain": "1"},
            dbus.UInt32(0), "")
    except dbus.exceptions.DBusException as e:
        return {"error": e.get_dbus_name(), "message": e.get_dbus_message()}
    return {"authorized": bool(ok), "challenge": bool(challenge),
            "details": {str(k): str(v) for k, v in details.items()}}


def process_subject(pidfd, pid):
    return ("unix-process", {
        "pidfd": dbus.types.UnixFd(pidfd, variant_level=1),
        "pid": dbus.UInt32(pid, variant_level=1),
        "start-time": dbus.UInt64(0, variant_level=1),
    })


def wait_for_changed(address):
    from dbus.mainloop.glib import DBusGMainLoop
    from gi.repository import GLib
    DBusGMainLoop(set_as_default=True)
    bus = dbus.bus.BusConnection(address)
    loop = GLib.MainLoop()

    def changed():
        print(json.dumps({"changed": True}), flush=True)
        loop.quit()

    bus.add_signal_receiver(changed, "Changed", IFACE, NAME, PATH)
    # A call after the AddMatch: once answered, the rule is in place.
    bus.get_object(NAME, PATH).Get(IFACE, "BackendName",
                                   dbus_interface="org.freedesktop.DBus.Properties")
    print(json.dumps({"subscribed": True}), flush=True)
    loop.run()


def main():
    if sys.argv[2] == "changed":
        return wait_for_changed(sys.argv[1])
    bus = dbus.bus.BusConnection(sys.argv[1])
    authority = dbus.Interface(bus.get_object(NAME, PATH), IFACE)
    mode = sys.argv[2]
    if mode == "bus-name":
        subject = ("system-bus-name", {"name": bus.get_unique_name()})
        out = check(authority, subject, sys.argv[3])
    elif mode in ("pidfd-live", "pidfd-exited"):
        child = subprocess.Popen(["/bin/sleep", "60"])
        pidfd = os.pidfd_open(child.pid)
        if mode == "pidfd-exited":
            child.kill()
            child.wait()
        out = check(authority, process_subject(pidfd, child.pid), sys.argv[3])
        out["pid"] = child.pid
        if mode == "pidfd-live":
            child.kill()
            child.wait()
    elif mode == "pidfd-of":
        pid = int(sys.argv[3])
        out = check(authority, process_subject(os.pidfd_open(pid), pid), sys.argv[4])
    elif mode == "fake-pidfd":
        read, _write = os.pipe()
        out = check(authority, process_subject(read, 0), sys.argv[3])
    elif mode == "pid-start":
        subject = ("unix-process", {
            "pid": dbus.UInt32(int(sys.argv[3]), variant_level=1),
            "start-time": dbus.UInt64(int(sys.argv[4]), variant_level=1),
        })
        out = check(authority, subject, sys.argv[5])
    elif mode == "enumerate":
        actions = authority.EnumerateActions("")
        out = {"actions": [{"id": str(a[0]), "description": str(a[1]),
                            "implicit_active": int(a[8])} for a in actions]}
    elif mode == "properties":
        props = dbus.Interface(bus.get_object(NAME, PATH),
                               "org.freedesktop.DBus.Properties").GetAll(IFACE)
        out = {str(k): (str(v) if isinstance(v, dbus.String) else int(v))
               for k, v in props.items()}
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)


main()
