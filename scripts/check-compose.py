#!/usr/bin/env python3
"""Checks deploy/compose.yaml without a container engine (scripts/check-deploy runs it).

`docker compose config` checks the syntax where the compose plugin exists; this checks what
the deployment promises (docs/DEPLOY.md), which no schema knows: Redis keeps an append-only
file on a volume and never evicts, every role of System 1 and System 2 is a service, each TLS
service listens on 443 inside its container with the mounted certificate, plaintext listeners
are on the container's own loopback only, every service that listens has a health probe of
/healthz or /readyz on that listener, and compose waits longer than the drain at shutdown.
Every failure names the service and what is wrong.

usage: check-compose.py deploy/compose.yaml
"""

import os
import re
import sys

import yaml

problems = []


def fail(msg):
    problems.append(msg)


def flag(cmd, name):
    """The value after `name` in a command list, or None."""
    for i, a in enumerate(cmd[:-1]):
        if a == name:
            return cmd[i + 1]
    return None


def env_file(path):
    """KEY=value lines of an env file."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                out[k.strip()] = v.strip()
    return out


def seconds(duration):
    """Compose durations like 30s, 1m30s, 500ms."""
    total = 0.0
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration)):
        total += float(n) * units[u]
    return total


def interpolate(value):
    """${VAR:-default} as compose would expand it with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def main(path):
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    services = doc.get("services") or {}

    # Redis: AOF on a volume, noeviction.
    redis = services.get("redis")
    if redis is None:
        fail("no `redis` service")
    else:
        cmd = [interpolate(a) for a in redis.get("command", [])]
        if flag(cmd, "--appendonly") != "yes":
            fail("redis: --appendonly yes is missing")
        if flag(cmd, "--appendfsync") not in ("always", "everysec"):
            fail("redis: --appendfsync must be always or everysec")
        if flag(cmd, "--maxmemory-policy") != "noeviction":
            fail("redis: --maxmemory-policy noeviction is missing (eviction drops entries)")
        mounts = [str(v) for v in redis.get("volumes", [])]
        named = [m.split(":")[0] for m in mounts if m.endswith(":/data")]
        if not named:
            fail("redis: /data is not on a volume")
        for n in named:
            if n not in (doc.get("volumes") or {}):
                fail(f"redis: volume `{n}` is not declared under volumes:")
        if "healthcheck" not in redis:
            fail("redis: no healthcheck")

    # The roles.
    def role(s):
        cmd = s.get("command") or []
        if not cmd:
            return None
        if cmd[0] == "aggregator":
            return "aggregator"
        if cmd[0] == "ingest":
            return "ingest " + (cmd[1] if len(cmd) > 1 and not cmd[1].startswith("-") else "all")
        return None

    roles = {}
    for name, s in services.items():
        r = role(s)
        if r:
            roles.setdefault(r, []).append(name)
    for r in ("ingest front", "ingest worker", "ingest broadcaster", "aggregator"):
        if r not in roles:
            fail(f"no service runs `{r}`")
    workers = roles.get("ingest worker", [])
    ids = [flag(services[w]["command"], "--node-id") for w in workers]
    replicas = max(
        [int((services[w].get("deploy") or {}).get("replicas", 1)) for w in workers] or [0]
    )
    if len(workers) < 2 and replicas < 2:
        fail("run at least two workers (two services, or deploy.replicas)")
    if len(workers) > 1 and (None in ids or len(set(ids)) != len(ids)):
        fail(f"worker services need distinct --node-id values, found {ids}")

    # Each service that runs one of our binaries.
    for name, s in services.items():
        r = role(s)
        if r is None:
            continue
        cmd = [interpolate(a) for a in s["command"]]
        files = s.get("env_file") or []
        files = [files] if isinstance(files, str) else files
        files = [f if isinstance(f, str) else f["path"] for f in files]
        for f_ in files:
            if not os.path.isfile(os.path.join(base, f_)):
                fail(f"{name}: env_file {f_} does not exist")
        envs = {}
        for f_ in files:
            p = os.path.join(base, f_)
            if os.path.isfile(p):
                envs.update(env_file(p))
        prefix = "AGG_" if r == "aggregator" else "INGEST_"
        drain_ms = int(envs.get(prefix + "DRAIN_MS", "10000"))
        grace = seconds(s.get("stop_grace_period", "10s"))
        if grace * 1000 <= drain_ms:
            fail(f"{name}: stop_grace_period {grace}s is not above {prefix}DRAIN_MS {drain_ms} ms")
        if s.get("restart") not in ("always", "unless-stopped", "on-failure"):
            fail(f"{name}: no restart policy")
        if r == "ingest worker":
            continue
        # Listeners: TLS on 443 from mounted files; plaintext only on the container loopback.
        if flag(cmd, "--tls-listen") != "0.0.0.0:443":
            fail(f"{name}: --tls-listen 0.0.0.0:443 is missing")
        mounts = [interpolate(v) for v in s.get("volumes") or []]
        targets = [m.split(":")[1] for m in mounts if m.count(":") >= 1]
        for tf in ("--tls-cert", "--tls-key"):
            p = flag(cmd, tf)
            if p is None:
                fail(f"{name}: {tf} is missing")
            elif not any(p.startswith(t.rstrip("/") + "/") for t in targets):
                fail(f"{name}: {tf} {p} is not inside a mounted volume")
        if not all(m.endswith(":ro") for m in mounts if "/run/certs" in m):
            fail(f"{name}: mount the certificates read-only (:ro)")
        published = [str(p).rsplit(":", 1)[-1] for p in s.get("ports") or []]
        if published != ["443"]:
            fail(f"{name}: publish the TLS port 443 only, found {published}")
        plain = flag(cmd, "--listen")
        if plain is None:
            fail(f"{name}: give --listen (off, or the container's 127.0.0.1)")
        elif plain != "off" and not plain.startswith("127.0.0.1:"):
            fail(f"{name}: plaintext --listen {plain} is reachable from outside the container")
        hc = (s.get("healthcheck") or {}).get("test") or []
        probe = " ".join(hc)
        want = "/healthz" if r == "aggregator" else "/readyz"
        if plain and plain != "off":
            if f"http://{plain}{want}" not in probe:
                fail(f"{name}: the healthcheck should probe http://{plain}{want}, found {hc}")
        elif want not in probe:
            fail(f"{name}: the healthcheck should probe {want}, found {hc}")
        if not s.get("read_only"):
            fail(f"{name}: read_only: true (the services write nothing)")

    if problems:
        for p in problems:
            print(f"{path}: {p}", file=sys.stderr)
        sys.exit(1)
    print(f"{path}: {len(services)} services, {len(roles)} roles: ok")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "deploy/compose.yaml")
