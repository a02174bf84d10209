"""A Delta Sharing recipient's read, with the official client from PyPI (`delta-sharing`).

Runs in the recipient environment (its own venv: the client pins an older pyarrow than the
platform's), as a hospital's own tools would: the platform's demo, tests and benchmark call it
through a subprocess. Prints one JSON object per command on stdout; data frames go to Parquet.

    read_share.py PROFILE list
    read_share.py PROFILE load SHARE.SCHEMA.TABLE --out F.parquet [--limit N] [--version V] [--timestamp T]
    read_share.py PROFILE changes SHARE.SCHEMA.TABLE --out F.parquet --starting-version N [--ending-version M]
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import time

import delta_sharing


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profile")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    load = sub.add_parser("load")
    load.add_argument("table")
    load.add_argument("--out", required=True)
    load.add_argument("--limit", type=int)
    load.add_argument("--version", type=int)
    load.add_argument("--timestamp")
    changes = sub.add_parser("changes")
    changes.add_argument("table")
    changes.add_argument("--out", required=True)
    changes.add_argument("--starting-version", type=int, required=True)
    changes.add_argument("--ending-version", type=int)
    args = parser.parse_args()

    if args.command == "list":
        tables = delta_sharing.SharingClient(args.profile).list_all_tables()
        print(json.dumps({"tables": [f"{t.share}.{t.schema}.{t.name}" for t in tables]}))
        return 0
    url = f"{args.profile}#{args.table}"
    started = time.perf_counter()
    if args.command == "load":
        frame = delta_sharing.load_as_pandas(
            url, limit=args.limit, version=args.version, timestamp=args.timestamp
        )
    else:
        frame = delta_sharing.load_table_changes_as_pandas(
            url, starting_version=args.starting_version, ending_version=args.ending_version
        )
    seconds = time.perf_counter() - started
    frame.to_parquet(args.out, index=False)
    print(json.dumps({"rows": len(frame), "columns": list(frame.columns), "seconds": seconds}))
    return 0


if __name__ == "__main__":
    faulthandler.enable()
    code = main()
    # The answer is written and flushed; skip interpreter finalisation, where the client's native
    # thread pools (pyarrow, the Rust kernel wrapper) are torn down in an order that now and then
    # aborts with "terminate called without an active exception" after the work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
