#!/usr/bin/env python3
"""Prints why tests were skipped, from ctest's log of the last run (Testing/Temporary/LastTest.log).

ctest shows a skipped test only as "***Skipped"; the reason is in the test's output, which it prints
with -V alone. This lists each distinct reason once with the tests it covers, so the normal test
output (scripts/test.sh) says plainly what did not run and why (e.g. "no GPU").
Reasons come from GoogleTest's GTEST_SKIP() message and from script tests' "SKIPPED: <reason>" line.
Usage: ctest_skips.py BUILD_DIR
"""
import collections
import os
import re
import sys


def skipped_tests(log_text):
    """Yields (test name, reason) for every skipped test in a LastTest.log."""
    # Each test's block starts with "N/M Testing: NAME" and holds its output up to "<end of output>",
    # then a status line such as "Test Passed." / "Test Failed." / "Test Skipped.".
    blocks = re.split(r"^\d+/\d+ Testing: ", log_text, flags=re.M)[1:]
    for block in blocks:
        name = block.split("\n", 1)[0].strip()
        out_start = block.find("Output:\n")
        out_end = block.find("<end of output>")
        output = block[out_start:out_end] if out_start >= 0 and out_end >= 0 else ""
        reason = None
        # GoogleTest: "file.cc:12: Skipped\n<message lines>\n[  SKIPPED ] Suite.Test (0 ms)"
        m = re.search(r": Skipped\n(.*?)\n\[  SKIPPED \]", output, flags=re.S)
        if m:
            reason = " ".join(line.strip() for line in m.group(1).splitlines() if line.strip()) or "(no reason given)"
        else:
            m = re.search(r"^SKIPPED: (.*)$", output, flags=re.M)
            if m and re.search(r"^Test (Skipped|Not Run)|Skipped", block[out_end:], flags=re.M):
                reason = m.group(1).strip()
        if reason is not None:
            yield name, reason


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    log = os.path.join(sys.argv[1], "Testing", "Temporary", "LastTest.log")
    if not os.path.exists(log):
        return
    with open(log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    by_reason = collections.OrderedDict()
    for name, reason in skipped_tests(text):
        by_reason.setdefault(reason, []).append(name)
    if not by_reason:
        return
    total = sum(len(v) for v in by_reason.values())
    print(f"\n{total} test(s) skipped, by reason:")
    for reason, names in by_reason.items():
        shown = ", ".join(names[:3]) + (f", ... ({len(names) - 3} more)" if len(names) > 3 else "")
        print(f"  - {reason}\n      {len(names)} test(s): {shown}")


if __name__ == "__main__":
    main()
