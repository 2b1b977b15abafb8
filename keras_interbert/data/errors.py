"""Errors and the skip report shared by the region-feature readers and writers.

Every problem found in input data is a `RegionDataError` that names the file,
the record (line number, image id) and the problem. What happens to it is the
caller's *policy*: `"raise"` (the default) raises it; `"skip"` drops the record
and adds the error to an `ErrorReport`, which lists what was skipped and why.
"""

import warnings
from collections import Counter

POLICIES = ("raise", "skip")


class RegionDataError(ValueError):
    """A region-feature or caption record that cannot be used.

    Args:
        problem: what is wrong, with the expected and the received value.
        path: the file the record comes from, when known.
        record: which record, e.g. `"line 12"` or `"image 'COCO_1'"`.
        kind: a short machine-readable category (`"non_finite"`,
            `"box_outside_image"`, `"no_regions"`, ...) used to count skips.

    Examples:

    >>> err = RegionDataError("3 boxes but 2 feature rows", path="a.tsv",
    ...                       record="line 4", kind="shape_mismatch")
    >>> str(err)
    'a.tsv, line 4: 3 boxes but 2 feature rows'
    """

    def __init__(self, problem, path=None, record=None, kind="invalid"):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.record = record
        self.kind = kind
        where = ", ".join(str(p) for p in (self.path, record) if p is not None)
        super().__init__(f"{where}: {problem}" if where else problem)

    def with_location(self, path=None, record=None):
        """A copy with `path`/`record` filled in where this one has none."""
        return RegionDataError(
            self.problem,
            path=self.path if self.path is not None else path,
            record=self.record if self.record is not None else record,
            kind=self.kind,
        )

    def to_dict(self):
        return {
            "file": self.path,
            "record": self.record,
            "kind": self.kind,
            "problem": self.problem,
        }


class ErrorReport:
    """What a `policy="skip"` run dropped, and why.

    Args:
        max_listed: keep at most this many skipped records in `skipped`
            (the counts stay exact); `None` keeps all.

    Examples:

    >>> report = ErrorReport()
    >>> report.add(RegionDataError("empty caption", "c.jsonl", "line 2",
    ...                            kind="empty_caption"))
    >>> report.to_dict()["num_skipped"]
    1
    """

    def __init__(self, max_listed=None):
        self.max_listed = max_listed
        self.skipped = []
        self.num_skipped = 0
        self.by_kind = Counter()

    def add(self, error):
        self.num_skipped += 1
        self.by_kind[error.kind] += 1
        if self.max_listed is None or len(self.skipped) < self.max_listed:
            self.skipped.append(error.to_dict())

    def __len__(self):
        return self.num_skipped

    def to_dict(self):
        return {
            "num_skipped": self.num_skipped,
            "skipped_by_kind": dict(sorted(self.by_kind.items())),
            "skipped": list(self.skipped),
        }

    def write_json(self, path, **extra):
        """Write `to_dict()` (plus `extra` keys) to `path` as UTF-8 JSON."""
        from keras_interbert.utils.atomic import write_json_atomically

        data = dict(extra)
        data.update(self.to_dict())
        write_json_atomically(path, data, ensure_ascii=False)


def check_policy(policy):
    if policy not in POLICIES:
        raise ValueError(
            f"policy must be one of {list(POLICIES)}; received {policy!r}."
        )
    return policy


class PolicyHandler:
    """Applies a policy to errors: raise them, or record them in a report.

    When `policy="skip"` and no report is passed, a private report is kept
    and a warning with the number of skipped records is issued by `finish()`
    so that skipping is never silent.
    """

    def __init__(self, policy="raise", report=None, what="records"):
        self.policy = check_policy(policy)
        self._own_report = report is None
        self.report = ErrorReport() if report is None else report
        self.what = what

    def handle(self, error):
        if self.policy == "raise":
            raise error
        self.report.add(error)

    def finish(self):
        if self._own_report and self.report.num_skipped:
            warnings.warn(
                f"policy='skip' dropped {self.report.num_skipped} {self.what}: "
                f"{dict(self.report.by_kind)}. Pass report=ErrorReport() to "
                "see which ones.",
                stacklevel=3,
            )
