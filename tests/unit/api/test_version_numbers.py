"""Version numbers and first versions as the pipeline uses them: a number once given is never
given again (an engine must never serve a cached prefix of old weights under a reused name),
and a first version registered with `serve_first: false` waits unserved under its name."""

from __future__ import annotations

from pathlib import Path

import httpx

from gateway.testing.adapters import write_adapter
from gateway.testing.fake_vllm import FakeEngineState
from tests.unit.api.test_admin_api import ADAPTERS, act, chat, model_ids, register


async def test_retired_files_registered_again_get_a_new_number_and_engine_name(
    client: httpx.AsyncClient, adapter_root: Path, fake_state: FakeEngineState
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    first = (await register(client, "pirate", "pirate/v3")).json()
    assert (await chat(client, "pirate@3")).status_code == 200
    assert (await act(client, "pirate@3", "retire")).status_code == 200
    assert (await client.delete(f"{ADAPTERS}/pirate/versions/3")).status_code == 200

    again = await register(client, "pirate", "pirate/v3")  # the very same files
    served = await chat(client, f"pirate@{again.json()['version']}")

    assert again.status_code == 201 and again.json()["sha256"] == first["sha256"]
    assert again.json()["version"] == 4
    assert served.status_code == 200 and fake_state.received[-1]["model"] == "pirate--v4"
    assert "pirate--v3" not in fake_state.loras  # the old name was unloaded, never reused
    retired = await client.get(f"{ADAPTERS}/pirate/versions/3")
    assert retired.status_code == 404


async def test_a_retired_version_keeps_its_number_while_new_files_take_the_next(
    client: httpx.AsyncClient, adapter_root: Path
) -> None:
    write_adapter(adapter_root / "pirate/v3", fill=5.0)
    write_adapter(adapter_root / "pirate/new", fill=9.0)
    await register(client, "pirate", "pirate/v3")
    await act(client, "pirate@3", "retire")

    fresh = await register(client, "pirate", "pirate/new")

    assert fresh.json()["version"] == 4
    assert (await chat(client, "pirate@3")).status_code == 404


async def test_a_first_version_registered_unserved_waits_until_made_stable(
    client: httpx.AsyncClient, adapter_root: Path
) -> None:
    write_adapter(adapter_root / "newcomer/a", fill=7.0)

    created = await register(client, "newcomer", "newcomer/a", serve_first=False)

    assert created.status_code == 201, created.text
    assert "newcomer@1" in await model_ids(client)
    assert "newcomer" not in await model_ids(client)
    assert (await chat(client, "newcomer")).status_code == 404
    assert (await chat(client, "newcomer@1")).status_code == 200
    assert (await act(client, "newcomer@1", "stable")).status_code == 200
    served = await chat(client, "newcomer")
    assert served.status_code == 200 and served.headers["x-adapter"] == "newcomer@1"
