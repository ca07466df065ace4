"""``tokenmixers study NAME``: the papers' questions as one-command studies. Each trains (or
reuses) its models through :mod:`tokenmixers.compare`, so it shares its seeds, recipes,
``--resume`` and intervals, measures, and writes ``report.md`` and a self-contained
``report.html`` in the comparison's look.

- ``erf`` (:mod:`tokenmixers.studies.erf`): every mixer's effective receptive field in one
  skeleton, untrained and trained;
- ``resolution`` (:mod:`tokenmixers.studies.resolution`): trained at one size, tested from
  half to twice it, with throughput and memory per size;
- ``long-range`` (:mod:`tokenmixers.studies.long_range`): Pathfinder at each difficulty,
  and which mixers rise above chance;
- ``ablations`` (:mod:`tokenmixers.studies.ablations`): the papers' own ablations per
  family, with the paper's finding next to ours.
"""

from __future__ import annotations

from typing import Any


def add_parser(sub: Any) -> None:
    """``tokenmixers study ...``."""
    from tokenmixers.studies import ablations, erf, long_range, resolution

    p = sub.add_parser("study", help="the papers' questions as one-command studies with a "
                       "report (erf, resolution, long-range, ablations)")
    studies = p.add_subparsers(dest="study", required=True, metavar="STUDY")
    erf.add_parser(studies)
    resolution.add_parser(studies)
    long_range.add_parser(studies)
    ablations.add_parser(studies)
