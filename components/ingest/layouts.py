"""Dataset layouts: list a root (local path or gs:// URI) and pair blurry/sharp files.

Pairing is always by relative path (never by listing order). Every file that belongs to a
layout's image folders becomes part of exactly one candidate: a pair, or a quarantined
candidate with its reason (missing partner, file named in a list that does not exist, bad list
line, duplicate pair id). Files outside a layout's image folders are not part of the data set
and are counted as "ignored" in the summary (e.g. GoPro's blur_gamma when blur is chosen).
A subset whose blurry images have no sharp images at all (REDS's test split: its ground truth
is not published) is unlabelled: it is skipped and reported with its file count, neither
paired nor quarantined.

Supported layouts (SPEC section 4; docs/data.md has the archives as they unpack, with sources):
  gopro     [GOPRO_Large/]{train,test}/<seq>/{blur|blur_gamma,sharp}/<frame>
  realblur  list files RealBlur_{J,R}_{train,test}_list.txt at the root, lines "<gt> <blur>"
            relative to the root
  hide      [HIDE_dataset/]{train, test/test-close-ups, test/test-long-shot}/<name> with GT/<name>
  reds      [..../]{train,val,test}_{blur|blur_jpeg,sharp}/<clip>/<frame>, paired by clip and
            frame number whatever the extensions (the JPEG track's .jpg with the sharp .png);
            subset val300 = frames 9, 19, ..., 99 of every val clip
  folder    [<subset>/]{blur|blurry|input}/<relpath> with [<subset>/]{sharp|gt|target}/<relpath>
"""
from __future__ import annotations

import posixpath
import re
from collections import Counter, defaultdict
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

LAYOUTS = ("gopro", "realblur", "hide", "reds", "folder")
DEFAULT_DOMAIN = {"gopro": "in", "realblur": "out", "hide": "out", "reds": "out", "folder": "in"}
DEFAULT_DATASET = {"gopro": "gopro", "realblur": None, "hide": "hide", "reds": "reds",
                   "folder": "folder"}
# The blurry images a layout offers, default first (the other layouts have one kind, "blur").
BLUR_KINDS = {"gopro": ("blur", "blur_gamma"), "reds": ("blur", "blur_jpeg")}
DEFAULT_BLUR_KIND = "blur"
# The subsets a layout knows (None: any name, the folder layout's own subset folders).
VAL300 = "val300"  # REDS: frames 9, 19, ..., 99 of every val clip (HINet's make_val_300)
SUBSETS = {"gopro": ("train", "test"), "realblur": ("train", "test"), "hide": ("train", "test"),
           "reds": ("train", "val", VAL300, "test"), "folder": None}
# RealBlur ships two versions of every scene under one root, each with its own list files.
REALBLUR_VARIANTS = ("J", "R")

# Quarantine reasons (stable strings: they appear in summaries and dashboards).
MISSING_PARTNER = "missing_partner"
MISSING_FILE = "missing_file"
BAD_LIST_LINE = "bad_list_line"
DUPLICATE_PAIR_ID = "duplicate_pair_id"
UNREADABLE = "unreadable"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
HIGH_BIT_DEPTH = "high_bit_depth"
UNCONVERTIBLE_MODE = "unconvertible_mode"
SIZE_MISMATCH = "size_mismatch"
TOO_SMALL = "too_small"
TOO_SMALL_FOR_TRAINING = "too_small_for_training"


class Candidate(NamedTuple):
    """One would-be example. `reason` is set when it is already known to be bad."""

    pair_id: str
    dataset: str
    domain: str
    subset: str
    blurry: Optional[str]  # URI
    sharp: Optional[str]  # URI
    size_bytes: int = 0
    reason: Optional[str] = None
    detail: str = ""
    unit: str = ""  # the ingest unit (source, span) it belongs to (beam_ingest.plan_ingest)


class Unlabelled(NamedTuple):
    """A subset that has blurry images and no sharp image at all: skipped, not quarantined."""

    subset: str
    files: int  # blurry files skipped
    detail: str


class Pairing(NamedTuple):
    candidates: List[Candidate]
    ignored: int  # files outside the chosen image folders or subsets
    unlabelled: List[Unlabelled]


class LayoutError(ValueError):
    """The root does not look like the requested layout (a user mistake, reported in one line)."""


FileList = Sequence[Tuple[str, int]]  # (path relative to root, size in bytes)
ReadText = Callable[[str], str]


def join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel


