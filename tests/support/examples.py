"""How many examples a property test draws: all of them in `make test`, a tenth in `make test-fast`.

`make test-fast` (the quick loop, under a minute) sets ``SIP_TEST_PROFILE=fast``; `make test` and CI
never do, so every property is checked at its full count there.
"""

from __future__ import annotations

import os

FAST = os.environ.get("SIP_TEST_PROFILE", "").strip().lower() == "fast"


def examples(full: int) -> int:
    """``full`` examples, or a tenth of them (at least 5) in the fast profile."""
    return max(5, full // 10) if FAST else full
