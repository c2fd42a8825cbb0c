"""``make ansible-check``: run site.yml for real against this machine, twice, and check the result.

In a temporary prefix, with a free port and fresh passwords, the playbook (check/inventory.yml:
``connection: local``, no systemd) builds a wheel from this checkout, installs it into a venv,
generates and starts the site's mosquitto (listener, password file, ACL from the inventory) and
starts two cameras' agents one after the other, waiting for each one's retained state to say
``online``. Then, with the mosquitto
clients, as a tenant would:

1. the agent's retained state says ``online`` (read as the site's administrator);
2. tenant ``acme`` publishes a deployment with ``mosquitto_pub`` to its own topics: the agent
   replies ok and the app's events arrive;
3. ``acme`` publishes a deployment to tenant ``globex``'s topics: the broker acknowledges it
   (mosquitto_pub exits 0) and drops it: an administrator subscribed to all of globex's topics
   sees neither the command nor a reply, while a deployment ``globex`` itself publishes there
   right after is seen and answered, and the agent's state holds no app of globex's but that one;
   then the ACL's split (issue 20): acme, subscribed to its own ``cmd/#``, receives neither the
   agent account's command (parts carry the fleet token there) nor its own, while its reply
   arrives after them; acme's publish on its own reply topic reaches no one (the administrator
   watching sees the agent's next reply, not it); acme's 2 MiB publish is dropped by the
   broker's ``message_size_limit`` while a 1 MiB one (the agent's cap) is delivered and answered;
   and links over mutual TLS: both agents run with the role's ``--link-tls-*`` flags (their
   process command lines), announce ``tls+tcp://`` addresses, an app spanning the two cameras
   runs over the link, and its listener completes a TLS handshake with a camera's certificate
   and does not answer nng's plain-TCP greeting;
4. the second run's PLAY RECAP reports changed=0 and failed=0 on every host, and the agent and
   the app still run;
5. restarted (as an upgrade restarts it), the agent brings acme's app back from the state
   directory the role keeps;
6. the systemd unit the role installs where systemd runs, rendered with the same variables
   (check/unit.yml), passes ``systemd-analyze verify``;
7. a third run in which the first camera's agent cannot come online (a broker URL nobody
   listens on) fails there, and the second camera is not touched and still runs (serial: 1,
   stop on the first failure);
8. ansible-lint passes.

Prints both PLAY RECAPs and one line per check; exits 1 when any check fails. Runs with the
Python of the tools venv (stdlib only); needs mosquitto and its clients.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ANSIBLE_DIR = Path(__file__).resolve().parent.parent
TOOLS_BIN = Path(sys.executable).parent
RECAP_LINE = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Check:
    """Collects pass/fail lines; ``ok`` is False once one failed."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ok = True

    def __call__(self, passed: bool, what: str, detail: str = "") -> bool:
        self.lines.append(f"{'PASS' if passed else 'FAIL'}  {what}{'' if passed or not detail else ': ' + detail}")
        print(self.lines[-1], flush=True)
        self.ok = self.ok and passed
        return passed


