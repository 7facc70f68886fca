"""The SDK ships the session contract and reads everything from it (issue 13.6).

The copy under ``tether_client/contract/`` must equal ``contracts/session/`` byte for byte
(``python -m tether_client._sync_contract`` makes it so), the wheel must contain it, and
the limits the client enforces must be the schemas' values.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tether_client import _sync_contract
from tether_client.closing import CloseCatalogue
from tether_client.frames import MAX_PROMPT_CHARS, PROTOCOL_VERSION, SLUG, prompt_frame

REPO = Path(__file__).resolve().parents[3]
CONTRACT = REPO / "contracts" / "session"
PACKAGE = REPO / "clients" / "python"


def test_the_shipped_contract_is_the_repository_contract() -> None:
    assert _sync_contract.find_source(PACKAGE) == CONTRACT
    problems = _sync_contract.differences(CONTRACT)
    assert problems == [], f"run `python -m tether_client._sync_contract`: {problems}"


def test_the_check_notices_a_changed_added_or_removed_file_and_sync_repairs_it(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    _sync_contract.sync(CONTRACT, copy)
    assert _sync_contract.differences(CONTRACT, copy) == []
    prompt = copy / "frames" / "prompt.json"
    prompt.write_text(prompt.read_text().replace("16000", "16001"))
    (copy / "frames" / "ready.json").unlink()
    (copy / "frames" / "gone.json").write_text("{}")
    assert _sync_contract.differences(CONTRACT, copy) == [
        "missing in the package: frames/ready.json",
        "not in the contract any more: frames/gone.json",
        "differs: frames/prompt.json",
    ]
    assert _sync_contract.main(["--source", str(CONTRACT), "--check"]) == 0
    _sync_contract.sync(CONTRACT, copy)
    assert _sync_contract.differences(CONTRACT, copy) == []


def test_client_limits_are_the_schemas_values() -> None:
    prompt = json.loads((CONTRACT / "frames" / "prompt.json").read_text())
    init = json.loads((CONTRACT / "frames" / "init.json").read_text())
    assert prompt["properties"]["text"]["maxLength"] == MAX_PROMPT_CHARS
    assert init["properties"]["v"]["const"] == PROTOCOL_VERSION
    assert SLUG.pattern == init["properties"]["project"]["oneOf"][1]["properties"]["slug"]["pattern"]
    prompt_frame("m1", "x" * MAX_PROMPT_CHARS)
    with pytest.raises(ValueError, match=f"1 to {MAX_PROMPT_CHARS}"):
        prompt_frame("m1", "x" * (MAX_PROMPT_CHARS + 1))
    with pytest.raises(ValueError, match="prompt frame: client_msg_id"):
        prompt_frame("not an id", "hello")


def test_the_bundled_catalogue_is_the_contract_and_tolerates_new_members() -> None:
    data = json.loads((CONTRACT / "close-codes.json").read_text())
    assert CloseCatalogue.bundled() == CloseCatalogue.from_json(data)
    assert [e.name for e in CloseCatalogue.bundled().entries] == [c["name"] for c in data["codes"]]
    grown = {**data, "codes": [{**c, "cause": "server", "log_level": "warning"} for c in data["codes"]]}
    entry = CloseCatalogue.from_json(grown).entries[0]
    assert dict(entry.extra) == {"cause": "server", "log_level": "warning"}
    assert entry.name == data["codes"][0]["name"]


def test_the_built_package_contains_the_contract(tmp_path: Path) -> None:
    """What setuptools' build_py puts in the build tree is what a wheel ships."""
    subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=PACKAGE,
        check=True,
        capture_output=True,
        timeout=120,
    )
    built = tmp_path / "tether_client" / "contract"
    assert _sync_contract.shipped_files(built) == _sync_contract.shipped_files(CONTRACT)
    assert _sync_contract.differences(CONTRACT, built) == []
