"""Runs scim2-tester against a SCIM endpoint and judges the result for CI.

Usage: conformance.py BASE_URL TOKEN_FILE

Every check scim2-tester runs is printed with its status. The run fails when a check fails that
is not in EXPECTED_FAILURES, and also when a check listed there passes (or no longer runs), so
that the list and the README's "Conformance" section never go stale. A check counts as passed when
scim2-tester rates it SUCCESS, COMPLIANT or ACCEPTABLE; DEVIATION (a SHOULD not followed), ERROR
and CRITICAL are failures; SKIPPED is reported and counted apart.

scim2-tester fills resources with random values; CONFORMANCE_SEED (default 7644) seeds Python's
random module so that a CI run is reproducible, and another seed explores other values.
"""

import os
import random
import sys
from collections import Counter

from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status
from scim2_tester import check_server

# Check id -> why the daemon deliberately behaves otherwise. Keep in step with README.md
# ("Conformance").
EXPECTED_FAILURES: dict[str, str] = {}

PASSED = {Status.SUCCESS, Status.COMPLIANT, Status.ACCEPTABLE}


def check_id(result, seen: Counter) -> str:
    """A stable name for one result: resource type, checker, and the attribute it was about."""
    name = f"{result.resource_type or '-'}:{result.title}"
    if isinstance(result.data, dict) and result.data.get("urn"):
        name += f"[{result.data['urn']}]"
    # A checker may report several results without an attribute; number the repeats.
    seen[name] += 1
    if seen[name] > 1:
        name += f"#{seen[name]}"
    return name


def one_line(text) -> str:
    return " ".join(str(text).split())


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    base_url, token_file = sys.argv[1], sys.argv[2]
    with open(token_file, encoding="utf-8") as file:
        token = file.read().strip()
    random.seed(int(os.environ.get("CONFORMANCE_SEED", "7644")))

    http = Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    results = check_server(SyncSCIMClient(http))

    seen: Counter = Counter()
    counts: Counter = Counter()
    unexpected = []
    ran = set()
    for result in results:
        name = check_id(result, seen)
        ran.add(name)
        reason = one_line(result.reason or "")
        if result.status == Status.SKIPPED:
            counts["skipped"] += 1
            print(f"skipped: {name}: {reason}")
        elif result.status in PASSED:
            if name in EXPECTED_FAILURES:
                counts["unexpected pass"] += 1
                unexpected.append(name)
                print(f"UNEXPECTED PASS: {name} (remove it from EXPECTED_FAILURES and README)")
            else:
                counts["passed"] += 1
                print(f"passed: {name} ({result.status.name})")
        elif name in EXPECTED_FAILURES:
            counts["expected failure"] += 1
            print(f"expected failure: {name}: {EXPECTED_FAILURES[name]}")
            print(f"    scim2-tester: {result.status.name}: {reason}")
        else:
            counts["FAILED"] += 1
            unexpected.append(name)
            print(f"FAILED: {name}: {result.status.name}: {reason}")
            if result.data is not None:
                print(f"    data: {one_line(result.data)[:2000]}")

    for name in EXPECTED_FAILURES:
        if name not in ran:
            counts["missing"] += 1
            unexpected.append(name)
            print(f"MISSING: {name} did not run (remove it from EXPECTED_FAILURES and README)")

    summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
    print(f"conformance: {len(results)} checks: {summary}")
    if unexpected:
        print(f"conformance: {len(unexpected)} unexpected: {', '.join(unexpected)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