class Subscriber:
    """``mosquitto_sub -v`` in the background; ``messages`` holds ``(topic, payload)`` pairs."""

    def __init__(self, port: int, user: str, password: str, *topics: str) -> None:
        # stdbuf: mosquitto_sub's stdout is block-buffered into a pipe; we read it line by line
        argv = ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password,
                "-V", "mqttv5", "-d", "-v"]
        for t in topics:
            argv += ["-t", t]
        self.messages: list[tuple[str, str]] = []
        self.debug: list[str] = []
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # -d prints the SUBACK: from then on the broker delivers to us
        if not self.wait(lambda: any("SUBACK" in d for d in self.debug), 10, on_debug=True):
            self.close()
            raise RuntimeError(f"mosquitto_sub as {user} got no SUBACK: {self.debug[-5:]}")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("edgeva/"):
                topic, _, payload = line.partition(" ")
                self.messages.append((topic, payload))
            else:
                self.debug.append(line)

    def wait(self, predicate, timeout: float, on_debug: bool = False) -> bool:
        """Poll ``predicate()`` until it holds or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return predicate()

    def payloads(self, topic_part: str) -> list[dict]:
        """The JSON payloads of messages whose topic contains ``topic_part``."""
        out = []
        for topic, payload in list(self.messages):
            if topic_part in topic:
                try:
                    out.append(json.loads(payload))
                except ValueError:
                    out.append({"_raw": payload})
        return out

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def publish(port: int, user: str, password: str, topic: str, payload: dict) -> subprocess.CompletedProcess:
    """``mosquitto_pub`` at QoS 1 (exits 0 once the broker acknowledged the publish)."""
    return subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password, "-V", "mqttv5",
         "-q", "1", "-t", topic, "-m", json.dumps(payload)],
        capture_output=True, text=True, timeout=30)


def retained_state(port: int, user: str, password: str, device: str) -> dict | None:
    """The device's retained state, read once (None when there is none)."""
    r = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password,
         "-t", f"edgeva/v1/{device}/state", "-C", "1", "-W", "10"],
        capture_output=True, text=True, timeout=30)
    try:
        return json.loads(r.stdout) if r.returncode == 0 else None
    except ValueError:
        return None


def publish_raw(port: int, user: str, password: str, topic: str, data: bytes) -> subprocess.CompletedProcess:
    """``mosquitto_pub -s`` at QoS 1 (a payload too big for the command line)."""
    return subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password, "-V", "mqttv5",
         "-q", "1", "-t", topic, "-s"], input=data, capture_output=True, timeout=60)


