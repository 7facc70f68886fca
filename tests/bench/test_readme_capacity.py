"""README's Capacity section says what the last committed bench run measured.

``just bench`` writes ``bench/results.json`` and regenerates the section from it
(``bench/capacity.py``); a hand edit of either, or a run committed without the other,
makes them disagree.
"""

from __future__ import annotations

import json

from bench.capacity import capacity_markdown, readme_section
from tests.support.contract import REPO_ROOT


def test_readme_capacity_is_generated_from_the_committed_bench_results() -> None:
    data = json.loads((REPO_ROOT / "bench" / "results.json").read_text(encoding="utf-8"))
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_section(readme) == capacity_markdown(data)
    # the section is about this run's figures, and the run did what the headline rows promise
    assert data["machine"]["commit"] in readme_section(readme)
    assert data["tether"]["fanout"]["batch"] == 1
    assert data["tether"]["fanout"]["batch_frames"] is False