def check_options(layout: str, subsets: Optional[Sequence[str]] = None,
                  blur_kind: str = DEFAULT_BLUR_KIND, domain: Optional[str] = None,
                  variant: Optional[str] = None) -> None:
    """Raises LayoutError for an option the layout does not have (a typo must not fall back to
    a default or select nothing)."""
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    kinds = BLUR_KINDS.get(layout, (DEFAULT_BLUR_KIND,))
    if blur_kind not in kinds:
        raise LayoutError(
            f"{layout} blur kind must be one of {', '.join(kinds)}, got {blur_kind!r}"
            if len(kinds) > 1 else
            f"blur kind {blur_kind!r} does not apply to the {layout} layout (only "
            f"{' and '.join(sorted(BLUR_KINDS))} offer a choice)")
    if domain is not None and domain not in ("in", "out"):
        raise LayoutError(f"domain must be 'in' or 'out', got {domain!r}")
    if variant is not None and (layout != "realblur" or variant not in REALBLUR_VARIANTS):
        raise LayoutError(
            f"realblur variant must be one of {', '.join(REALBLUR_VARIANTS)}, got {variant!r}"
            if layout == "realblur" else f"variant applies to the realblur layout only, not {layout}")
    if subsets is None:
        return
    if isinstance(subsets, str) or not subsets or not all(isinstance(s, str) and s for s in subsets):
        raise LayoutError(f"subsets must be a non-empty list of subset names (or none at all "
                          f"for every subset), got {subsets!r}")
    known = SUBSETS[layout]
    unknown = [s for s in subsets if known is not None and s not in known]
    if unknown:
        raise LayoutError(f"unknown {layout} subset(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(known)}")
    if layout == "reds" and VAL300 in subsets and "val" in subsets:
        raise LayoutError("reds subsets val and val300 overlap (val300 is part of val); "
                          "choose one")


def _check_blur_kind(layout: str, root: str, blur_kind: str, seen: Dict[str, set],
                     subsets: Optional[set]) -> None:
    """A subset with sharp images and only the other kind of blurry images means the wrong
    blur kind was chosen: said in one line instead of quarantining every sharp image."""
    for subset, kinds in sorted(seen.items()):
        others = sorted(kinds - {blur_kind, "sharp"})
        if (subsets is None or subset in subsets) and blur_kind not in kinds and others:
            raise LayoutError(
                f"{layout} subset {subset} under {root} has no {blur_kind!r} blurry images but "
                f"has {', '.join(repr(k) for k in others)}: choose it with --blur-kind "
                f"(blur_kind in a config)")


def _pair_by_key(
    blur: Dict[Tuple, Tuple[str, int]],
    sharp: Dict[Tuple, Tuple[str, int]],
    make_id: Callable[[Tuple, str], Tuple[str, str]],
    root: str, dataset: str, domain: str,
) -> Tuple[List[Candidate], List[Unlabelled]]:
    """Pairs two {key: (relpath, size)} maps whose keys start with the subset.
    make_id(key, relpath of the blurry file, or of the sharp one without it) ->
    (subset, pair_id). Blurry files of a subset without any sharp file are unlabelled."""
    labelled = {k[0] for k in sharp}
    out, unlabelled = [], defaultdict(int)
    for key in sorted(set(blur) | set(sharp)):
        b, s = blur.get(key), sharp.get(key)
        if key[0] not in labelled:
            unlabelled[key[0]] += 1
            continue
        subset, pair_id = make_id(key, (b or s)[0])
        if b and s:
            out.append(Candidate(pair_id, dataset, domain, subset, join(root, b[0]),
                                 join(root, s[0]), b[1] + s[1]))
        elif b:
            out.append(Candidate(pair_id, dataset, domain, subset, join(root, b[0]), None, b[1],
                                 MISSING_PARTNER, f"no sharp partner for {b[0]}"))
        else:
            out.append(Candidate(pair_id, dataset, domain, subset, None, join(root, s[0]), s[1],
                                 MISSING_PARTNER, f"no blurry partner for {s[0]}"))
    return out, [Unlabelled(subset, n, "blurry images and no sharp image")
                 for subset, n in sorted(unlabelled.items())]


_GOPRO = re.compile(r"^(?:(?:.*/)?GOPRO_Large/)?(train|test)/([^/]+)/(blur|blur_gamma|sharp)/([^/]+)$")
# GOPRO_Large_all.zip: every sharp 240 fps frame, no blurry image (not a paired layout).
_GOPRO_ALL = re.compile(r"^(?:(?:.*/)?GOPRO_Large_all/)?(train|test)/([^/]+)/([^/]+\.png)$")


