"""``tokenmixers study ablations``: the papers' own ablations, each family under one recipe
and one seed set, with the paper's finding written next to ours.

Every ablation is one change to its family's model, written as overrides on top of the
model ``tokenmixers compare`` trains for that family (:data:`tokenmixers.compare.FAMILIES`:
a third of a million parameters at the small budget, the paper model at ``--budget
paper``). Where the zoo holds the ablation at paper scale (``sequencer2d_s_vertical``,
``vsequencer_s_pe``, ...) the paper budget trains that entry, and a test checks that it *is*
the paper model with the change applied; so any single ablation can be trained alone with
``tokenmixers train --model NAME --model-kwargs ...`` (the report lists the overrides).

For each family, the baseline and its ablations train through ``tokenmixers compare``
(``OUT/FAMILY/compare``: seeds, ``--resume``), and each ablation is compared with the
baseline on the same test images by the paired bootstrap of :mod:`tokenmixers.stats`
(test images and seeds resampled, Holm-corrected over the family's ablations). Ours is
``lower`` / ``higher`` where the 95% interval of the difference excludes 0 after that
correction, ``no difference shown`` otherwise; it agrees with the paper where the paper
states a direction (a measured one, or the reason it gives for its design).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenmixers.studies.common import (
    add_common_options,
    compare_config,
    eval_row,
    records,
    run_study,
    summarize_or_none,
    summary_text,
    top1_at,
)
from tokenmixers.text import did_you_mean, split_list

Change = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Ablation:
    """One change to a family's model."""

    key: str
    label: str
    #: overrides on top of the baseline's, or a function of the baseline's full arguments
    #: (for changes that scale with the model: "twice the hidden size")
    change: Change
    #: what the paper reports about it (with where), or says it does not test
    paper: str
    #: the paper's direction against its baseline: "lower", "same", "higher"; None where
    #: the paper states none (then no agreement is claimed)
    expect: str | None = None
    #: the zoo entry that is this ablation of the paper model, where there is one
    zoo: str | None = None


@dataclass(frozen=True)
class FamilyAblations:
    family: str
    #: what the baseline is, in the paper's terms
    baseline: str
    question: str
    ablations: tuple[Ablation, ...] = field(default=())