def make_pki(d: Path, devices: list[str]) -> None:
    """A throwaway CA and, per device, a certificate naming it (subjectAltName DNS:<device>) for
    links over mutual TLS: ``ca.pem``, ``<device>.pem``, ``<device>.key``."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ansible-check CA")
    for dev in devices:
        openssl("req", *ec, "-keyout", f"{dev}.key", "-out", f"{dev}.csr", "-subj", f"/CN={dev}")
        (d / f"{dev}.ext").write_text(f"subjectAltName=DNS:{dev}\n")
        openssl("x509", "-req", "-in", f"{dev}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{dev}.pem", "-days", "2", "-extfile", f"{dev}.ext")


def run_playbook(n: int, env: dict[str, str], log_dir: Path) -> tuple[int, list[str], dict[str, tuple[int, ...]]]:
    """Run site.yml, echoing its output; return its exit code, recap lines and per-host counts."""
    print(f"\n===== ansible-playbook run {n} =====", flush=True)
    argv = [str(TOOLS_BIN / "ansible-playbook"), "-i", "check/inventory.yml", "site.yml"]
    log = log_dir / f"run{n}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, cwd=ANSIBLE_DIR, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            f.write(line)
            lines.append(line.rstrip("\n"))
        rc = proc.wait()
    recap: list[str] = []
    counts: dict[str, tuple[int, ...]] = {}
    if "PLAY RECAP" in "\n".join(lines):
        start = max(i for i, line in enumerate(lines) if line.startswith("PLAY RECAP"))
        for line in lines[start + 1:]:
            m = RECAP_LINE.match(line)
            if m:
                recap.append(line.rstrip())
                counts[m.group(1)] = tuple(int(x) for x in m.groups()[1:])
    return rc, recap, counts


def check_tenants(check: Check, port: int, pw: dict[str, str], device: str) -> None:
    """Steps 2 and 3: a tenant's deployment runs; its publish to another tenant's topics is dropped."""
    base = f"edgeva/v1/{device}"
    deploy = {"request_id": "acme-smoke-1", "app": "smoke", "modules": {
        "decoder": {"type": "decoder", "args": {"source": "synthetic", "fps": 5, "width": 160, "height": 120},
                    "outputs": ["publish"]},
        "publish": {"type": "publish", "args": {}}}}
    acme = Subscriber(port, "acme", pw["acme"], f"{base}/acme/reply/#", f"{base}/acme/events/#")
    try:
        r = publish(port, "acme", pw["acme"], f"{base}/acme/cmd/deploy", deploy)
        check(r.returncode == 0, "acme's mosquitto_pub of a deployment to its own topics is accepted", r.stderr)
        acme.wait(lambda: acme.payloads("/reply/") and acme.payloads("/events/smoke"), 60)
        replies = [p for p in acme.payloads("/reply/") if p.get("request_id") == "acme-smoke-1"]
        check(bool(replies) and replies[0].get("ok") is True, "the agent replies ok to acme's deployment",
              json.dumps(replies[:1]) or "no reply in 60 s")
        events = acme.payloads("/events/smoke")
        check(bool(events) and "frame_id" in events[0], "acme's app runs: its events arrive",
              f"{len(events)} events")
    finally:
        acme.close()

    # The same user on another tenant's topics. Watched by the administrator, who may read all of
    # globex's topics: a publish the broker let through would show there, and so would a reply.
    watch = Subscriber(port, "ops", pw["ops"], f"{base}/globex/#")
    try:
        intrusion = {**deploy, "request_id": "acme-intrusion-1", "app": "intrusion"}
        r = publish(port, "acme", pw["acme"], f"{base}/globex/cmd/deploy", intrusion)
        # mosquitto acknowledges a publish its ACL denies, then drops it
        check(r.returncode == 0, "acme's publish to globex's topics is acknowledged (then dropped)", r.stderr)
        time.sleep(3)
        # The control: globex itself, same topic, right after. Seen and answered: the watch works.
        legit = {**deploy, "request_id": "globex-own-1", "app": "globex-own"}
        r = publish(port, "globex", pw["globex"], f"{base}/globex/cmd/deploy", legit)
        check(r.returncode == 0, "globex's own deployment is accepted", r.stderr)
        watch.wait(lambda: any(p.get("request_id") == "globex-own-1" and "ok" in p
                               for p in watch.payloads("/globex/reply/")), 60)
        seen_own = [p for p in watch.payloads("/globex/reply/") if p.get("request_id") == "globex-own-1"]
        check(bool(seen_own) and seen_own[0].get("ok") is True,
              "control: globex's deployment on the same topic is delivered and answered ok",
              json.dumps(seen_own[:1]) or "no reply in 60 s")
        leaked = [p for p in watch.payloads("/globex/") if "acme-intrusion-1" in json.dumps(p)]
        check(not leaked, "the ACL dropped acme's publish to globex's topics: no command, no reply seen",
              json.dumps(leaked))
    finally:
        watch.close()
    state = retained_state(port, "ops", pw["ops"], device) or {}
    globex_apps = sorted((state.get("apps") or {}).get("globex", {}))
    check(globex_apps == ["globex-own"], "the agent runs no app acme placed in globex's name",
          f"globex's apps: {globex_apps}")


def check_acl_split(check: Check, port: int, pw: dict[str, str], device: str) -> None:
    """Issue 20, holes 1 and 6 (the broker's half): a tenant reads no command topic, writes no
    reply topic, and its 2 MiB publish is dropped. Each refusal is followed on the same
    connection by something that is delivered, so "nothing seen" is not a slow subscriber."""
    base = f"edgeva/v1/{device}/acme"
    spy = Subscriber(port, "acme", pw["acme"], f"{base}/cmd/#", f"{base}/reply/#")
    watch = Subscriber(port, "ops", pw["ops"], f"{base}/#")
    try:
        # The agent account (a coordinator sends parts this way, fleet token inside) and acme itself.
        part = {"request_id": "acl-part-1", "app": "acl-probe", "modules": {"publish": {"type": "publish", "args": {}}},
                "part_of": {"coordinator": f"{device}-2", "token": "what-a-tenant-must-not-read"}}
        r1 = publish(port, device, pw["cam"], f"{base}/cmd/deploy", part)
        r2 = publish(port, "acme", pw["acme"], f"{base}/cmd/status", {"request_id": "acl-own-1"})
        check(r1.returncode == 0 and r2.returncode == 0, "the agent account and acme publish commands on acme's topics",
              r1.stderr + r2.stderr)
        # acme's reply comes after both commands went through the broker (and would have reached acme)
        spy.wait(lambda: spy.payloads("/reply/acl-own-1") and len(watch.payloads("/cmd/")) >= 2, 60)
        check(len(watch.payloads("/cmd/")) >= 2 and bool(spy.payloads("/reply/acl-own-1")),
              "control: the administrator sees both commands, acme its reply",
              f"administrator: {len(watch.payloads('/cmd/'))} commands, acme: {spy.messages[-3:]}")
        read = [t for t, _ in spy.messages if "/cmd/" in t]
        check(not read, "acme, subscribed to its own cmd/#, reads no command (no part, no fleet token)", str(read))

        r = publish(port, "acme", pw["acme"], f"{base}/reply/acl-forged-1", {"request_id": "acl-forged-1", "ok": True})
        check(r.returncode == 0, "acme's publish on its reply topic is acknowledged (then dropped)", r.stderr)
        publish(port, "acme", pw["acme"], f"{base}/cmd/status", {"request_id": "acl-after-forged"})
        watch.wait(lambda: watch.payloads("/reply/acl-after-forged"), 60)
        check(bool(watch.payloads("/reply/acl-after-forged")) and not watch.payloads("/reply/acl-forged-1"),
              "acme cannot write its reply topic: the administrator sees the agent's next reply, not acme's",
              f"forged seen: {watch.payloads('/reply/acl-forged-1')}, "
              f"control seen: {bool(watch.payloads('/reply/acl-after-forged'))}")

        def padded(rid: str, size: int) -> bytes:
            head = json.dumps({"request_id": rid, "app": "x", "pad": ""}).encode()
            return head[:-2] + b"x" * (size - len(head)) + head[-2:]

        r = publish_raw(port, "acme", pw["acme"], f"{base}/cmd/deploy", padded("big-2mib", 2 << 20))
        refused = r.stderr.decode(errors="replace").strip()
        publish_raw(port, "acme", pw["acme"], f"{base}/cmd/deploy", padded("big-1mib", (1 << 20) - 1024))
        watch.wait(lambda: watch.payloads("/reply/big-1mib"), 60)
        big = [len(p) for t, p in watch.messages if "/cmd/" in t and len(p) > (1 << 20) + 100]
        check(bool(watch.payloads("/reply/big-1mib")),
              "control: acme's 1 MiB command (just under the agent's cap) is delivered and answered",
              "no reply to big-1mib in 60 s")
        check(not big and not watch.payloads("/reply/big-2mib"),
              f"acme's 2 MiB publish is dropped by the broker ({refused or 'no warning'})",
              f"delivered: {big} B, reply: {watch.payloads('/reply/big-2mib')[:1]}")
    finally:
        spy.close()
        watch.close()


def check_link_tls(check: Check, port: int, pw: dict[str, str], prefix: Path, pki: Path, device: str) -> None:
    """Links over mutual TLS as the role sets them up: the flags on each agent's command line,
    ``tls+tcp://`` announced, an app spanning the two cameras flowing over the link, and its
    listener speaking TLS only."""
    peer = f"{device}-2"
    for dev, name in ((device, "edgeva-agent"), (peer, "edgeva-agent-2")):
        try:
            pid = int((prefix / f"run/edgeva/{name}.pid").read_text())
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError) as e:
            argv = [f"unreadable: {e}"]
        flags = {a: argv[argv.index(a) + 1] for a in ("--link-tls-ca", "--link-tls-cert", "--link-tls-key")
                 if a in argv[:-1]}
        check(len(flags) == 3 and "--link-tls-check-name" in argv and "--fleet-token-file" in argv,
              f"agent {dev} runs with --link-tls-ca/-cert/-key, --link-tls-check-name, --fleet-token-file",
              " ".join(argv))
        state = retained_state(port, "ops", pw["ops"], dev) or {}
        check(str(state.get("data_addr", "")).startswith("tls+tcp://"), f"agent {dev} announces a tls+tcp:// address",
              f"data_addr {state.get('data_addr')}")
    base = f"edgeva/v1/{device}/acme"
    split = {"request_id": "acme-split-1", "app": "split", "modules": {
        "decoder": {"type": "decoder", "args": {"source": "synthetic", "fps": 5, "width": 160, "height": 120},
                    "outputs": ["publish"], "device": peer},
        "publish": {"type": "publish", "args": {}}}}
    acme = Subscriber(port, "acme", pw["acme"], f"{base}/reply/#", f"{base}/events/split")
    try:
        publish(port, "acme", pw["acme"], f"{base}/cmd/deploy", split)
        acme.wait(lambda: acme.payloads("/reply/acme-split-1") and acme.payloads("/events/split"), 90)
        reply = acme.payloads("/reply/acme-split-1")
        check(bool(reply) and reply[0].get("ok") is True and bool(acme.payloads("/events/split")),
              f"an app spanning both cameras runs over the TLS link: {peer}'s decoder -> {device}'s publish",
              f"reply {json.dumps(reply[:1])[:400]}, {len(acme.payloads('/events/split'))} events")
        link = str(((retained_state(port, "ops", pw["ops"], device) or {}).get("links") or {}).get(peer, ""))
        m = re.match(r"tls\+tcp://127\.0\.0\.1:(\d+)$", link)
        if check(m is not None, f"{device} listens for {peer} on a tls+tcp:// address", f"links[{peer}] = {link!r}"):
            lport = int(m.group(1))
            hs = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{lport}", "-brief",
                                 "-CAfile", str(pki / "ca.pem"), "-cert", str(pki / f"{peer}.pem"),
                                 "-key", str(pki / f"{peer}.key"), "-verify_return_error"],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
            out = (hs.stdout + hs.stderr).strip()
            check(hs.returncode == 0 and "CONNECTION ESTABLISHED" in out and f"CN = {device}" in out,
                  "the link listener completes a TLS handshake (a camera's certificate, the check's CA)", out[-600:])
            # nng's plain-TCP greeting (SP header, Pair0): a TLS listener never answers it
            with socket.create_connection(("127.0.0.1", lport), timeout=5) as s:
                s.sendall(b"\x00SP\x00\x00\x10\x00\x00")
                try:
                    answer = s.recv(8)
                except OSError as e:
                    answer = f"({type(e).__name__})".encode()
            check(not answer.startswith(b"\x00SP\x00"), "the link listener does not speak plain nng/TCP",
                  f"answered {answer!r}")
        publish(port, "acme", pw["acme"], f"{base}/cmd/remove", {"request_id": "acme-split-rm", "app": "split"})
        acme.wait(lambda: acme.payloads("/reply/acme-split-rm"), 60)
        rm = acme.payloads("/reply/acme-split-rm")
        check(bool(rm) and rm[0].get("ok") is True, "the app spanning both cameras is removed", json.dumps(rm[:1]))
    finally:
        acme.close()


def check_online(check: Check, port: int, pw: dict[str, str], device: str, when: str, app: str | None) -> None:
    for dev in (device, f"{device}-2"):
        state = retained_state(port, "ops", pw["ops"], dev)
        check(bool(state) and state.get("status") == "online" and state.get("device") == dev,
              f"{when}: agent {dev}'s retained state says online", json.dumps(state)[:300])
    state = retained_state(port, "ops", pw["ops"], device)
    if app and state:
        apps = (state.get("apps") or {}).get("acme", {})
        check(app in apps, f"{when}: acme's app {app} still runs", f"acme's apps: {sorted(apps)}")


def check_unit(check: Check, env: dict[str, str], prefix: Path, device: str) -> None:
    """Render the agent's systemd unit with the role's task and let systemd-analyze verify it."""
    unit_dir = prefix / "systemd"
    unit_dir.mkdir(exist_ok=True)
    r = subprocess.run([str(TOOLS_BIN / "ansible-playbook"), "-i", "check/inventory.yml", "check/unit.yml",
                        "-e", "edgeva_service_manager=none", "-e", f"edgeva_systemd_dir={unit_dir}"],
                       cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True)
    unit = unit_dir / "edgeva-agent.service"
    if not check(r.returncode == 0 and unit.exists(), "the systemd unit renders", r.stdout[-2000:]):
        return
    text = unit.read_text()
    print(text, flush=True)
    want = ["Restart=on-failure", f"--device {device}", "EnvironmentFile=", "ExecStartPre=", "User=",
            "--link-tls-ca", "--link-tls-cert", "--link-tls-key", "--fleet-token-file"]
    check(all(w in text for w in want),
          "the unit restarts on failure, runs as its user, checks /dev/shm, passes the link TLS flags",
          f"missing: {[w for w in want if w not in text]}")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("SKIP  systemd-analyze is not installed: the unit was not verified", flush=True)
        return
    v = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    check(v.returncode == 0, "systemd-analyze verify accepts the unit", (v.stdout + v.stderr).strip())


def check_restart_keeps_apps(check: Check, port: int, pw: dict[str, str], prefix: Path, device: str) -> None:
    """Restart the agent as an upgrade does: the state directory the role keeps brings acme's app
    back (the retained state lists it again)."""
    ctl = prefix / "opt/edgeva/bin/edgeva-agentctl"
    r = subprocess.run([str(ctl), "restart"], capture_output=True, text=True, timeout=120)
    if not check(r.returncode == 0 and "started" in r.stdout, "the agent restarts", r.stdout + r.stderr):
        return
    deadline = time.monotonic() + 90
    state: dict = {}
    while time.monotonic() < deadline:
        state = retained_state(port, "ops", pw["ops"], device) or {}
        if state.get("status") == "online" and "smoke" in (state.get("apps") or {}).get("acme", {}):
            break
        time.sleep(2)
    apps = (state.get("apps") or {}).get("acme", {})
    check(state.get("status") == "online" and "smoke" in apps,
          "after a restart the kept state directory brings acme's app back", f"state: {json.dumps(state)[:300]}")


def check_rollout_stops(check: Check, env: dict[str, str], prefix: Path, port: int, pw: dict[str, str],
                        device: str) -> None:
    """A third run in which the first camera's agent cannot come online (its broker URL points at
    a port nobody listens on): the playbook fails on it and never touches the second camera."""
    broken = dict(env, EDGEVA_CHECK_BREAK_URL=f"mqtt://127.0.0.1:{free_port()}")
    rc, recap, counts = run_playbook(3, broken, prefix)
    log = (prefix / "run3.log").read_text()
    cam_failed = counts.get("check-cam", (0, 0, 0, 0))[3]
    check(rc != 0 and cam_failed > 0, "run 3: the camera whose agent does not come online fails the playbook",
          f"exit {rc}, recap {recap}")
    check("[check-cam-2]" not in log, "run 3: the rollout stopped there: the next camera was not touched",
          "check-cam-2 appears in run 3's output")
    state = retained_state(port, "ops", pw["ops"], f"{device}-2") or {}
    check(state.get("status") == "online", "run 3: the next camera's agent still runs", json.dumps(state)[:200])
    # a third look at idempotence: nothing the broken URL touches belongs to the broker
    check(counts.get("check-broker", (0, 1))[1] == 0, "run 3: the broker reports changed=0 again",
          f"recap {recap}")


def stop_services(prefix: Path, device: str) -> None:
    """Stop what the playbook started (the agents first: they say offline to their broker)."""
    for ctl in [*sorted(prefix.glob("opt/edgeva/bin/*ctl")), *sorted(prefix.glob("etc/mosquitto/bin/*ctl"))]:
        subprocess.run([str(ctl), "stop"], capture_output=True, timeout=60)
    for seg in Path("/dev/shm").glob(f"edgeva.{device}*"):  # only ours: the device ids hold our port
        seg.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="leave the prefix and the services running")
    ap.add_argument("--python", default=os.environ.get("PY", "python3"),
                    help="interpreter the agent's venv is made from (default: $PY or python3)")
    args = ap.parse_args()
    for tool in ("mosquitto_pub", "mosquitto_sub", "openssl"):
        if not shutil.which(tool):
            print(f"ansible-check: {tool} not found (apt-get install mosquitto-clients)", file=sys.stderr)
            return 2
    prefix = Path(tempfile.mkdtemp(prefix="edgeva-ansible-check-"))
    port = free_port()
    device = f"ansible-check-{port}"
    secret = secrets.token_hex(8)
    pw = {name: f"{name}-{secret}" for name in ("acme", "globex", "ops", "cam")}
    pki = prefix / "pki"
    make_pki(pki, [device, f"{device}-2"])
    python = shutil.which(args.python) or args.python
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", PATH=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               EDGEVA_CHECK_PREFIX=str(prefix), EDGEVA_CHECK_PORT=str(port), EDGEVA_CHECK_SECRET=secret,
               EDGEVA_CHECK_DEVICE=device, EDGEVA_CHECK_USER=subprocess.check_output(["id", "-un"], text=True).strip(),
               EDGEVA_CHECK_GROUP=subprocess.check_output(["id", "-gn"], text=True).strip(),
               EDGEVA_CHECK_PYTHON=python, EDGEVA_CHECK_PKI=str(pki))
    print(f"ansible-check: prefix {prefix}, broker port {port}, device {device}, venv from {python}", flush=True)
    check = Check()
    recaps: list[list[str]] = []
    try:
        rc, recap, counts = run_playbook(1, env, prefix)
        recaps.append(recap)
        if check(rc == 0 and bool(counts), "run 1: the playbook succeeds", f"exit {rc}"):
            check_online(check, port, pw, device, "after run 1", None)
            check_tenants(check, port, pw, device)
            check_acl_split(check, port, pw, device)
            check_link_tls(check, port, pw, prefix, pki, device)
            rc, recap, counts = run_playbook(2, env, prefix)
            recaps.append(recap)
            check(rc == 0 and bool(counts), "run 2: the playbook succeeds", f"exit {rc}")
            changed = {h: c[1] for h, c in counts.items()}
            failed = {h: c[3] for h, c in counts.items()}
            check(bool(counts) and not any(changed.values()) and not any(failed.values()),
                  "run 2: PLAY RECAP reports changed=0 (idempotent)", f"changed {changed}, failed {failed}")
            check_online(check, port, pw, device, "after run 2", "smoke")
            check_restart_keeps_apps(check, port, pw, prefix, device)
            check_unit(check, env, prefix, device)
            check_rollout_stops(check, env, prefix, port, pw, device)
    except Exception as e:  # a crash of the check itself must still fail it, with the reason
        check(False, "the check ran to the end", f"{type(e).__name__}: {e}")
    finally:
        if not args.keep:
            stop_services(prefix, device)
    print("\n===== ansible-lint =====", flush=True)
    lint = subprocess.run([str(TOOLS_BIN / "ansible-lint"), "--nocolor"], cwd=ANSIBLE_DIR, env=env,
                          capture_output=True, text=True)
    print((lint.stdout + lint.stderr).strip()[-4000:], flush=True)
    check(lint.returncode == 0, "ansible-lint passes", f"exit {lint.returncode}")

    print("\n===== ansible-check summary =====")
    for n, recap in enumerate(recaps, 1):
        print(f"run {n} PLAY RECAP:")
        for line in recap or ["(none: the run did not get that far)"]:
            print(f"  {line}")
    for line in check.lines:
        print(line)
    if args.keep:
        print(f"kept: {prefix} (stop: {prefix}/opt/edgeva/bin/edgeva-agentctl stop; "
              f"{prefix}/etc/mosquitto/bin/mosquitto-checkctl stop)")
    else:
        shutil.rmtree(prefix, ignore_errors=True)
    print("ansible-check:", "OK" if check.ok else "FAILED")
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