def pair_gopro(root, files, dataset, domain, blur_kind="blur", subsets=None, **_):
    blur, sharp, ignored, seen = {}, {}, 0, defaultdict(set)
    for rel, size in files:
        m = _GOPRO.match(rel)
        if not m:
            ignored += 1
            continue
        subset, seq, kind, name = m.groups()
        seen[subset].add(kind)
        if kind == "sharp":
            sharp[(subset, seq, name)] = (rel, size)
        elif kind == blur_kind:
            blur[(subset, seq, name)] = (rel, size)
        else:
            ignored += 1
    _check_blur_kind("gopro", root, blur_kind, seen, subsets)
    cands, unlabelled = _pair_by_key(blur, sharp, lambda k, _: (k[0], f"{dataset}/{k[0]}/{k[1]}/{k[2]}"),
                                     root, dataset, domain)
    return Pairing(cands, ignored, unlabelled)


_REALBLUR_LIST = re.compile(r"^RealBlur_([JR])_(train|test)_list\.txt$")


def pair_realblur(root, files, dataset, domain, read_text: ReadText = None, variant=None,
                  subsets=None, **_):
    sizes = dict(files)
    lists = [(rel, _REALBLUR_LIST.match(rel)) for rel, _ in files]
    lists = [(rel, m) for rel, m in lists if m]
    if not lists:
        raise LayoutError(f"no RealBlur_{{J,R}}_{{train,test}}_list.txt at the root of {root}")
    lists = [(rel, m) for rel, m in lists if variant is None or m.group(1) == variant]
    by_subset = defaultdict(list)
    for rel, m in lists:
        if subsets is None or m.group(2) in subsets:
            by_subset[m.group(2)].append(rel)
    mixed = sorted((subset, rels) for subset, rels in by_subset.items() if len(rels) > 1)
    if mixed:
        subset, rels = mixed[0]
        raise LayoutError(
            f"{root} holds RealBlur-J and RealBlur-R ({', '.join(sorted(rels))}): both would go "
            f"to split {subset}; choose one with --variant J or R (variant in a config), or "
            f"ingest the root twice, one variant each, with split_names")
    out, listed = [], set()
    for rel, m in sorted(lists):
        ds = dataset or f"realblur_{m.group(1).lower()}"
        subset = m.group(2)
        for lineno, line in enumerate(read_text(join(root, rel)).splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                out.append(Candidate(f"{ds}/{subset}/{rel}:{lineno}", ds, domain, subset, None,
                                     None, 0, BAD_LIST_LINE,
                                     f"{rel}:{lineno}: expected '<gt> <blur>', got {line!r}"))
                continue
            gt, bl = (posixpath.normpath(p) for p in parts)
            listed.update((gt, bl))
            pair_id = f"{ds}/{subset}/{bl}"
            missing = [p for p in (bl, gt) if p not in sizes]
            if missing:
                out.append(Candidate(pair_id, ds, domain, subset,
                                     join(root, bl) if bl in sizes else None,
                                     join(root, gt) if gt in sizes else None,
                                     sum(sizes.get(p, 0) for p in (bl, gt)), MISSING_FILE,
                                     f"{rel}:{lineno} names missing file(s): {', '.join(missing)}"))
                continue
            out.append(Candidate(pair_id, ds, domain, subset, join(root, bl), join(root, gt),
                                 sizes[bl] + sizes[gt]))
    # list files are the layout's own, not images: never counted as ignored
    ignored = sum(1 for rel, _ in files if rel not in listed and not _REALBLUR_LIST.match(rel))
    return Pairing(out, ignored, [])


_HIDE = re.compile(r"^(?:(?:.*/)?HIDE_dataset/)?(train|test/test-close-ups|test/test-long-shot|GT)/([^/]+)$")


def pair_hide(root, files, dataset, domain, **_):
    blur, gt, ignored = {}, {}, 0
    for rel, size in files:
        m = _HIDE.match(rel)
        if not m:
            ignored += 1
            continue
        folder, name = m.groups()
        if folder == "GT":
            gt[name] = (rel, size)
        else:
            blur[(folder, name)] = (rel, size)
    out = []
    for (folder, name), b in sorted(blur.items()):
        subset = folder.split("/")[0]
        pair_id = f"{dataset}/{folder}/{name}"
        s = gt.get(name)
        if s:
            out.append(Candidate(pair_id, dataset, domain, subset, join(root, b[0]),
                                 join(root, s[0]), b[1] + s[1]))
        else:
            out.append(Candidate(pair_id, dataset, domain, subset, join(root, b[0]), None, b[1],
                                 MISSING_PARTNER, f"no GT/{name} for {b[0]}"))
    # GT/ holds the ground truth of both HIDE subsets, so a GT image whose blurry partner is
    # not ingested is expected: it is ignored, not quarantined. A GT file with no blurry image
    # in either subset is still reported as ignored in the summary.
    used = {name for (_, name) in blur}
    ignored += sum(1 for name in gt if name not in used)
    return Pairing(out, ignored, [])


# REDS as its archives unpack: <split>/<split>_<kind>/<clip>/<frame>. Other kinds (blur_comp,
# the super-resolution track's *_bicubic/X4/...) are not matched and count as ignored.
_REDS = re.compile(r"^(?:.*/)?(train|val|test)_(blur|blur_jpeg|sharp)/([^/]+)/([^/]+)$")


def pair_reds(root, files, dataset, domain, blur_kind="blur", subsets=None, **_):
    """Pairs by clip and frame number (the file name without its extension), so the JPEG
    track's 00000000.jpg meets the sharp 00000000.png. The pair id keeps the blurry file's
    name: reds/<subset>/<clip>/00000000.jpg on the JPEG track, .png on the PNG track."""
    blur, sharp, ignored, seen, clashes = {}, {}, 0, defaultdict(set), []
    for rel, size in files:
        m = _REDS.match(rel)
        if not m:
            ignored += 1
            continue
        subset, kind, clip, name = m.groups()
        seen[subset].add(kind)
        if kind not in (blur_kind, "sharp"):
            ignored += 1
            continue
        side = sharp if kind == "sharp" else blur
        key = (subset, clip, posixpath.splitext(name)[0])
        if key in side:  # 00000000.png next to 00000000.jpg: the first (by name) is kept
            clashes.append(Candidate(
                f"{dataset}/{subset}/{clip}/{name}", dataset, domain, subset,
                join(root, rel) if side is blur else None, join(root, rel) if side is sharp else None,
                size, DUPLICATE_PAIR_ID,
                f"frame {clip}/{key[2]} has two {kind} files: {side[key][0]} is used, not {rel}"))
            continue
        side[key] = (rel, size)
    _check_blur_kind("reds", root, blur_kind, seen, subsets)
    cands, unlabelled = _pair_by_key(
        blur, sharp, lambda k, rel: (k[0], f"{dataset}/{k[0]}/{k[1]}/{posixpath.basename(rel)}"),
        root, dataset, domain)
    # a clash in an unlabelled subset is one more skipped blurry file, not a quarantine
    extra = Counter(c.subset for c in clashes)
    unlabelled = [u._replace(files=u.files + extra[u.subset]) for u in unlabelled]
    skipped = {u.subset for u in unlabelled}
    return Pairing(cands + [c for c in clashes if c.subset not in skipped], ignored, unlabelled)


def in_val300(c: Candidate) -> bool:
    """REDS val-300: frames whose number ends in 9 (9, 19, ..., 99) of every val clip, as
    HINet's make_val_300 selects them (scripts/data_preparation/reds.py, '*9.*')."""
    stem = posixpath.splitext(posixpath.basename(c.blurry or c.sharp or ""))[0]
    return c.subset == "val" and stem.isdigit() and int(stem) % 10 == 9


_FOLDER_BLUR = ("blur", "blurry", "input")
_FOLDER_SHARP = ("sharp", "gt", "target")
_FOLDER_SIDES = _FOLDER_BLUR + _FOLDER_SHARP


def pair_folder(root, files, dataset, domain, **_):
    blur, sharp, ignored = {}, {}, 0
    for rel, size in files:
        parts = rel.split("/")
        if len(parts) >= 2 and parts[0] in _FOLDER_SIDES:
            subset, side, relpath = "all", parts[0], "/".join(parts[1:])
        elif len(parts) >= 3 and parts[1] in _FOLDER_SIDES:
            subset, side, relpath = parts[0], parts[1], "/".join(parts[2:])
        else:
            ignored += 1
            continue
        (sharp if side in _FOLDER_SHARP else blur)[(subset, relpath)] = (rel, size)
    if not blur and not sharp:
        raise LayoutError(
            f"{root}: expected [<subset>/]blur/ and [<subset>/]sharp/ folders (aliases: "
            f"{', '.join(_FOLDER_BLUR)} / {', '.join(_FOLDER_SHARP)})"
        )
    cands, unlabelled = _pair_by_key(blur, sharp, lambda k, _: (k[0], f"{dataset}/{k[0]}/{k[1]}"),
                                     root, dataset, domain)
    return Pairing(cands, ignored, unlabelled)


_PAIRERS = {"gopro": pair_gopro, "realblur": pair_realblur, "hide": pair_hide,
            "reds": pair_reds, "folder": pair_folder}


def _n_files(c: Candidate) -> int:
    return (c.blurry is not None) + (c.sharp is not None)


def _hint(layout: str, files: FileList) -> str:
    if layout == "gopro" and any(_GOPRO_ALL.match(rel) for rel, _ in files):
        return ("; this looks like GOPRO_Large_all (every sharp frame, no blurry image): "
                "ingest GOPRO_Large, which holds the blur/blur_gamma/sharp pairs")
    return ""


def pair_files(
    layout: str, root: str, files: FileList, *, dataset: Optional[str] = None,
    domain: Optional[str] = None, subsets: Optional[Iterable[str]] = None,
    blur_kind: str = DEFAULT_BLUR_KIND, variant: Optional[str] = None,
    read_text: Optional[ReadText] = None,
) -> Pairing:
    """Candidates of one layout from its file list, the count of ignored files and the
    unlabelled (blurry-only) subsets that were skipped.

    subsets: keep only these subsets (train / test / val / val300 / <folder>...); None keeps
    every subset. A requested subset that holds no pair, or only blurry images, is an error.
    """
    subsets = None if subsets is None else list(subsets)
    check_options(layout, subsets, blur_kind, domain, variant)
    domain = domain or DEFAULT_DOMAIN[layout]
    root = root.rstrip("/")
    # REDS's val300 is read from val; it is the only subset made from another one
    val300 = layout == "reds" and subsets is not None and VAL300 in subsets
    wanted = None if subsets is None else set(subsets)
    source = None if wanted is None else {"val" if val300 and s == VAL300 else s for s in wanted}
    cands, ignored, unlabelled = _PAIRERS[layout](
        root, files, dataset or DEFAULT_DATASET[layout], domain, blur_kind=blur_kind,
        variant=variant, read_text=read_text, subsets=source)
    if val300:
        cands = [c._replace(subset=VAL300) if in_val300(c) else c for c in cands]
    found = sorted({c.subset for c in cands})
    if wanted is not None:
        ignored += sum(_n_files(c) for c in cands if c.subset not in wanted)
        ignored += sum(u.files for u in unlabelled if u.subset not in source)
        cands = [c for c in cands if c.subset in wanted]
        unlabelled = [u for u in unlabelled if u.subset in source]
        if unlabelled:
            u = unlabelled[0]
            raise LayoutError(
                f"{layout} subset {u.subset} under {root} is unlabelled ({u.files} {u.detail}); "
                f"it cannot be ingested as pairs: leave it out of the subsets")
        absent = sorted(wanted - {c.subset for c in cands})
        if absent and cands:
            raise LayoutError(f"no {layout} image pairs under {root} for subset(s) "
                              f"{', '.join(absent)} (found: {', '.join(found) or 'none'})")
    if not cands:
        skipped = "".join(f"; subset {u.subset} is unlabelled ({u.files} {u.detail})"
                          for u in unlabelled)
        raise LayoutError(
            f"no {layout} image pairs under {root}"
            + (f" for subset(s) {', '.join(sorted(wanted))} (found: {', '.join(found) or 'none'})"
               if wanted is not None else "") + skipped + _hint(layout, files))
    return Pairing(cands, ignored, unlabelled)


def mark_duplicates(cands: List[Candidate]) -> List[Candidate]:
    """The first candidate of each pair_id (ordered by its URIs) stays; later ones are
    quarantined as duplicates, naming the one that was kept."""
    by_id = defaultdict(list)
    for c in cands:
        by_id[c.pair_id].append(c)
    out = []
    for pid in sorted(by_id):
        group = sorted(by_id[pid], key=lambda c: (c.reason is not None, c.blurry or "", c.sharp or ""))
        out.append(group[0])
        for dup in group[1:]:
            if dup.reason is None:
                dup = dup._replace(reason=DUPLICATE_PAIR_ID,
                                   detail=f"pair id {pid} already taken by {group[0].blurry}")
            out.append(dup)
    return out
