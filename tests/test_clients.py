"""The run-time client configurations (upstream/client.py): the values they reveal stay held, and
their TLS files are read off the event loop, bounded in time and size."""

from __future__ import annotations

from jsonexporter.secrets import REDACTED, Redactor
from jsonexporter.spec.model import Secret
from jsonexporter.upstream.client import Clients


async def test_two_inline_secrets_revealed_by_one_clients_stay_held_both() -> None:
    redactor = Redactor()
    clients = Clients(redactor)
    assert await clients.reveal(Secret(value="alpha-password-0001"), "password_file") == "alpha-password-0001"
    assert await clients.reveal(Secret(value="beta-password-0002"), "password_file") == "beta-password-0002"
    redactor.budget = 1
    for n in range(100):  # other run-time values, beyond the budget: only the values not in use may go
        redactor.learn(f"other-value-{n:04d}")
    assert redactor("alpha-password-0001 beta-password-0002") == f"{REDACTED} {REDACTED}"
