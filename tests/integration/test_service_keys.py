"""The launch-config signing key is one per deployment, shared by replicas, and stored only encrypted."""
from __future__ import annotations

from sqlalchemy import select

from gantry_server.domain.auth.launch_tokens import LaunchTokenKeys
from gantry_server.domain.secrets_at_rest import Keyring
from gantry_server.store.models import service_keys

NOW = 1_790_000_000


async def test_two_replicas_share_one_launch_key_and_it_is_stored_encrypted(clean_db):
    keyring = Keyring(b"k" * 32)
    first = await LaunchTokenKeys.shared(clean_db, keyring)
    second = await LaunchTokenKeys.shared(clean_db, keyring)  # another replica starting later
    token = first.issue(config_id="cfg-1", chute_id="c", url="u", env_key="0" * 32, egress=False,
                        lock_modules=False, env_type="graval", now=NOW)
    assert second.verify(token, "cfg-1", now=NOW)["sub"] == "cfg-1"
    async with clean_db.connect() as conn:
        [blob] = (await conn.execute(select(service_keys.c.key_enc))).scalars().all()
    assert b"PRIVATE KEY" not in blob and first.private_pem() not in blob