def _times(key: str, factor: float) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The argument ``key`` (a per-stage tuple) scaled by ``factor``."""
    return lambda a: {key: tuple(max(1, int(v * factor)) for v in a[key])}


def _hidden_one_direction(union: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    # One direction of BiLSTM2D with twice the hidden size, so its output is C wide already
    # and the fc goes (the authors' ablation models).
    return lambda a: {**_times("hidden_sizes", 2)(a), "union": union, "with_fc": False}


def _vsequencer(pos_embed: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Sequencer2D's pyramid made flat: the whole stride in the stem, every stage as wide as
    the last, one BiLSTM over the raster sequence, ``2 * hidden = C`` (VSequencer)."""

    def change(a: dict[str, Any]) -> dict[str, Any]:
        import math

        n = len(a["layers"])
        width = a["embed_dims"][-1]
        return {"patch_sizes": (math.prod(a["patch_sizes"]),) + (1,) * (n - 1),
                "embed_dims": (width,) * n, "hidden_sizes": (width // 2,) * n,
                "union": "flat", "with_fc": False, **({"pos_embed": True} if pos_embed else {})}

    return change


def _deeper(factor: float, mlp_ratio: float) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """ShiftViT's MLP ratio with every stage's depth scaled to keep the parameter count (a
    block's weights are ``2 * tau * C^2``: half the ratio, twice the blocks)."""
    return lambda a: {"mlp_ratio": mlp_ratio,
                      "depths": tuple(max(1, round(d * factor)) for d in a["depths"])}


_D3 = ("ViT App. D.3 (Fig. 9): class token and global average pooling 'work similarly well, "
       "but require different learning-rates' (GAP 3e-4 vs 8e-4); here both get one recipe")
_SEQ_DESIGN = ("the paper's Sequencer2D keeps bidirectional LSTMs in both axes, concatenated, "
               "with the fusion fc, D = C/4; its ablation table is not quoted here")
_SEQ_2D = ("the paper decomposes the LSTM into vertical and horizontal ones 'to enhance "
           "performance' (abstract): its 1-D VSequencers do worse")
_VIL_V2 = ("ViL v2 (README, App. A): bilateral concat pooling, conv2d, biases and a "
           "192-then-224 schedule together took ViL-T from 77.3% to 78.3%; no per-change "
           "numbers are quoted here")
_VIL_ABL = "the paper ablates it on ImageNet-100 (ViL-T); its numbers are not quoted here"

ABLATIONS: dict[str, FamilyAblations] = {f.family: f for f in (
    FamilyAblations(
        "vit", "class token, learned 1-D position embedding",
        "ViT: class token vs average pooling; what the position embedding is worth",
        (
            Ablation("gap", "global average pooling, no class token",
                     {"global_pool": "avg", "class_token": False}, _D3, "same"),
            Ablation("no_pos_embed", "no position embedding", {"pos_embed": "none"},
                     "ViT App. D.4 Table 8 (ViT-B/16, ImageNet 5-shot linear): 0.614 "
                     "without a position embedding vs 0.642 with the 1-D one", "lower"),
        )),
    FamilyAblations(
        "mixer", "global average pooling, no position embedding",
        "MLP-Mixer: does it gain from a position embedding; does it work reading a class "
        "token (the open questions of the ViT vs Mixer comparison)",
        (
            Ablation("pos_embed", "+ learned position embedding (ViT's)",
                     {"pos_embed": "learn"},
                     "Mixer Sec. 2: none, 'because the token-mixing MLPs are sensitive to "
                     "the order of the input tokens' (a reason given, not measured)", "same"),
            Ablation("class_token", "class token read-out instead of pooling",
                     {"class_token": True, "global_pool": "token"},
                     "not tested in the paper (Mixer pools by global averaging)"),
        )),
    FamilyAblations(
        "shiftvit", "shift ratio 1/12 per direction (a third of the channels move), MLP "
                    "ratio 4",
        "ShiftViT: how much to shift (gamma), and MLP width (tau) against depth at equal "
        "parameters",
        (
            Ablation("gamma_1_24", "gamma 1/24 per direction (1/6 move)", {"n_div": 24},
                     "the paper's default is 1/12; its gamma table is not quoted here"),
            Ablation("gamma_1_6", "gamma 1/6 per direction (2/3 move)", {"n_div": 6},
                     "the paper's default is 1/12; its gamma table is not quoted here"),
            Ablation("gamma_1_4", "gamma 1/4 per direction (every channel moves)",
                     {"n_div": 4},
                     "the paper's default is 1/12; its gamma table is not quoted here"),
            Ablation("tau_2_deeper", "MLP ratio 2, twice the depth (same parameters)",
                     _deeper(2.0, 2.0),
                     "the paper's main Shift-T trades MLP width for depth: tau 2, depths "
                     "(6,8,18,6): 81.7% vs the light tau-4 (2,2,6,2) model's 79.4% (SPACH "
                     "README; 28.6M vs 19.6M parameters, so not at equal size)"),
            Ablation("tau_8_shallower", "MLP ratio 8, half the depth (same parameters)",
                     _deeper(0.5, 8.0), "not a configuration of the paper"),
        )),
    FamilyAblations(
        "sequencer", "BiLSTM2D: bidirectional vertical and horizontal LSTMs, concatenated, "
                     "fusion fc, hidden D = C/4",
        "Sequencer2D: which parts of BiLSTM2D matter, and does the 2-D decomposition beat "
        "a plain BiLSTM over the token sequence (VSequencer)",
        (
            Ablation("unidirectional", "uni-directional LSTMs", {"bidirectional": False},
                     _SEQ_DESIGN, zoo="sequencer2d_s_unidirectional"),
            Ablation("vertical_only", "vertical LSTM only (2D hidden, no fc)",
                     _hidden_one_direction("vertical"), _SEQ_DESIGN,
                     zoo="sequencer2d_s_vertical"),
            Ablation("horizontal_only", "horizontal LSTM only (2D hidden, no fc)",
                     _hidden_one_direction("horizontal"), _SEQ_DESIGN,
                     zoo="sequencer2d_s_horizontal"),
            Ablation("add", "add instead of concatenate", {"union": "add"}, _SEQ_DESIGN,
                     zoo="sequencer2d_s_add"),
            Ablation("without_fc", "without the fusion fc", {"with_fc": False}, _SEQ_DESIGN,
                     zoo="sequencer2d_s_without_fc"),
            Ablation("gru", "GRU cells", {"rnn_type": "gru"}, _SEQ_DESIGN,
                     zoo="gru_sequencer2d_s"),
            Ablation("rnn", "tanh RNN cells", {"rnn_type": "rnn"}, _SEQ_DESIGN,
                     zoo="rnn_sequencer2d_s"),
            Ablation("hidden_c2", "hidden D = C/2", _times("hidden_sizes", 2), _SEQ_DESIGN,
                     zoo="sequencer2d_s_h2x"),
            Ablation("hidden_c8", "hidden D = C/8", _times("hidden_sizes", 0.5),
                     _SEQ_DESIGN),
            Ablation("vsequencer", "VSequencer: 1-D BiLSTM, flat (isotropic)",
                     _vsequencer(False), _SEQ_2D, "lower", zoo="vsequencer_s"),
            Ablation("vsequencer_h", "VSequencer(H): 1-D BiLSTM, hierarchical",
                     _hidden_one_direction("flat"), _SEQ_2D, "lower", zoo="vsequencer_s_h"),
            Ablation("vsequencer_pe", "VSequencer(PE): 1-D BiLSTM + position embedding",
                     _vsequencer(True), _SEQ_2D, "lower", zoo="vsequencer_s_pe"),
        )),
    FamilyAblations(
        "vil", "ViL v1: scan directions alternate per block, causal conv1d, bilateral "
               "average pooling",
        "Vision-LSTM: the block design (scan directions, convolution) and the pooling",
        (
            Ablation("unidirectional", "every block scans from the top-left",
                     {"direction": "unidirectional"}, _VIL_ABL),
            Ablation("bidirectional", "both row orders in every block",
                     {"direction": "bidirectional"}, _VIL_ABL),
            Ablation("quad", "rows and columns, both ways, in every block",
                     {"direction": "quad"}, _VIL_ABL),
            Ablation("conv2d", "3x3 conv2d instead of causal conv1d (v2's)", {"conv": "2d"},
                     _VIL_V2),
            Ablation("pool_concat", "bilateral concat pooling (v2's)",
                     {"pooling": "bilateral_concat"}, _VIL_V2),
            Ablation("pool_avg", "average pooling", {"pooling": "avg"}, _VIL_ABL),
            Ablation("pool_middle_patch", "middle patch token", {"pooling": "middle_patch"},
                     _VIL_ABL),
            Ablation("pool_cls_middle", "class token in the middle",
                     {"pooling": "cls_middle"}, _VIL_ABL),
        )),
)}

CAPTIONS = {
    "ablations.png": "Each ablation's test top-1 minus its baseline's, in points (paired "
                     "bootstrap over test images and seeds; whiskers: its 95% interval, not "
                     "corrected for the many ablations, which the table's Holm p-values are); "
                     "colour: agreement with the paper",
}


def family_args(family: str, budget: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(zoo name, overrides, full arguments) of ``family``'s baseline at ``budget``."""
    from tokenmixers.compare import FAMILIES
    from tokenmixers.zoo import resolved_arguments

    name, over = FAMILIES[family].native[budget]
    return name, dict(over), resolved_arguments(name, over)


def change_of(ablation: Ablation, full: dict[str, Any]) -> dict[str, Any]:
    """The ablation's overrides for a baseline with arguments ``full``."""
    return ablation.change(full) if callable(ablation.change) else dict(ablation.change)


def variants(family: str, budget: str) -> list[dict[str, Any]]:
    """The baseline and every ablation of ``family`` as ``compare`` variants (an Entry's
    fields). At the paper budget an ablation with a zoo entry trains that entry."""
    from tokenmixers.compare import FAMILIES

    spec = ABLATIONS[family]
    name, over, full = family_args(family, budget)
    mixer = FAMILIES[family].mixer
    rows = [{"key": "baseline", "label": f"baseline: {spec.baseline}", "mixer": mixer,
             "model": name, "overrides": over}]
    for a in spec.ablations:
        if budget == "paper" and a.zoo is not None and not over:
            model, overrides = a.zoo, {}
        else:
            model, overrides = name, {**over, **change_of(a, full)}
        rows.append({"key": a.key, "label": a.label, "mixer": mixer, "model": model,
                     "overrides": overrides})
    return rows


def parse_families(text: str) -> list[str]:
    names = list(ABLATIONS) if text.strip() == "all" else split_list(text)
    for n in names:
        if n not in ABLATIONS:
            raise ValueError(f"--family {text}: {n!r} is not a family with ablations"
                             f"{did_you_mean(n, ABLATIONS)}; choose from "
                             f"{', '.join(ABLATIONS)} or all")
    if not names:
        raise ValueError(f"--family {text!r}: expected one or more of {', '.join(ABLATIONS)} "
                         "or all")
    return names


def _hits(recs: list[dict[str, Any]], size: int) -> list[list[int]]:
    return [[int(c) for c in eval_row(r, size)["correct"]] for r in recs]


def verdict(low: float, high: float) -> str:
    """Ours, from the difference's interval (ablation minus baseline, points)."""
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return "no difference shown"


def agreement(expect: str | None, ours: str) -> str:
    """Whether our verdict agrees with the paper's direction, at this scale."""
    if expect is None:
        return "–"
    if ours == "no difference shown":
        return "agree" if expect == "same" else "not shown at this scale"
    return "agree" if ours == expect else "disagree"


def _family_rows(family: str, recs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The table of one family from its runs' records (by variant key): the baseline, then
    each ablation against it, at the training size."""
    from tokenmixers.stats import holm, paired_bootstrap

    size = recs["baseline"][0]["train_size"]
    base_hits = _hits(recs["baseline"], size)
    spec = ABLATIONS[family]
    rows: list[dict[str, Any]] = [{
        "key": "baseline", "label": recs["baseline"][0]["label"],
        "params": recs["baseline"][0]["params"],
        "summary": summarize_or_none([top1_at(r, size) for r in recs["baseline"]]),
        "overrides": recs["baseline"][0]["overrides"], "model": recs["baseline"][0]["model"]}]
    tests = []
    for a in spec.ablations:
        test = paired_bootstrap(_hits(recs[a.key], size), base_hits)
        tests.append(test)
        rows.append({"key": a.key, "label": a.label, "params": recs[a.key][0]["params"],
                     "summary": summarize_or_none([top1_at(r, size) for r in recs[a.key]]),
                     "overrides": recs[a.key][0]["overrides"], "model": recs[a.key][0]["model"],
                     "paper": a.paper, "expect": a.expect, "diff": test.diff, "p": test.p})
    adjusted = holm([t.p for t in tests])
    m = len(tests)
    for row, test, p_holm in zip(rows[1:], tests, adjusted):
        row["low"], row["high"] = test.low, test.high
        row["p_holm"] = p_holm
        ours = verdict(test.low, test.high) if p_holm < 0.05 else "no difference shown"
        row["ours"] = ours
        row["agree"] = agreement(row["expect"], ours)
        row["tests"] = m
    return rows


def _plot(table: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, diffs, lows, highs, colours = [], [], [], [], []
    palette = {"agree": "tab:green", "disagree": "tab:red", "not shown at this scale":
               "tab:orange", "–": "tab:grey"}
    for family, rows in table.items():
        for r in rows[1:]:
            labels.append(f"{family}: {r['key']}")
            diffs.append(r["diff"])
            lows.append(r["diff"] - r["low"])
            highs.append(r["high"] - r["diff"])
            colours.append(palette[r["agree"]])
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(labels) + 1.4))
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, diffs, xerr=[lows, highs], color=colours, capsize=2, height=0.6)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel("top-1 minus baseline (points)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in palette.values()]
    ax.legend(handles, ["agrees with the paper", "disagrees", "paper's effect not shown",
                        "paper states no direction"], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out / "ablations.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def study_ablations(args: Any, out: Path, progress: Any = print) -> dict[str, Any]:
    from tokenmixers.compare import compare
    from tokenmixers.report import render_report

    t0 = time.perf_counter()
    families = parse_families(args.family)
    table: dict[str, list[dict[str, Any]]] = {}
    for family in families:
        cfg = compare_config(args, out / family, mixers=None, skeleton="native",
                             variants=tuple(variants(family, args.budget)))
        progress(f"== ablations of {family}: {len(cfg.variants)} models")
        compare(cfg, progress=progress)
        table[family] = _family_rows(family, records(cfg))
    _plot(table, out)
    (out / "ablations.json").write_text(json.dumps(
        {f: [{k: (v.__dict__ if k == "summary" and v else v) for k, v in r.items()}
             for r in rows] for f, rows in table.items()}, indent=1, default=str) + "\n")
    _report(table, out, args=args, wall=time.perf_counter() - t0, render=render_report)
    return {"out": out, "table": table}


def _change_text(row: dict[str, Any], base: dict[str, Any]) -> str:
    over = row["overrides"]
    if row["model"] != base["model"]:
        return row["model"]
    changed = {k: v for k, v in over.items() if base["overrides"].get(k) != v}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "–"


def _report(table: dict[str, list[dict[str, Any]]], out: Path, *, args: Any, wall: float,
            render: Any) -> None:
    blocks: list[tuple[Any, ...]] = [
        ("p", f"The papers' ablations on {args.data}, {args.budget} budget: each family's "
              "baseline and its ablations trained by tokenmixers compare with one recipe and "
              "one seed set (FAMILY/compare/report.md), each ablation compared with the "
              "baseline on the same test images."),
        ("h2", "Finding"), ("p", _finding(table)),
    ]
    for family, rows in table.items():
        spec = ABLATIONS[family]
        base = rows[0]
        header = ["variant", "change (overrides)", "paper", "ours", "agree?", "params",
                  "top-1", "vs baseline [95%]", "p (Holm)"]
        body = [["baseline", f"{base['model']} {base['overrides'] or ''}".strip(),
                 spec.baseline, "", "", f"{base['params'] / 1e6:.3f}M",
                 summary_text(base["summary"]), "", ""]]
        for r in rows[1:]:
            body.append([r["label"], _change_text(r, base),
                         r["paper"] + (f" (expects: {r['expect']})" if r["expect"] else ""),
                         r["ours"], r["agree"], f"{r['params'] / 1e6:.3f}M",
                         summary_text(r["summary"]),
                         f"{r['diff']:+.1f} [{r['low']:+.1f}, {r['high']:+.1f}]",
                         f"{r['p_holm']:.2g}"])
        blocks += [("h2", f"{family}: {spec.question}"), ("table", header, body, 5)]
    blocks += [
        ("img", "ablations.png"),
        ("h2", "Notes"),
        ("ul", [
            "top-1: test accuracy (%) at the training size, mean [95% t-interval] over seeds.",
            "vs baseline: the paired bootstrap of compare (test images and, independently, "
            "seeds resampled; 10,000 draws), ablation minus baseline in points; p: two-sided, "
            "Holm-corrected over the family's ablations. ours: lower / higher where p < 0.05 "
            "after Holm and the interval excludes 0.",
            "agree?: 'agree' where ours matches the paper's direction (for 'same': no "
            "difference shown); 'not shown at this scale' where the paper found a "
            "difference this budget does not show; '–' where the paper states no direction. "
            "An 'agree' with a paper that found no difference only means none was shown "
            "here, which wide intervals make weak evidence.",
            "A small budget (a few epochs on small data) ranks how fast each variant learns; "
            "the papers trained for hundreds of epochs on ImageNet. Agreement or not here is "
            "about this scale.",
            f"Wall time: {wall / 60:.1f} min (runs kept by --resume not included).",
        ]),
    ]
    render(blocks, out, title=f"The papers' ablations: {args.data}, {args.budget} budget",
           captions=CAPTIONS)


def _finding(table: dict[str, list[dict[str, Any]]]) -> str:
    rows = [r for rows in table.values() for r in rows[1:]]
    counted = [r for r in rows if r["agree"] != "–"]
    agree = sum(r["agree"] == "agree" for r in counted)
    shown = [f"{f}: {r['key']} {r['ours']} ({r['diff']:+.1f})" for f, rs in table.items()
             for r in rs[1:] if r["ours"] != "no difference shown"]
    return (f"Of {len(rows)} ablations, {len(shown)} differed from the baseline at this "
            f"budget ({'; '.join(shown) or 'none'}). The paper states a direction for "
            f"{len(counted)} of them, and ours agrees for {agree}. Differences not shown here "
            "may still exist: with few seeds and a small budget, the intervals are wide.")


def add_parser(studies: Any) -> None:
    p = studies.add_parser("ablations", help="the papers' ablations per family, with the "
                           "paper's finding next to ours")
    add_common_options(p, mixers=False)
    p.add_argument("--family", default="all",
                   help=f"comma-separated: {', '.join(ABLATIONS)}, or all (default)")
    p.add_argument("--out", default="", help="default: runs/study-ablations-DATA")
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    parse_families(args.family)  # a bad name fails before any training
    return run_study(args, f"runs/study-ablations-{args.data.split(':')[0]}",
                     lambda out: study_ablations(args, out))
