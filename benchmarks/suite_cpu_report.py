"""Where the test suite's CPU time goes, from `make test TEST_CPU=1`.

Reads the per-test rows that tests/conftest.py writes when
INTERBERT_TEST_CPU is set (`cpu  children_cpu  wall  test id`, one file per
session) and prints, per session, the total and the costliest files and
tests by CPU time (the session's own and that of the processes a test
started). On two cores, three sessions side by side cannot finish in less
than about half their summed CPU time.

    make test TEST_CPU=1
    .venv/bin/python benchmarks/suite_cpu_report.py .test-runs/*.cpu.tsv
"""
import argparse
import collections
import os
import sys


def read_rows(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            try:
                if len(parts) != 4:
                    raise ValueError
                own, children, wall = (float(p) for p in parts[:3])
            except ValueError:
                raise SystemExit(f"{path}:{number}: expected four tab-separated"
                                 f" fields (cpu, children cpu, wall, test id); "
                                 f"got {line.strip()!r}") from None
            rows.append((own + children, children, wall, parts[3]))
    return rows


def report(path, top):
    rows = read_rows(path)
    name = os.path.basename(path).split(".")[0]
    total = sum(r[0] for r in rows)
    print(f"== {name}: {len(rows)} tests, {total:.0f} CPU s "
          f"({sum(r[1] for r in rows):.0f} in started processes)")
    files = collections.Counter()
    for cpu, _, _, test in rows:
        files[test.split("::")[0]] += cpu
    print("  files:")
    for file, cpu in files.most_common(top):
        print(f"    {cpu:7.1f}  {file}")
    print("  tests (CPU, of it started processes, wall):")
    for cpu, children, wall, test in sorted(rows, reverse=True)[:top]:
        print(f"    {cpu:7.1f} {children:6.1f} {wall:7.1f}  {test}")
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="INTERBERT_TEST_CPU files")
    p.add_argument("--top", type=int, default=12,
                   help="files and tests listed per session (default 12)")
    args = p.parse_args(argv)
    missing = [f for f in args.files if not os.path.isfile(f)]
    if missing:
        raise SystemExit(f"No such file: {', '.join(missing)} (run `make test "
                         "TEST_CPU=1` first)")
    total = sum(report(path, args.top) for path in args.files)
    print(f"all sessions: {total:.0f} CPU s; on two cores at least "
          f"{total / 2:.0f} s of wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
