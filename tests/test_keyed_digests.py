"""The keys the exporter keeps of what may be a credential (a cached request with its token or a login's
values, a login session's request, a schedule's login scope, a web user's password) are keyed per process:
the same request gives another key in another process, so no key can be tried against guessed values."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

KEYS = r'''
import asyncio, base64, json
from jsonexporter.spec import load_text
from jsonexporter.upstream.client import RequestOptions
from jsonexporter.upstream.fetch import _cache_key
from jsonexporter.upstream.login import _session_key
from jsonexporter.upstream.refresh import Job, login_scope
from jsonexporter.upstream.render import render_request
from jsonexporter.webconfig import BasicAuth, WebConfig

spec, problems = load_text("""
modules:
  pve:
    secrets: {password: {env: JSONEXPORTER_TEST_PASSWORD}}
    login:
      url: 'http://127.0.0.1:9/access/ticket?user={user}'
      method: POST
      body: {password: '{password}'}
      values: {ticket: data.ticket}
    parameters: {user: {}}
    endpoints:
      nodes: {url: 'http://127.0.0.1:9/nodes', headers: {Cookie: 'ticket={ticket}'}}
    metrics: [{name: x, help: x, value: v}]
""", "spec.yml")
assert spec is not None, problems
module = spec.modules["pve"]
values = {"target": "", "module": "pve", "user": "alice", "password": "pw-SECRET", "ticket": "ticket-SECRET"}
options = RequestOptions(ssl=True, server_hostname=None, proxy=None, proxy_headers=None, allow_redirects=True, authorization="Bearer tok-SECRET")
endpoint = render_request(module.endpoints["nodes"], values)
login = render_request(module.login.request, values)
auth = BasicAuth(lambda: WebConfig(users={"alice": b"$2b$04$HsGvx6cabLWs3f72N6DZcO1z.kW7MoqHToLOnniN1bfRMH/vTFB8W"}))
assert asyncio.run(auth.check("Basic " + base64.b64encode(b"alice:web-SECRET").decode()))
print(json.dumps({
    "cached request": _cache_key(endpoint, options),
    "identity": options.identity(),
    "login session": _session_key(module, module.login, login, options),
    "login scope": login_scope(Job(module, module.endpoints["nodes"], values)),
    "web user": [key.hex() for key in auth.cache],
}))
'''


def keys_of_one_process(setarch: str) -> dict[str, object]:
    # the same addresses and serials in every process (a cache key has its TLS context's serial): only a per-process key tells them apart
    environment = {**os.environ, "PYTHONHASHSEED": "0", "JSONEXPORTER_TEST_PASSWORD": "pw-SECRET"}
    done = subprocess.run([setarch, "-R", sys.executable, "-c", KEYS], capture_output=True, text=True, timeout=120, check=False, env=environment)
    assert done.returncode == 0, done.stderr
    keys: dict[str, object] = json.loads(done.stdout)
    return keys


def test_keys_of_what_may_be_a_credential_differ_from_one_process_to_the_next() -> None:
    setarch = shutil.which("setarch")
    if setarch is None or subprocess.run([setarch, "-R", "true"], capture_output=True, timeout=60, check=False).returncode != 0:
        pytest.skip("needs setarch -R (util-linux) to run processes without address randomization")
    first, second = keys_of_one_process(setarch), keys_of_one_process(setarch)
    assert first.keys() == second.keys()
    same = [name for name in first if first[name] == second[name]]
    assert same == []


def test_a_forked_worker_draws_a_key_of_its_own() -> None:
    """--web.workers forks the workers from the supervisor, which drew its key at import: each worker
    redraws, so a key seen in one worker's memory means nothing in another's."""
    from jsonexporter.keyed import keyed_digest

    parent = keyed_digest("token")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its digest to the parent, then out without running the parent's cleanup
        try:
            os.write(write, keyed_digest("token").encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert len(child) == len(parent) == 64 and child != parent
    assert keyed_digest("token") == parent  # the parent's own key stays


def test_a_cached_answer_of_a_freed_tls_context_is_not_the_answer_of_the_next_one_at_its_address() -> None:
    """CPython gives a freed object's address to the next one of its size: keyed by id(), the cache took a new TLS
    context (a reload's changed tls_config: another CA, a client certificate) for the old one, and served the answers
    fetched with it. Each context has a serial of its own."""
    import ssl

    from jsonexporter.spec import load_text
    from jsonexporter.upstream.client import RequestOptions
    from jsonexporter.upstream.fetch import _cache_key
    from jsonexporter.upstream.render import render_request

    spec, problems = load_text("modules: {m: {endpoints: {e: {url: 'https://127.0.0.1:9/x'}}, metrics: [{name: x, help: x, value: v}]}}", "spec.yml")
    assert spec is not None, problems
    request = render_request(spec.modules["m"].endpoints["e"], {"target": "", "module": "m"})

    def key(context: ssl.SSLContext) -> str:
        return _cache_key(request, RequestOptions(ssl=context, server_hostname=None, proxy=None, proxy_headers=None,
                                                  allow_redirects=True, authorization=None))

    old = ssl.create_default_context()
    old_key, address = key(old), id(old)
    assert key(old) == old_key  # the same context: the same answers
    del old
    others = []
    for _ in range(1000):
        new = ssl.create_default_context()
        if id(new) == address:
            break
        others.append(new)
    else:
        pytest.skip("no new TLS context was made at the freed one's address")
    assert key(new) != old_key
