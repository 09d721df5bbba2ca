#!/usr/bin/env python
"""Validate a submission CSV against the test json before uploading it.

    python tools/check_submission.py submission.csv --test-json DATA/test.json

Checks: the header, UTF-8 text, one row per test image, no unknown or repeated image ids, 65536 values per row,
each written in ASCII digits, every value a class index. Exits 1 with `INVALID: ...` naming the row on the first
problem; a missing file or a broken test json exits 2 with one line.
"""

from __future__ import annotations

import argparse
import sys

from mask2former.io.submission import SubmissionError, check_submission
from mask2former.utils.cli import run_tool, strip_debug

EXIT_INVALID = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", help="the submission CSV")
    parser.add_argument("--test-json", required=True, help="the test COCO json (its images define the rows)")
    parser.add_argument("--num-classes", type=int, help="class count incl. background (default: json categories + 1)")
    args = parser.parse_args(strip_debug(argv))

    def check() -> int:
        try:
            rows = check_submission(args.csv, args.test_json, args.num_classes)
        except SubmissionError as error:
            print(f"INVALID: {error}", file=sys.stderr)
            return EXIT_INVALID
        print(f"OK: {args.csv} has one valid row for each of the {rows} test images")
        return 0

    return run_tool("check_submission.py", check, argv)


if __name__ == "__main__":
    sys.exit(main())
