"""Dataset layouts: list a root (local path or gs:// URI) and pair blurry/sharp files.

Pairing is always by relative path (never by listing order). Every file that belongs to a
layout's image folders becomes part of exactly one candidate: a pair, or a quarantined
candidate with its reason (missing partner, file named in a list that does not exist, bad list
line, duplicate pair id). Files outside a layout's image folders are not part of the data set
and are counted as "ignored" in the summary (e.g. GoPro's blur_gamma when blur is chosen).

Supported layouts (SPEC section 4):
  gopro     [GOPRO_Large/]{train,test}/<seq>/{blur|blur_gamma,sharp}/<frame>
  realblur  list files RealBlur_{J,R}_{train,test}_list.txt at the root, lines "<gt> <blur>"
            relative to the root
  hide      {train, test/test-close-ups, test/test-long-shot}/<name> with GT/<name>
  reds      [..../]{train,val}_{blur,sharp}/<clip>/<frame>
  folder    [<subset>/]{blur|blurry|input}/<relpath> with [<subset>/]{sharp|gt|target}/<relpath>
"""
from __future__ import annotations

import posixpath
import re
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

LAYOUTS = ("gopro", "realblur", "hide", "reds", "folder")
DEFAULT_DOMAIN = {"gopro": "in", "realblur": "out", "hide": "out", "reds": "out", "folder": "in"}
DEFAULT_DATASET = {"gopro": "gopro", "realblur": None, "hide": "hide", "reds": "reds",
                   "folder": "folder"}

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


class LayoutError(ValueError):
    """The root does not look like the requested layout (a user mistake, reported in one line)."""


FileList = Sequence[Tuple[str, int]]  # (path relative to root, size in bytes)
ReadText = Callable[[str], str]


def join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel


def _pair_by_key(
    blur: Dict[Tuple, Tuple[str, int]],
    sharp: Dict[Tuple, Tuple[str, int]],
    make_id: Callable[[Tuple], Tuple[str, str]],
    root: str, dataset: str, domain: str,
    sharp_may_be_unused: bool = False,
) -> List[Candidate]:
    """Pairs two {key: (relpath, size)} maps. make_id(key) -> (subset, pair_id)."""
    out = []
    for key in sorted(set(blur) | set(sharp)):
        subset, pair_id = make_id(key)
        b, s = blur.get(key), sharp.get(key)
        if b and s:
            out.append(Candidate(pair_id, dataset, domain, subset, join(root, b[0]),
                                 join(root, s[0]), b[1] + s[1]))
        elif b:
            out.append(Candidate(pair_id, dataset, domain, subset, join(root, b[0]), None, b[1],
                                 MISSING_PARTNER, f"no sharp partner for {b[0]}"))
        elif not sharp_may_be_unused:
            out.append(Candidate(pair_id, dataset, domain, subset, None, join(root, s[0]), s[1],
                                 MISSING_PARTNER, f"no blurry partner for {s[0]}"))
    return out


_GOPRO = re.compile(r"^(?:(?:.*/)?GOPRO_Large/)?(train|test)/([^/]+)/(blur|blur_gamma|sharp)/([^/]+)$")


def pair_gopro(root, files, dataset, domain, blur_kind="blur", **_):
    if blur_kind not in ("blur", "blur_gamma"):
        raise LayoutError(f"gopro blur kind must be blur or blur_gamma, got {blur_kind!r}")
    blur, sharp, ignored = {}, {}, 0
    for rel, size in files:
        m = _GOPRO.match(rel)
        if not m:
            ignored += 1
            continue
        subset, seq, kind, name = m.groups()
        if kind == "sharp":
            sharp[(subset, seq, name)] = (rel, size)
        elif kind == blur_kind:
            blur[(subset, seq, name)] = (rel, size)
        else:
            ignored += 1
    return _pair_by_key(blur, sharp, lambda k: (k[0], f"{dataset}/{k[0]}/{k[1]}/{k[2]}"),
                        root, dataset, domain), ignored


_REALBLUR_LIST = re.compile(r"^RealBlur_([JR])_(train|test)_list\.txt$")


def pair_realblur(root, files, dataset, domain, read_text: ReadText = None, **_):
    sizes = dict(files)
    lists = [(rel, _REALBLUR_LIST.match(rel)) for rel, _ in files]
    lists = [(rel, m) for rel, m in lists if m]
    if not lists:
        raise LayoutError(f"no RealBlur_{{J,R}}_{{train,test}}_list.txt at the root of {root}")
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
    ignored = sum(1 for rel, _ in files if rel not in listed and not _REALBLUR_LIST.match(rel))
    return out, ignored


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
    return out, ignored


_REDS = re.compile(r"^(?:.*/)?(train|val|test)_(blur|sharp)/([^/]+)/([^/]+)$")


def pair_reds(root, files, dataset, domain, **_):
    blur, sharp, ignored = {}, {}, 0
    for rel, size in files:
        m = _REDS.match(rel)
        if not m:
            ignored += 1
            continue
        subset, kind, clip, name = m.groups()
        (sharp if kind == "sharp" else blur)[(subset, clip, name)] = (rel, size)
    return _pair_by_key(blur, sharp, lambda k: (k[0], f"{dataset}/{k[0]}/{k[1]}/{k[2]}"),
                        root, dataset, domain), ignored


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
    return _pair_by_key(blur, sharp, lambda k: (k[0], f"{dataset}/{k[0]}/{k[1]}"),
                        root, dataset, domain), ignored


_PAIRERS = {"gopro": pair_gopro, "realblur": pair_realblur, "hide": pair_hide,
            "reds": pair_reds, "folder": pair_folder}


def pair_files(
    layout: str, root: str, files: FileList, *, dataset: Optional[str] = None,
    domain: Optional[str] = None, subsets: Optional[Iterable[str]] = None,
    blur_kind: str = "blur", read_text: Optional[ReadText] = None,
) -> Tuple[List[Candidate], int]:
    """Candidates of one layout from its file list; returns (candidates, ignored_file_count).

    subsets: keep only these subsets (train / test / val / all...); None keeps every subset.
    """
    if layout not in _PAIRERS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    domain = domain or DEFAULT_DOMAIN[layout]
    if domain not in ("in", "out"):
        raise LayoutError(f"domain must be 'in' or 'out', got {domain!r}")
    cands, ignored = _PAIRERS[layout](
        root.rstrip("/"), files, dataset or DEFAULT_DATASET[layout], domain,
        blur_kind=blur_kind, read_text=read_text,
    )
    if subsets is not None:
        keep = set(subsets)
        dropped = [c for c in cands if c.subset not in keep]
        cands = [c for c in cands if c.subset in keep]
        ignored += sum((c.blurry is not None) + (c.sharp is not None) for c in dropped)
    if not cands:
        found = sorted({c.subset for c in _PAIRERS[layout](root.rstrip("/"), files,
                        dataset or DEFAULT_DATASET[layout], domain, blur_kind=blur_kind,
                        read_text=read_text)[0]})
        raise LayoutError(
            f"no {layout} image pairs under {root}"
            + (f" for subset(s) {', '.join(sorted(subsets))} (found: {', '.join(found) or 'none'})"
               if subsets is not None else "")
        )
    return cands, ignored


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
